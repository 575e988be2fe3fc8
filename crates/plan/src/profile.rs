//! Measuring this host: memory bandwidth (multi-threaded stream copy and read),
//! dot-product throughput of a kernel handed in by the caller, core count, CPU name.
//! Owns the timing harness only; which kernels to time is the caller's choice, so
//! this crate does not depend on `hangar-kernels`.

use crate::hardware::{host_memory, HostMemory};
use serde::Serialize;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Measured memory bandwidth.
#[derive(Debug, Clone, Serialize)]
pub struct Bandwidth {
    /// Stream copy, counting bytes read plus bytes written (the STREAM convention).
    pub copy_bytes_per_s: f64,
    /// Read-only sweep (a sum), which is what decoding does to weights.
    pub read_bytes_per_s: f64,
    pub threads: usize,
    /// Bytes of each buffer swept.
    pub buffer_bytes: usize,
}

impl Bandwidth {
    /// The roof for decode: the better of the two sweeps.
    pub fn best(&self) -> f64 {
        self.copy_bytes_per_s.max(self.read_bytes_per_s)
    }
}

/// Measured throughput of one dot-product kernel.
#[derive(Debug, Clone, Serialize)]
pub struct DotThroughput {
    /// `int8` or `f32`.
    pub kind: String,
    /// Which code ran (`hangar-kernels Q8_0 vec_dot`, `plain Rust`).
    pub kernel: String,
    /// Multiply-adds count as 2 operations.
    pub ops_per_s: f64,
    pub threads: usize,
}

/// Everything `hangar profile` measures.
#[derive(Debug, Clone, Serialize)]
pub struct HostProfile {
    pub cpu: String,
    pub cores: usize,
    pub memory: HostMemory,
    pub bandwidth: Bandwidth,
    pub dots: Vec<DotThroughput>,
}

impl HostProfile {
    /// Best measured ops/s of a kind (`int8`, `f32`).
    pub fn dot_rate(&self, kind: &str) -> Option<f64> {
        self.dots
            .iter()
            .filter(|d| d.kind == kind)
            .map(|d| d.ops_per_s)
            .reduce(f64::max)
    }
}

/// Logical cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The CPU's model name from /proc/cpuinfo, or `unknown`.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Measures bandwidth with `threads` threads over two buffers of `buffer_bytes`
/// (choose several times the last-level cache), best of `reps` sweeps.
pub fn measure_bandwidth(threads: usize, buffer_bytes: usize, reps: usize) -> Bandwidth {
    let threads = threads.max(1);
    let words = (buffer_bytes / 8).max(threads * 1024);
    let chunk = words.div_ceil(threads);
    // Fill both buffers so every page is mapped before timing.
    let src: Vec<u64> = (0..words as u64).collect();
    let mut dst: Vec<u64> = vec![1; words];
    let mut best_copy = f64::MAX;
    let mut best_read = f64::MAX;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (d, sr) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(sr));
            }
        });
        best_copy = best_copy.min(t.elapsed().as_secs_f64());
        black_box(&mut dst);
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = src
                .chunks(chunk)
                .map(|c| s.spawn(move || sum_words(c)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        black_box(total);
        best_read = best_read.min(t.elapsed().as_secs_f64());
    }
    let bytes = (words * 8) as f64;
    Bandwidth {
        copy_bytes_per_s: 2.0 * bytes / best_copy.max(1e-9),
        read_bytes_per_s: bytes / best_read.max(1e-9),
        threads,
        buffer_bytes: words * 8,
    }
}

fn sum_words(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = c.chunks_exact(8);
    for b in &mut it {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(b[i]);
        }
    }
    let rest: u64 = it.remainder().iter().fold(0, |a, &x| a.wrapping_add(x));
    acc.iter().fold(rest, |a, &x| a.wrapping_add(x))
}

