//! The write-ahead log of one collection: every change is appended (length, CRC-32,
//! JSON body) and, when the caller waits, fsynced before it is applied or acknowledged.
//! On open the log is replayed up to the first torn or corrupt record, which is cut
//! off. Knows operations as data; applying them is the collection's job.

use crate::error::{Result, VectorError};
use crate::index::IndexKind;
use crate::point::{Point, PointId};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One logged change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WalOp {
    Upsert(Vec<Point>),
    Delete(Vec<PointId>),
    CreateIndex { key: String, kind: IndexKind },
    DeleteIndex { key: String },
}

/// CRC-32 (IEEE), bytewise with a table built once.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = t[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

pub struct Wal {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Wal {
    /// Opens (creating) the log and returns it with the operations it holds.
    pub fn open(path: &Path) -> Result<(Wal, Vec<WalOp>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| VectorError::io(path, e))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .map_err(|e| VectorError::io(path, e))?;
        let mut ops = Vec::new();
        let mut pos = 0usize;
        while pos + 8 <= buf.len() {
            let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap_or([0; 4])) as usize;
            let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap_or([0; 4]));
            let Some(body) = buf.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if crc32(body) != crc {
                break;
            }
            match serde_json::from_slice::<WalOp>(body) {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
            pos += 8 + len;
        }
        if pos < buf.len() {
            // A torn tail from a crash mid-append: never acknowledged, so drop it.
            file.set_len(pos as u64)
                .and_then(|_| file.sync_all())
                .map_err(|e| VectorError::io(path, e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| VectorError::io(path, e))?;
        Ok((
            Wal {
                path: path.to_path_buf(),
                file,
                len: pos as u64,
            },
            ops,
        ))
    }

    /// Appends one operation; with `sync` it is on disk when this returns.
    pub fn append(&mut self, op: &WalOp, sync: bool) -> Result<()> {
        let body = serde_json::to_vec(op)
            .map_err(|e| VectorError::Invalid(format!("cannot encode operation: {e}")))?;
        let mut rec = Vec::with_capacity(body.len() + 8);
        rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32(&body).to_le_bytes());
        rec.extend_from_slice(&body);
        self.file
            .write_all(&rec)
            .map_err(|e| VectorError::io(&self.path, e))?;
        self.len += rec.len() as u64;
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| VectorError::io(&self.path, e))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Empties the log once a checkpoint holds everything in it.
    pub fn truncate(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| VectorError::io(&self.path, e))?;
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        {
            let (mut w, ops) = Wal::open(&p).unwrap();
            assert!(ops.is_empty());
            w.append(&WalOp::Delete(vec![PointId::Num(1)]), true)
                .unwrap();
            w.append(&WalOp::Delete(vec![PointId::Num(2)]), true)
                .unwrap();
        }
        let full = std::fs::metadata(&p).unwrap().len();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(full - 3).unwrap();
        let (w, ops) = Wal::open(&p).unwrap();
        assert_eq!(ops.len(), 1);
        assert!(w.len() < full - 3);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), w.len());
    }
}
