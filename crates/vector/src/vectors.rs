//! Dense vector storage of a collection: f32 rows (normalised for cosine) and, when
//! asked, int8 scalar-quantised twins used for the graph search before f32 re-scoring.
//! Owns the distance arithmetic (through the kernels crate's SIMD); knows nothing of
//! ids, payloads or the graph.

use crate::point::Distance;
use hangar_kernels::ops::{dot_f32, dot_i8, l2_sq_f32};

/// Vector quantisation of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Quantization {
    /// f32 only.
    #[default]
    None,
    /// int8 codes (one scale per vector) searched first, the best re-scored in f32.
    Int8,
}

#[derive(Default)]
struct Int8Rows {
    codes: Vec<i8>,
    scales: Vec<f32>,
    norms_sq: Vec<f32>,
}

/// A query prepared for one collection: normalised (cosine) and quantised (int8).
pub struct PreparedQuery {
    pub f32: Vec<f32>,
    codes: Vec<i8>,
    scale: f32,
    norm_sq: f32,
}

pub struct VectorRows {
    dim: usize,
    distance: Distance,
    data: Vec<f32>,
    int8: Option<Int8Rows>,
}

fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    out.extend(
        v.iter()
            .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8),
    );
    scale
}

fn normalize(v: &mut [f32]) {
    let n = dot_f32(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl VectorRows {
    pub fn new(dim: usize, distance: Distance, q: Quantization) -> VectorRows {
        VectorRows {
            dim,
            distance,
            data: Vec::new(),
            int8: (q == Quantization::Int8).then(Int8Rows::default),
        }
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    pub fn quantized(&self) -> bool {
        self.int8.is_some()
    }

    /// Bytes held by the vectors (f32 and codes).
    pub fn memory_bytes(&self) -> usize {
        self.data.capacity() * 4
            + self
                .int8
                .as_ref()
                .map_or(0, |q| q.codes.capacity() + q.scales.capacity() * 8)
    }

    /// Appends a vector (its length already checked); returns its row.
    pub fn push(&mut self, v: &[f32]) -> u32 {
        let row = self.len() as u32;
        let start = self.data.len();
        self.data.extend_from_slice(v);
        if self.distance == Distance::Cosine {
            normalize(&mut self.data[start..]);
        }
        if let Some(q) = &mut self.int8 {
            let stored = &self.data[start..];
            q.scales.push(quantize(stored, &mut q.codes));
            q.norms_sq.push(dot_f32(stored, stored));
        }
        row
    }

    /// Hints the CPU to load a row's vector (and int8 codes) into cache.
    #[inline]
    pub fn prefetch(&self, row: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let r = row as usize;
            if let Some(v) = self.data.get(r * self.dim..(r + 1) * self.dim) {
                // SAFETY: prefetching never faults; the pointers are in bounds anyway.
                unsafe {
                    for off in (0..v.len()).step_by(16) {
                        _mm_prefetch(v.as_ptr().add(off) as *const i8, _MM_HINT_T0);
                    }
                }
            }
            if let Some(q) = &self.int8 {
                if let Some(c) = q.codes.get(r * self.dim..(r + 1) * self.dim) {
                    // SAFETY: as above.
                    unsafe { _mm_prefetch(c.as_ptr(), _MM_HINT_T0) };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = row;
    }

    /// The stored vector of a row (normalised for cosine).
    #[inline]
    pub fn get(&self, row: u32) -> &[f32] {
        let s = row as usize * self.dim;
        &self.data[s..s + self.dim]
    }

    pub fn prepare(&self, q: &[f32]) -> PreparedQuery {
        let mut f = q.to_vec();
        if self.distance == Distance::Cosine {
            normalize(&mut f);
        }
        let mut codes = Vec::new();
        let scale = if self.int8.is_some() {
            quantize(&f, &mut codes)
        } else {
            1.0
        };
        let norm_sq = dot_f32(&f, &f);
        PreparedQuery {
            f32: f,
            codes,
            scale,
            norm_sq,
        }
    }

    /// f32 distance of two stored vectors (smaller is closer).
    #[inline]
    pub fn pair(&self, a: u32, b: u32) -> f32 {
        self.raw(self.get(a), self.get(b))
    }

    #[inline]
    fn raw(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.distance {
            Distance::Euclid => l2_sq_f32(a, b),
            Distance::Cosine | Distance::Dot => -dot_f32(a, b),
        }
    }

    /// Exact f32 distance of a query to a row (smaller is closer).
    #[inline]
    pub fn dist(&self, q: &PreparedQuery, row: u32) -> f32 {
        self.raw(&q.f32, self.get(row))
    }

    /// int8 distance when the collection is quantised, else the exact one.
    #[inline]
    pub fn dist_fast(&self, q: &PreparedQuery, row: u32) -> f32 {
        let Some(i8s) = &self.int8 else {
            return self.dist(q, row);
        };
        let r = row as usize;
        let codes = &i8s.codes[r * self.dim..(r + 1) * self.dim];
        let dot = dot_i8(&q.codes, codes) as f32 * q.scale * i8s.scales[r];
        match self.distance {
            Distance::Euclid => q.norm_sq + i8s.norms_sq[r] - 2.0 * dot,
            Distance::Cosine | Distance::Dot => -dot,
        }
    }

    /// The client-facing score of an internal distance.
    pub fn score(&self, d: f32) -> f32 {
        match self.distance {
            Distance::Euclid => d.max(0.0).sqrt(),
            Distance::Cosine | Distance::Dot => -d,
        }
    }
}
