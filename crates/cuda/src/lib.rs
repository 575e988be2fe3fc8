//! hangar-cuda: the NVIDIA GPU backend.
//!
//! The CUDA libraries are loaded at run time (the binary is built where no CUDA toolkit
//! exists): the driver (`libcuda.so`) to run, NVRTC (`libnvrtc.so.13`) to compile the
//! kernels, whose CUDA C sources are embedded in the binary and compiled at first use
//! to a CUBIN for the device's architecture, cached on disk ([`compile`]).
//!
//! [`CudaRunner`] implements the engine's `ModelRunner`: the weights are uploaded once
//! in their GGUF block formats, the KV cache lives on the GPU (f16) in the engine's
//! paged block layout, and one step runs the whole forward pass there; only token ids,
//! positions and block tables go up and the wanted logits come back.
//!
//! With `--gpu-layers N` ([`offload`]) only the last `N` layers and the output layer
//! run on the GPU, the others on the CPU kernels.
//!
//! [`twin`] holds CPU twins of the kernels' arithmetic (same block layouts and index
//! math), tested against the CPU kernels so a layout bug shows up without a GPU.

pub mod compile;
mod gpu;
pub mod head;
pub mod offload;
mod pinned;
mod runner;
pub mod twin;

pub use gpu::{driver_available, probe, DeviceInfo};
pub use offload::GpuOptions;
pub use runner::CudaRunner;

/// Which device a command runs on (`--device cpu|cuda|cuda:N|auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
    /// CUDA device 0 when a driver and a GPU are found, else the CPU.
    Auto,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            "auto" => Ok(Device::Auto),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Device::Cuda)
                    .map_err(|_| format!("{s:?}: expected cuda:N with N a device number")),
                None => Err(format!("{s:?}: expected cpu, cuda, cuda:N or auto")),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Auto => write!(f, "auto"),
        }
    }
}

impl Device {
    /// Resolves `auto`: `cuda:0` when a driver and a device are present, else `cpu`.
    pub fn resolve(self) -> Device {
        match self {
            Device::Auto => match probe(0) {
                Ok(_) => Device::Cuda(0),
                Err(_) => Device::Cpu,
            },
            d => d,
        }
    }
}

/// Errors of the GPU backend; each names what is missing or which kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("{what} library not found (looked for {names}): {hint}")]
    MissingLibrary {
        what: &'static str,
        names: String,
        hint: &'static str,
    },
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice { ordinal: usize, count: usize },
    #[error("CUDA driver: {call} failed: {msg}")]
    Driver { call: String, msg: String },
    #[error("kernel unit {kernel:?} failed to compile for {arch}: {log}")]
    Compile {
        kernel: &'static str,
        arch: String,
        log: String,
    },
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    #[error(
        "the model needs {need_mib} MiB of GPU memory, {free_mib} MiB are free on {device}: {hint}"
    )]
    OutOfMemory {
        need_mib: usize,
        free_mib: usize,
        device: String,
        hint: String,
    },
    #[error("the layers on the CPU (--gpu-layers): {0}")]
    CpuLayers(String),
    #[error("not supported on the GPU backend: {0}")]
    Unsupported(String),
    #[error("invalid batch: {0}")]
    BadBatch(String),
    /// A launch whose argument list does not match the kernel (a bug in Hangar).
    #[error("launch refused: {0}; this is a bug in Hangar, please report it")]
    BadLaunch(String),
}

impl CudaError {
    /// Whether this is a driver error that leaves the context unusable: after an
    /// illegal address, a trap or a launch failure every later call in the process
    /// fails the same way (CUDA's "sticky" errors), so the runner stops taking work.
    pub fn is_sticky(&self) -> bool {
        const STICKY: [&str; 10] = [
            "ILLEGAL_ADDRESS",
            "LAUNCH_FAILED",
            "MISALIGNED_ADDRESS",
            "ILLEGAL_INSTRUCTION",
            "HARDWARE_STACK_ERROR",
            "INVALID_ADDRESS_SPACE",
            "INVALID_PC",
            "ASSERT",
            "ECC_UNCORRECTABLE",
            "LAUNCH_TIMEOUT",
        ];
        match self {
            CudaError::Driver { msg, .. } => STICKY.iter().any(|k| msg.contains(k)),
            _ => false,
        }
    }
}

impl From<CudaError> for hangar_engine::EngineError {
    fn from(e: CudaError) -> Self {
        hangar_engine::EngineError::Invalid(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("CUDA:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert_eq!("auto".parse::<Device>(), Ok(Device::Auto));
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn only_context_breaking_driver_errors_are_sticky() {
        use cudarc::driver::sys::CUresult;
        let driver = |r: CUresult| CudaError::Driver {
            call: "cuCtxSynchronize".into(),
            msg: format!("DriverError({r:?})"),
        };
        assert!(driver(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS).is_sticky());
        assert!(driver(CUresult::CUDA_ERROR_LAUNCH_FAILED).is_sticky());
        assert!(driver(CUresult::CUDA_ERROR_ASSERT).is_sticky());
        assert!(!driver(CUresult::CUDA_ERROR_OUT_OF_MEMORY).is_sticky());
        assert!(!driver(CUresult::CUDA_ERROR_INVALID_VALUE).is_sticky());
        assert!(!CudaError::BadBatch("ILLEGAL_ADDRESS in a message".into()).is_sticky());
    }
}
