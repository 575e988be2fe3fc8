//! Runtime CPU feature detection: which SIMD level the kernels dispatch to.

use std::sync::OnceLock;

/// The SIMD instruction sets a kernel may use, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL/DQ + VNNI (on top of AVX2).
    Avx512Vnni,
}

#[derive(Debug, Clone, Copy)]
pub struct CpuFeatures {
    pub level: SimdLevel,
}

static LEVEL: OnceLock<SimdLevel> = OnceLock::new();

/// The level the dispatchers use: the best this CPU supports, unless the environment
/// variable `HANGAR_SIMD` (`scalar`, `avx2`, `avx512`) lowers it.
pub fn simd_level() -> SimdLevel {
    *LEVEL.get_or_init(|| {
        let best = detect();
        match std::env::var("HANGAR_SIMD").ok().as_deref() {
            Some("scalar") => SimdLevel::Scalar,
            Some("avx2") => best.min(SimdLevel::Avx2),
            _ => best,
        }
    })
}

/// The best level this CPU supports.
pub fn detect() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let avx512 = avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vnni");
        if avx512 {
            return SimdLevel::Avx512Vnni;
        }
        if avx2 {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Scalar
}
