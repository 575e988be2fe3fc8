//! Runtime CPU feature detection and the process-wide SIMD level the kernels dispatch to.
//! Never reads the environment: a binary lowers the level once, with [`set_simd_cap`].

use std::sync::atomic::{AtomicU8, Ordering};

/// The SIMD instruction sets a kernel may use, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL/DQ + VNNI (on top of AVX2).
    Avx512Vnni,
}

impl SimdLevel {
    /// Parses a cap as a user writes it: `scalar`, `avx2` or `avx512`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(SimdLevel::Scalar),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" | "avx512vnni" | "avx512-vnni" => Some(SimdLevel::Avx512Vnni),
            _ => None,
        }
    }

    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => SimdLevel::Scalar,
            1 => SimdLevel::Avx2,
            _ => SimdLevel::Avx512Vnni,
        }
    }
}

/// The level in use, or `UNSET` before the first [`simd_level`] / [`set_simd_cap`].
static LEVEL: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = u8::MAX;

/// The level the dispatchers use: the best this CPU supports, unless
/// [`set_simd_cap`] lowered it.
#[inline]
pub fn simd_level() -> SimdLevel {
    match LEVEL.load(Ordering::Relaxed) {
        UNSET => {
            // First use: the best level, unless a cap was set in between.
            let best = detect().to_u8();
            match LEVEL.compare_exchange(UNSET, best, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => SimdLevel::from_u8(best),
                Err(now) => SimdLevel::from_u8(now),
            }
        }
        v => SimdLevel::from_u8(v),
    }
}

/// Caps the level every dispatcher uses for the rest of the process at `cap` (never
/// above what this CPU supports) and returns the level now in use. For A/B
/// comparisons and for reproducing another machine's arithmetic; call it once, at
/// startup, before any kernel runs: results computed at different levels may differ
/// in the last bits.
pub fn set_simd_cap(cap: SimdLevel) -> SimdLevel {
    let level = detect().min(cap);
    LEVEL.store(level.to_u8(), Ordering::Relaxed);
    level
}

/// AMX state: `UNSET` until first asked, then 1 (in use) or 0.
static AMX: AtomicU8 = AtomicU8::new(UNSET);

/// Whether the packed kernels use AMX-INT8 tile multiplies (Intel Sapphire Rapids and
/// later): the CPU has them, Linux granted this process the tile-data state, the SIMD
/// level is AVX-512 (a lower [`set_simd_cap`] turns them off too) and [`set_amx`] did
/// not turn them off. Results are bitwise those of the AVX-512 kernels.
#[inline]
pub fn amx() -> bool {
    let on = match AMX.load(Ordering::Relaxed) {
        UNSET => {
            let v = u8::from(detect_amx());
            match AMX.compare_exchange(UNSET, v, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => v,
                Err(now) => now,
            }
        }
        v => v,
    };
    on == 1 && simd_level() >= SimdLevel::Avx512Vnni
}

/// Turns the AMX kernels on (where [`amx`]'s conditions hold) or off for the rest of
/// the process and returns whether they are in use. For A/B comparisons; call it at
/// startup, before any kernel runs.
pub fn set_amx(enabled: bool) -> bool {
    AMX.store(u8::from(enabled && detect_amx()), Ordering::Relaxed);
    amx()
}

/// AMX-TILE and AMX-INT8 in CPUID, and the kernel's permission to use the tile data
/// (Linux 5.16+ hands it out per process through `arch_prctl`).
fn detect_amx() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (tile, int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
        if detect() < SimdLevel::Avx512Vnni || !tile || !int8 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments; it only changes which
        // register state this process may use.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cap_names() {
        assert_eq!(SimdLevel::parse("scalar"), Some(SimdLevel::Scalar));
        assert_eq!(SimdLevel::parse("AVX2"), Some(SimdLevel::Avx2));
        assert_eq!(SimdLevel::parse("avx512"), Some(SimdLevel::Avx512Vnni));
        assert_eq!(SimdLevel::parse("sse"), None);
    }

    #[test]
    fn levels_round_trip_through_the_atomic() {
        for l in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512Vnni] {
            assert_eq!(SimdLevel::from_u8(l.to_u8()), l);
        }
    }
}
