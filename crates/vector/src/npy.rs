//! Reading NumPy `.npy` matrices (little-endian f4 / i4 / i8, C order, 2-D) for
//! loading vectors and benchmark ground truth. Treats the file as hostile: header and
//! sizes are checked, never trusted.

use crate::error::{Result, VectorError};
use std::path::Path;

/// A row-major matrix read from a `.npy` file.
pub struct NpyMatrix<T> {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<T>,
}

impl<T> NpyMatrix<T> {
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

fn header(path: &Path, bytes: &[u8]) -> Result<(String, usize, usize, usize)> {
    let bad = |why: &str| VectorError::corrupt(path, format!("not a 2-D .npy matrix: {why}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown version")),
    };
    let h = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if h.contains("'fortran_order': True") {
        return Err(bad("Fortran order; save with np.ascontiguousarray"));
    }
    let descr = h
        .split("'descr':")
        .nth(1)
        .and_then(|r| r.split('\'').nth(1))
        .ok_or_else(|| bad("no descr"))?
        .to_string();
    let shape = h
        .split("'shape':")
        .nth(1)
        .and_then(|r| r.split('(').nth(1))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let (rows, cols) = match dims.as_slice() {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        _ => return Err(bad("shape is not 2-D")),
    };
    Ok((descr, rows, cols, start + hlen))
}

fn read<T>(
    path: &Path,
    want: &[&str],
    size: usize,
    conv: impl Fn(&[u8]) -> T,
) -> Result<NpyMatrix<T>> {
    let bytes = std::fs::read(path).map_err(|e| VectorError::io(path, e))?;
    let (descr, rows, cols, off) = header(path, &bytes)?;
    if !want.contains(&descr.as_str()) {
        return Err(VectorError::corrupt(
            path,
            format!("dtype {descr} is not one of {want:?}"),
        ));
    }
    let n = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(|| VectorError::corrupt(path, "shape overflows"))?;
    let body = bytes
        .get(off..off + n)
        .ok_or_else(|| VectorError::corrupt(path, "shorter than its shape"))?;
    Ok(NpyMatrix {
        rows,
        cols,
        data: body.chunks_exact(size).map(conv).collect(),
    })
}

/// A float32 matrix.
pub fn read_f32(path: &Path) -> Result<NpyMatrix<f32>> {
    read(path, &["<f4"], 4, |c| {
        f32::from_le_bytes([c[0], c[1], c[2], c[3]])
    })
}

/// An integer matrix (int32 or int64), as i64.
pub fn read_i64(path: &Path) -> Result<NpyMatrix<i64>> {
    let bytes = std::fs::read(path).map_err(|e| VectorError::io(path, e))?;
    let (descr, ..) = header(path, &bytes)?;
    if descr == "<i4" {
        read(path, &["<i4"], 4, |c| {
            i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64
        })
    } else {
        read(path, &["<i8"], 8, |c| {
            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
        })
    }
}