/// Times a dot-product kernel on `threads` threads for about `duration`.
///
/// `make(thread)` builds one thread's kernel: a closure that does one call of
/// `ops_per_call` operations (2 per multiply-add) on data it owns and returns a
/// value to keep the work from being optimized away.
pub fn measure_dot<F, K>(
    kind: &str,
    kernel: &str,
    threads: usize,
    ops_per_call: f64,
    duration: Duration,
    make: F,
) -> DotThroughput
where
    F: Fn(usize) -> K + Sync,
    K: FnMut() -> f32,
{
    let threads = threads.max(1);
    let start = Instant::now();
    let calls: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let make = &make;
                s.spawn(move || {
                    let mut k = make(i);
                    let mut n = 0u64;
                    let t = Instant::now();
                    while t.elapsed() < duration {
                        for _ in 0..64 {
                            black_box(k());
                        }
                        n += 64;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    DotThroughput {
        kind: kind.into(),
        kernel: kernel.into(),
        ops_per_s: calls as f64 * ops_per_call / secs,
        threads,
    }
}

/// Plain-Rust f32 dot (eight accumulators, so the compiler vectorizes it): the
/// baseline when no tuned kernel is given.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Plain-Rust int8 dot with i32 accumulation: the int8 baseline.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] as i32 * y[i] as i32;
        }
    }
    let tail: i32 = ra.iter().zip(rb).map(|(&x, &y)| x as i32 * y as i32).sum();
    acc.iter().sum::<i32>() + tail
}

/// Times the plain-Rust baselines (`f32` and `int8`, rows of `n` in L1 cache).
pub fn measure_builtin_dots(threads: usize, n: usize, duration: Duration) -> Vec<DotThroughput> {
    let f = measure_dot(
        "f32",
        "plain Rust (auto-vectorized)",
        threads,
        2.0 * n as f64,
        duration,
        |t| {
            let a: Vec<f32> = (0..n).map(|i| ((i + t) % 7) as f32 * 0.25).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.5).collect();
            move || dot_f32(black_box(&a), black_box(&b))
        },
    );
    let i = measure_dot(
        "int8",
        "plain Rust (auto-vectorized)",
        threads,
        2.0 * n as f64,
        duration,
        |t| {
            let a: Vec<i8> = (0..n).map(|i| ((i + t) % 17) as i8 - 8).collect();
            let b: Vec<i8> = (0..n).map(|i| (i % 13) as i8 - 6).collect();
            move || dot_i8(black_box(&a), black_box(&b)) as f32
        },
    );
    vec![f, i]
}

/// Measures the host: bandwidth, the given dot kernels (or the built-in baselines
/// when `dots` is empty), cores, CPU name and memory.
pub fn profile_host(threads: usize, buffer_bytes: usize, dots: Vec<DotThroughput>) -> HostProfile {
    let dots = if dots.is_empty() {
        measure_builtin_dots(threads, 4096, Duration::from_millis(300))
    } else {
        dots
    };
    HostProfile {
        cpu: cpu_name(),
        cores: cores(),
        memory: host_memory(),
        bandwidth: measure_bandwidth(threads, buffer_bytes, 5),
        dots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_dots_are_exact_on_small_integers() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let want: f32 = a.iter().map(|x| x * x).sum();
        assert_eq!(dot_f32(&a, &a), want);
        let b: Vec<i8> = (0..37).map(|i| (i % 11) as i8 - 5).collect();
        let want: i32 = b.iter().map(|&x| x as i32 * x as i32).sum();
        assert_eq!(dot_i8(&b, &b), want);
    }

    #[test]
    fn bandwidth_and_dot_rates_are_positive() {
        let b = measure_bandwidth(2, 4 << 20, 1);
        assert!(b.copy_bytes_per_s > 0.0 && b.read_bytes_per_s > 0.0);
        let d = measure_builtin_dots(1, 256, Duration::from_millis(5));
        assert!(d.iter().all(|d| d.ops_per_s > 0.0));
    }
}
