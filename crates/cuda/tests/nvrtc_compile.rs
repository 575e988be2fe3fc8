//! Every kernel unit compiles through NVRTC for Ampere (sm_80) and Hopper (sm_90a),
//! to a CUBIN: no GPU needed, only libnvrtc (PyPI's `nvidia-cuda-nvrtc` wheel in CI,
//! see scripts/test.sh). Skips with a reason when NVRTC is absent, unless
//! HANGAR_REQUIRE_NVRTC=1.

use hangar_cuda::compile::{self, UNITS};

fn nvrtc_or_skip() -> bool {
    match compile::nvrtc_available() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("HANGAR_REQUIRE_NVRTC").as_deref() == Ok("1") {
                panic!("HANGAR_REQUIRE_NVRTC=1 but NVRTC is missing: {e}");
            }
            eprintln!("skipped: {e}");
            false
        }
    }
}

#[test]
fn every_kernel_unit_compiles_to_a_cubin_for_sm80_and_sm90a() {
    if !nvrtc_or_skip() {
        return;
    }
    let (major, minor) = compile::nvrtc_version().expect("version");
    eprintln!("NVRTC {major}.{minor}");
    for arch in ["sm_80", "sm_90a"] {
        for unit in UNITS {
            let cubin =
                compile::compile_cubin(unit, arch).unwrap_or_else(|e| panic!("{}: {e}", unit.name));
            assert_eq!(
                &cubin[..4],
                b"\x7fELF",
                "{} for {arch} is not a CUBIN",
                unit.name
            );
            eprintln!("{} {arch}: {} bytes", unit.name, cubin.len());
        }
    }
}

#[test]
fn a_broken_kernel_names_its_unit_in_the_error() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken =
        compile::KernelUnit::new("broken_unit", "extern \"C\" __global__ void k() { nope; }");
    let err = compile::compile_cubin(&broken, "sm_90a").expect_err("must fail");
    let text = err.to_string();
    assert!(
        text.contains("broken_unit") && text.contains("sm_90a"),
        "{text}"
    );
}

#[test]
fn compiled_kernels_are_cached_by_source_arch_and_version() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hangar-cuda-cache-{}", std::process::id()));
    std::env::set_var("HANGAR_CUDA_CACHE", &dir);
    let unit = &UNITS[2];
    let (a, cached_a) = compile::cubin_cached(unit, "sm_80").expect("compile");
    let (b, cached_b) = compile::cubin_cached(unit, "sm_80").expect("cache");
    assert!(!cached_a && cached_b);
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The opt-in variants of the decode kernels (`HANGAR_CUDA_DEFINES`, chosen for A/B
/// runs on the GPU host) must compile too, or an A/B run there fails instead of
/// measuring.
#[test]
fn opt_in_kernel_variants_compile_for_sm80_and_sm90a() {
    if !nvrtc_or_skip() {
        return;
    }
    let variants: [(&str, &str); 13] = [
        ("mmvq", "NO_HOIST"),
        ("mmvq", "STREAM_ACT_BATCH"),
        ("mmvq", "STREAM_ACT_LINEAR"),
        ("mmvq", "STREAM_NO_COPY"),
        ("mmvq", "HOIST2"),
        ("mmvq", "HOIST_MVS_ONLY"),
        ("mmvq", "MV_REGS_FREE"),
        ("attention", "ATT_AU1"),
        ("attention", "ATT_AU4"),
        ("attention", "ATT_AU16"),
        ("mmvq", "PDL_EARLY"),
        ("layer", "PDL_EARLY"),
        ("mmq", "MMQ_T64"),
    ];
    for (name, define) in variants {
        let unit = UNITS
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no kernel unit {name}"));
        for arch in ["sm_80", "sm_90a"] {
            let cubin = compile::compile_cubin_with(unit, arch, &[define.to_string()])
                .unwrap_or_else(|e| panic!("{name} with {define} for {arch}: {e}"));
            assert_eq!(&cubin[..4], b"\x7fELF", "{name} {define} {arch}");
        }
    }
}
