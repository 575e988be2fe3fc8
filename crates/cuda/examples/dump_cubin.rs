//! Writes every kernel unit's CUBIN for an architecture to a folder, to read the
//! machine code without a GPU (`cuobjdump --dump-sass`, `nvdisasm`):
//! `cargo run --release -p hangar-cuda --example dump_cubin -- sm_90a OUT_DIR`
//! (`HANGAR_CUDA_DEFINES` picks opt-in variants, as for the runner; scripts/cuda-sass.sh
//! reads the result).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).map_or("sm_90a", String::as_str);
    let out = std::path::PathBuf::from(args.get(2).map_or(".", String::as_str));
    std::fs::create_dir_all(&out)?;
    for unit in hangar_cuda::compile::UNITS {
        let cubin = hangar_cuda::compile::compile_cubin(unit, arch)?;
        let path = out.join(format!("{}.cubin", unit.name));
        std::fs::write(&path, cubin)?;
        println!("{}", path.display());
    }
    Ok(())
}
