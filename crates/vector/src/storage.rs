//! The collection data file (a checkpoint, and the snapshot format): config and every
//! live point in one file, written to a temporary name, fsynced and renamed, with a
//! CRC-32 over the whole. Reading checks every length. Knows no graph: the HNSW graph
//! is saved beside it by `graph_file.rs`, tied to this file by its CRC.

use crate::collection::CollectionConfig;
use crate::error::{Result, VectorError};
use crate::point::{Payload, Point, PointId};
use crate::wal::crc32;
use std::fs::File;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"HVEC0001";

/// Writes `path` atomically: after a crash it is the old file or the new one.
/// Returns the file's CRC-32 (what a saved graph refers to).
pub fn write_data<'a>(
    path: &Path,
    config: &CollectionConfig,
    count: usize,
    points: impl Iterator<Item = (PointId, &'a Payload, &'a [f32])>,
) -> Result<u32> {
    let mut buf: Vec<u8> = Vec::new();
    buf.extend_from_slice(MAGIC);
    let cfg = serde_json::to_vec(config)
        .map_err(|e| VectorError::Invalid(format!("cannot encode config: {e}")))?;
    buf.extend_from_slice(&(cfg.len() as u32).to_le_bytes());
    buf.extend_from_slice(&cfg);
    buf.extend_from_slice(&(count as u64).to_le_bytes());
    let mut written = 0usize;
    for (id, payload, v) in points {
        match id {
            PointId::Num(n) => {
                buf.push(0);
                buf.extend_from_slice(&n.to_le_bytes());
            }
            PointId::Uuid(u) => {
                buf.push(1);
                buf.extend_from_slice(&u.to_le_bytes());
            }
        }
        let p = serde_json::to_vec(payload)
            .map_err(|e| VectorError::Invalid(format!("cannot encode payload: {e}")))?;
        buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
        buf.extend_from_slice(&p);
        for x in v {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        written += 1;
    }
    if written != count {
        return Err(VectorError::Invalid(format!(
            "internal: {written} points written, {count} announced"
        )));
    }
    let crc = crc32(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    write_atomic(path, &buf)?;
    Ok(crc)
}

/// Temp file + fsync + rename + fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| VectorError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| VectorError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| VectorError::io(path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| VectorError::corrupt(self.path, "truncated data file"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
}

/// Reads a data file (or snapshot) written by [`write_data`], with its CRC-32.
pub fn read_data(path: &Path) -> Result<(CollectionConfig, Vec<Point>, u32)> {
    let all = std::fs::read(path).map_err(|e| VectorError::io(path, e))?;
    if all.len() < MAGIC.len() + 4 || &all[..8] != MAGIC {
        return Err(VectorError::corrupt(path, "not a Hangar vector data file"));
    }
    let (body, tail) = all.split_at(all.len() - 4);
    let crc = crc32(body);
    if crc != u32::from_le_bytes(tail.try_into().unwrap_or([0; 4])) {
        return Err(VectorError::corrupt(path, "checksum mismatch"));
    }
    let mut r = Reader {
        buf: body,
        pos: 8,
        path,
    };
    let cfg_len = r.u32()? as usize;
    let config: CollectionConfig = serde_json::from_slice(r.take(cfg_len)?)
        .map_err(|e| VectorError::corrupt(path, format!("config: {e}")))?;
    let count = r.u64()? as usize;
    let dim = config.dim;
    let per_point_min = 1 + 8 + 4 + dim * 4;
    if count.saturating_mul(per_point_min) > body.len() {
        return Err(VectorError::corrupt(
            path,
            "point count larger than the file",
        ));
    }
    let mut points = Vec::with_capacity(count);
    for _ in 0..count {
        let tag = r.take(1)?[0];
        let id = match tag {
            0 => PointId::Num(r.u64()?),
            1 => PointId::Uuid(u128::from_le_bytes(
                r.take(16)?.try_into().unwrap_or([0; 16]),
            )),
            _ => return Err(VectorError::corrupt(path, "bad id tag")),
        };
        let plen = r.u32()? as usize;
        let payload: Payload = serde_json::from_slice(r.take(plen)?)
            .map_err(|e| VectorError::corrupt(path, format!("payload: {e}")))?;
        let raw = r.take(dim * 4)?;
        let vector = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        points.push(Point {
            id,
            vector,
            payload,
        });
    }
    if r.pos != body.len() {
        return Err(VectorError::corrupt(path, "trailing bytes"));
    }
    Ok((config, points, crc))
}
