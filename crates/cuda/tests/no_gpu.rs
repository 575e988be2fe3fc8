//! Without a CUDA driver (CI, the developers' machines) asking for the GPU is a clear
//! error that names the missing library, never a panic.

use hangar_cuda::{driver_available, CudaError, CudaRunner, Device};
use hangar_models::synth::{self, SynthArch, SynthType};
use hangar_models::Model;

#[test]
fn a_machine_without_a_driver_gets_an_error_naming_the_library() {
    if driver_available().is_ok() {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    let path = std::env::temp_dir().join(format!("hangar-cuda-nogpu-{}.gguf", std::process::id()));
    let shape = synth::preset(SynthArch::Llama, "tiny").expect("preset");
    synth::write(
        SynthArch::Llama,
        &shape,
        SynthType::Q8_0,
        1,
        &path,
        1,
        |_, _| {},
    )
    .expect("synth");
    let model = Model::load(&path).expect("load");
    let err = match CudaRunner::new(&model, 0) {
        Err(e) => e,
        Ok(_) => panic!("a runner without a driver"),
    };
    assert!(matches!(err, CudaError::MissingLibrary { .. }), "{err}");
    assert!(err.to_string().contains("libcuda.so"), "{err}");
    assert_eq!(Device::Auto.resolve(), Device::Cpu);
    let _ = std::fs::remove_file(&path);
}
