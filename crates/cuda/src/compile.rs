//! Kernel sources, embedded in the binary, compiled at first use with NVRTC to a CUBIN
//! for the device's architecture and cached on disk.
//!
//! The cache key is the source hash, the architecture and the NVRTC version, so a new
//! binary, a different GPU or a new NVRTC never reuses a stale CUBIN. CUBIN, not PTX:
//! PTX has to be JIT-compiled by the driver, which fails when NVRTC is newer than it.

use crate::CudaError;
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use std::ffi::CString;
use std::path::{Path, PathBuf};

const COMMON: &str = include_str!("kernels/common.cuh");

/// A compilation unit: a name (what errors and the cache use) and its source.
#[derive(Debug, Clone, Copy)]
pub struct KernelUnit {
    pub name: &'static str,
    body: &'static str,
}

impl KernelUnit {
    /// A unit from a name and a body (tests use this to check error reporting).
    pub const fn new(name: &'static str, body: &'static str) -> Self {
        KernelUnit { name, body }
    }
    /// The full source handed to NVRTC: the shared helpers, then the unit. With
    /// `HANGAR_CUDA_SOURCES=DIR`, `DIR/common.cuh` and `DIR/<name>.cu` replace the
    /// embedded files where they exist: a kernel variant can be A/B-timed on a GPU host
    /// with the same binary (the cache key is the source's hash, so nothing goes stale).
    /// `HANGAR_CUDA_DEFINES=A,B` puts `#define A 1` and `#define B 1` first: the
    /// opt-in kernel variants of an A/B run are chosen that way.
    pub fn source(&self) -> String {
        self.source_with(&defines_from_env())
    }

    /// [`KernelUnit::source`] with these `#define NAME 1` lines first.
    pub fn source_with(&self, defines: &[String]) -> String {
        let dir = std::env::var_os("HANGAR_CUDA_SOURCES").map(PathBuf::from);
        let read = |file: &str, embedded: &str| -> String {
            dir.as_ref()
                .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
                .unwrap_or_else(|| embedded.to_string())
        };
        let common = read("common.cuh", COMMON);
        let body = read(&format!("{}.cu", self.name), self.body);
        let defs: String = defines.iter().map(|d| format!("#define {d} 1\n")).collect();
        format!("{defs}{common}\n#line 1 \"{}.cu\"\n{body}", self.name)
    }
}

/// The macro names of `HANGAR_CUDA_DEFINES` (comma-separated; names that are not
/// C identifiers are ignored with a warning).
pub fn defines_from_env() -> Vec<String> {
    let Ok(v) = std::env::var("HANGAR_CUDA_DEFINES") else {
        return Vec::new();
    };
    v.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| {
            let ok = d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !d.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                eprintln!("warning: HANGAR_CUDA_DEFINES: {d:?} is not a macro name, ignored");
            }
            ok
        })
        .map(String::from)
        .collect()
}

/// Every kernel unit of the backend.
pub const UNITS: &[KernelUnit] = &[
    KernelUnit {
        name: "gemv",
        body: include_str!("kernels/gemv.cu"),
    },
    KernelUnit {
        name: "layer",
        body: include_str!("kernels/layer.cu"),
    },
    KernelUnit {
        name: "attention",
        body: include_str!("kernels/attention.cu"),
    },
    KernelUnit {
        name: "mmvq",
        body: include_str!("kernels/mmvq.cu"),
    },
    KernelUnit {
        name: "sample",
        body: include_str!("kernels/sample.cu"),
    },
    KernelUnit {
        name: "mmq",
        body: include_str!("kernels/mmq.cu"),
    },
];

/// Loads NVRTC: first the library `HANGAR_NVRTC_LIB` names (a path; loaded globally so
/// the name lookup below finds it), then the usual names (libnvrtc.so.13, ...).
pub fn nvrtc_available() -> Result<(), CudaError> {
    preload_env_library("HANGAR_NVRTC_LIB");
    // SAFETY: only tries to open the library.
    if unsafe { nvrtc_sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::MissingLibrary {
            what: "NVRTC",
            names: "libnvrtc.so.13 (or libnvrtc.so)".into(),
            hint:
                "install CUDA 13's NVRTC (the toolkit, or `pip install nvidia-cuda-nvrtc` and \
                   put its nvidia/cu13/lib on LD_LIBRARY_PATH), or set HANGAR_NVRTC_LIB to the file",
        })
    }
}

