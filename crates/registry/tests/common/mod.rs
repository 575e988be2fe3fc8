//! Test helpers: a tiny GGUF writer, deterministic bytes and an in-process
//! Hugging Face-style hub that supports Range and can drop connections.
#![allow(dead_code)]

pub mod hub;

use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// A GGUF v3 file with F32 tensors `(name, rows, cols, data seed)`.
pub fn gguf_bytes(tensors: &[(&str, usize, usize, u64)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    put_str(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    put_str(&mut b, "test");
    let mut offset = 0u64;
    let mut datas = Vec::new();
    for (name, rows, cols, seed) in tensors {
        put_str(&mut b, name);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&(*cols as u64).to_le_bytes());
        b.extend_from_slice(&(*rows as u64).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&offset.to_le_bytes());
        let size = rows * cols * 4;
        datas.push((offset, noise(*seed, size)));
        offset += (size as u64).div_ceil(32) * 32;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    let start = b.len();
    for (off, d) in datas {
        b.resize(start + off as usize, 0);
        b.extend_from_slice(&d);
    }
    b
}

/// Writes a GGUF of `n` tensors of `rows x cols` F32, seeds `seed0..`.
pub fn write_gguf(path: &Path, n: usize, rows: usize, cols: usize, seed0: u64) -> PathBuf {
    let names: Vec<String> = (0..n).map(|i| format!("blk.{i}.weight")).collect();
    let spec: Vec<(&str, usize, usize, u64)> = names
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), rows, cols, seed0 + i as u64))
        .collect();
    std::fs::write(path, gguf_bytes(&spec)).unwrap();
    path.to_path_buf()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
