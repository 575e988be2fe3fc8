//! Shared reader for llama.cpp tensor dumps (diagnostics for `hangar_kernels::ggml`).
//! A dump directory holds `index.txt` (one line per tensor:
//! `NNN_name ne0 ne1 ne2 ne3 OP src0=NAME:type src1=NAME:type ...`) and `NNN_name.bin`
//! (raw little-endian f32, ne0 fastest). `src` names that are dumped files appear as
//! `NNN_name`; model weights appear by GGUF tensor name.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

pub struct Entry {
    pub file: String,
    pub ne: [usize; 4],
    pub op: String,
    /// (name, type) of each source.
    pub srcs: Vec<(String, String)>,
}

pub struct Dump {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
}

impl Dump {
    pub fn open(dir: impl AsRef<Path>) -> Dump {
        let dir = dir.as_ref().to_path_buf();
        let text = std::fs::read_to_string(dir.join("index.txt")).expect("index.txt");
        let entries = text
            .lines()
            .map(|l| {
                let p: Vec<&str> = l.split(' ').collect();
                let ne = [1, 2, 3, 4].map(|i| p[i].parse().expect("ne"));
                let srcs = p[6..]
                    .iter()
                    .filter_map(|s| {
                        let (_, v) = s.split_once('=')?;
                        let (n, t) = v.rsplit_once(':')?;
                        Some((n.to_string(), t.to_string()))
                    })
                    .collect();
                Entry {
                    file: p[0].to_string(),
                    ne,
                    op: p[5].to_string(),
                    srcs,
                }
            })
            .collect();
        Dump { dir, entries }
    }
    pub fn read(&self, file: &str) -> Vec<f32> {
        let b = std::fs::read(self.dir.join(format!("{file}.bin"))).expect("bin");
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    pub fn by_op<'a>(&'a self, op: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.op == op)
    }
}

/// Count of elements that differ bitwise, and the largest relative difference.
pub fn compare(got: &[f32], want: &[f32]) -> (usize, f32) {
    assert_eq!(got.len(), want.len());
    let mut diff = 0;
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(want) {
        if g.to_bits() != w.to_bits() {
            diff += 1;
            worst = worst.max((g - w).abs() / w.abs().max(1e-30));
        }
    }
    (diff, worst)
}

#[allow(dead_code)]
fn main() {
    for d in std::env::args().skip(1) {
        let dump = Dump::open(&d);
        println!("{d}: {} tensors", dump.entries.len());
    }
}