/// dlopens the file named by `var` with RTLD_GLOBAL and keeps it loaded, so a later
/// dlopen by soname resolves to it.
pub(crate) fn preload_env_library(var: &str) {
    use std::sync::Mutex;
    static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let Some(path) = std::env::var_os(var) else {
        return;
    };
    let Ok(mut done) = DONE.lock() else { return };
    if done.iter().any(|v| v == var) {
        return;
    }
    done.push(var.to_string());
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
        // SAFETY: loading a shared library runs its initialisers; the user named it.
        if let Ok(lib) = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) } {
            std::mem::forget(lib);
        }
    }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    nvrtc_available()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the pointers are valid.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::Nvrtc(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// The GPU architecture name NVRTC takes for compute capability (major, minor):
/// `sm_90a` on Hopper (its arch-specific instructions), `sm_XY` elsewhere.
pub fn arch_for(major: i32, minor: i32) -> String {
    if major == 9 && minor == 0 {
        "sm_90a".into()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// FNV-1a, 64 bits: a stable hash of the source for the cache key.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Hangar's cache folder for compiled kernels: `$HANGAR_CUDA_CACHE`, else
/// `$XDG_CACHE_HOME/hangar/cuda`, else `~/.cache/hangar/cuda`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HANGAR_CUDA_CACHE") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("hangar").join("cuda"))
}

/// The cache file of `unit` for `arch` under `dir`.
pub fn cache_path(dir: &Path, unit: &KernelUnit, arch: &str, nvrtc: (i32, i32)) -> PathBuf {
    dir.join(format!(
        "{}-{:016x}-{arch}-nvrtc{}.{}.cubin",
        unit.name,
        fnv1a(&unit.source()),
        nvrtc.0,
        nvrtc.1
    ))
}

/// Compiles `unit` for `arch` to a CUBIN with NVRTC (no cache).
pub fn compile_cubin(unit: &KernelUnit, arch: &str) -> Result<Vec<u8>, CudaError> {
    compile_cubin_with(unit, arch, &defines_from_env())
}

/// [`compile_cubin`] with these macros defined (the opt-in variants, in CI).
pub fn compile_cubin_with(
    unit: &KernelUnit,
    arch: &str,
    defines: &[String],
) -> Result<Vec<u8>, CudaError> {
    nvrtc_available()?;
    let src = CString::new(unit.source_with(defines)).map_err(|_| CudaError::Compile {
        kernel: unit.name,
        arch: arch.into(),
        log: "source holds a NUL byte".into(),
    })?;
    let name = CString::new(format!("{}.cu", unit.name)).unwrap_or_default();
    let prog = nvrtc::create_program(&src, Some(&name))
        .map_err(|e| CudaError::Nvrtc(format!("creating program {}: {e:?}", unit.name)))?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
    ];
    // No --use_fast_math: expf, tanhf and sqrtf stay precise, close to the CPU twins.
    // SAFETY: `prog` was just created and is destroyed once below.
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| {
            let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let result = match compiled {
        Err(e) => Err(CudaError::Compile {
            kernel: unit.name,
            arch: arch.into(),
            log: format!("{e:?}\n{log}"),
        }),
        Ok(()) => get_cubin(prog).map_err(|e| CudaError::Compile {
            kernel: unit.name,
            arch: arch.into(),
            log: e,
        }),
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

fn get_cubin(prog: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; the buffer has the size NVRTC reported.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
    if size == 0 {
        return Err("NVRTC produced no CUBIN (was a virtual compute_ architecture given?)".into());
    }
    let mut buf = vec![0u8; size];
    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
    Ok(buf)
}

/// The CUBIN of `unit` for `arch`: from the disk cache when present, else compiled
/// and written there (atomically; a cache that cannot be written is skipped).
/// Returns the CUBIN and whether it came from the cache.
pub fn cubin_cached(unit: &KernelUnit, arch: &str) -> Result<(Vec<u8>, bool), CudaError> {
    let version = nvrtc_version()?;
    let path = cache_dir().map(|d| cache_path(&d, unit, arch, version));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok((bytes, true));
            }
        }
    }
    let bytes = compile_cubin(unit, arch)?;
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &bytes).is_ok() {
                    let _ = std::fs::rename(&tmp, p);
                }
            }
        }
    }
    Ok((bytes, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_come_first_and_change_the_source() {
        let u = UNITS[0];
        let plain = u.source_with(&[]);
        let with = u.source_with(&["AB_VARIANT".to_string()]);
        assert!(with.starts_with("#define AB_VARIANT 1\n"));
        assert!(with.ends_with(&plain[plain.len() - 200..]));
        assert_ne!(fnv1a(&plain), fnv1a(&with));
    }

    #[test]
    fn cache_keys_change_with_source_arch_and_version() {
        let d = Path::new("/c");
        let u = UNITS[0];
        let a = cache_path(d, &u, "sm_90a", (13, 0));
        assert_ne!(a, cache_path(d, &u, "sm_80", (13, 0)));
        assert_ne!(a, cache_path(d, &u, "sm_90a", (13, 5)));
        assert_ne!(a, cache_path(d, &UNITS[1], "sm_90a", (13, 0)));
        assert!(a.to_string_lossy().starts_with("/c/gemv-"));
    }

    #[test]
    fn hopper_gets_its_arch_specific_target() {
        assert_eq!(arch_for(9, 0), "sm_90a");
        assert_eq!(arch_for(8, 0), "sm_80");
        assert_eq!(arch_for(8, 9), "sm_89");
    }
}
