//! The HNSW graph saved beside a checkpoint (`graph.bin`), so that opening a
//! collection reads its graph instead of re-inserting every point (about a minute at
//! 400 000 points). A graph file is tied to the data file written at the same
//! checkpoint by that file's CRC-32, and carries its own: a graph that does not match,
//! or fails any check, is ignored and the graph rebuilt, never trusted.
//!
//! Layout: magic, data-file CRC, row count, then per graph row either the index of a
//! live point in the data file's order or a deleted row's vector (deleted rows stay in
//! the graph until a rebuild, and a traversal still walks through them), then the
//! graph (`Hnsw::encode`), then a CRC-32 of everything before it.

use crate::hnsw::{Hnsw, HnswParams};
use crate::storage::write_atomic;
use crate::wal::crc32;
use std::path::Path;

pub(crate) const GRAPH_FILE: &str = "graph.bin";
const MAGIC: &[u8; 8] = b"HGRF0001";

/// Where a graph row's vector comes from when the graph is loaded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RowSource {
    /// The n-th point of the data file.
    Live(u32),
    /// A deleted row: its vector is kept in the graph file.
    Deleted(Vec<f32>),
}

/// Writes the graph file for a checkpoint whose data file has CRC `data_crc`.
pub(crate) fn write(
    path: &Path,
    data_crc: u32,
    rows: &[RowSource],
    graph: &Hnsw,
) -> crate::Result<()> {
    let mut buf = Vec::with_capacity(64 + rows.len() * 5 + graph.memory_bytes());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&data_crc.to_le_bytes());
    buf.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for r in rows {
        match r {
            RowSource::Live(i) => {
                buf.push(0);
                buf.extend_from_slice(&i.to_le_bytes());
            }
            RowSource::Deleted(v) => {
                buf.push(1);
                for x in v {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    graph.encode(&mut buf);
    let crc = crc32(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    write_atomic(path, &buf)
}

/// Reads the graph file if it belongs to the data file with `data_crc` holding
/// `live_points` points of dimension `dim`, and every check passes; `None` otherwise
/// (missing, stale, corrupt), and the caller rebuilds.
pub(crate) fn read(
    path: &Path,
    data_crc: u32,
    live_points: usize,
    dim: usize,
    params: HnswParams,
) -> Option<(Vec<RowSource>, Hnsw)> {
    let all = std::fs::read(path).ok()?;
    if all.len() < MAGIC.len() + 16 || &all[..8] != MAGIC {
        return None;
    }
    let (body, tail) = all.split_at(all.len() - 4);
    if crc32(body) != u32::from_le_bytes(tail.try_into().ok()?) {
        return None;
    }
    if u32::from_le_bytes(body[8..12].try_into().ok()?) != data_crc {
        return None;
    }
    let n = usize::try_from(u64::from_le_bytes(body[12..20].try_into().ok()?)).ok()?;
    if n < live_points || n > body.len() {
        return None;
    }
    let mut pos = 20usize;
    let mut seen = vec![false; live_points];
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        let tag = *body.get(pos)?;
        pos += 1;
        match tag {
            0 => {
                let i = u32::from_le_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
                pos += 4;
                let slot = seen.get_mut(i as usize)?;
                if *slot {
                    return None; // one point in two rows
                }
                *slot = true;
                rows.push(RowSource::Live(i));
            }
            1 => {
                let raw = body.get(pos..pos.checked_add(dim * 4)?)?;
                pos += dim * 4;
                let v = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                rows.push(RowSource::Deleted(v));
            }
            _ => return None,
        }
    }
    if seen.iter().any(|s| !s) {
        return None; // a live point the graph does not hold
    }
    let (graph, used) = Hnsw::decode(params, n, &body[pos..])?;
    if pos + used != body.len() {
        return None;
    }
    Some((rows, graph))
}
