//! A thin layer over the CUDA driver API: the context, the loaded kernel modules,
//! device buffers, kernel launches on one stream, and CUDA graphs of recorded steps.

use crate::compile::{self, UNITS};
use crate::CudaError;
use cudarc::driver::{result, sys, CudaContext};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn drv(call: impl Into<String>) -> impl FnOnce(result::DriverError) -> CudaError {
    let call = call.into();
    move |e| CudaError::Driver {
        call,
        msg: format!("{e:?}"),
    }
}

/// Checks that the driver library can be loaded (`HANGAR_CUDA_LIB` may name it).
pub fn driver_available() -> Result<(), CudaError> {
    compile::preload_env_library("HANGAR_CUDA_LIB");
    // SAFETY: only tries to open the library.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::MissingLibrary {
            what: "CUDA driver",
            names: "libcuda.so".into(),
            hint: "no NVIDIA driver on this machine; install one, or use --device cpu",
        })
    }
}

/// What `probe` finds about a device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_mem: usize,
    pub driver_version: i32,
    /// Streaming multiprocessors.
    pub sm_count: usize,
    /// Shared memory a block may have when its kernel opts in (bytes).
    pub smem_optin: usize,
    /// Shared memory of one SM, for all its resident blocks (bytes).
    pub smem_per_sm: usize,
}

/// Looks for device `ordinal`: the driver library, its initialisation and the device.
pub fn probe(ordinal: usize) -> Result<DeviceInfo, CudaError> {
    driver_available()?;
    result::init().map_err(drv("cuInit"))?;
    let count = result::device::get_count().map_err(drv("cuDeviceGetCount"))? as usize;
    if ordinal >= count {
        return Err(CudaError::NoDevice { ordinal, count });
    }
    let dev = result::device::get(ordinal as i32).map_err(drv("cuDeviceGet"))?;
    let name = result::device::get_name(dev).map_err(drv("cuDeviceGetName"))?;
    // SAFETY: `dev` is a valid device handle.
    let (major, minor, total, sms, optin, per_sm) = unsafe {
        use sys::CUdevice_attribute::*;
        (
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                .map_err(drv("cuDeviceGetAttribute"))?,
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
                .map_err(drv("cuDeviceGetAttribute"))?,
            result::device::total_mem(dev).map_err(drv("cuDeviceTotalMem"))?,
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(drv("cuDeviceGetAttribute"))?,
            result::device::get_attribute(
                dev,
                CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .unwrap_or(48 << 10),
            result::device::get_attribute(
                dev,
                CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            )
            .unwrap_or(48 << 10),
        )
    };
    let mut driver_version = 0;
    // SAFETY: a valid out pointer.
    let _ = unsafe { sys::cuDriverGetVersion(&mut driver_version) };
    Ok(DeviceInfo {
        ordinal,
        name,
        compute_capability: (major, minor),
        total_mem: total,
        driver_version,
        sm_count: sms.max(1) as usize,
        smem_optin: optin.max(0) as usize,
        smem_per_sm: per_sm.max(0) as usize,
    })
}

/// A device allocation, freed on drop.
pub(crate) struct DevBuf {
    pub ptr: sys::CUdeviceptr,
    pub bytes: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: a device pointer is an address in the context, usable from any thread that
// binds the context (every entry point of the runner does).
unsafe impl Send for DevBuf {}

/// Bumped at every device allocation and free: a graph recorded at another epoch may
/// name memory that has moved since (see [`Gpu::has_current_graph`]).
static MEMORY_EPOCH: AtomicU64 = AtomicU64::new(0);

fn memory_epoch() -> u64 {
    MEMORY_EPOCH.load(Ordering::Acquire)
}

impl DevBuf {
    pub fn alloc(gpu: &Gpu, bytes: usize) -> Result<Self, CudaError> {
        // SAFETY: a plain device allocation of at least one byte.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }
            .map_err(drv(format!("cuMemAlloc({bytes} bytes)")))?;
        MEMORY_EPOCH.fetch_add(1, Ordering::AcqRel);
        Ok(DevBuf {
            ptr,
            bytes,
            ctx: gpu.ctx.clone(),
        })
    }
    pub fn upload<T: Copy>(gpu: &Gpu, data: &[T]) -> Result<Self, CudaError> {
        let b = Self::alloc(gpu, std::mem::size_of_val(data))?;
        b.write(data)?;
        Ok(b)
    }
    /// Copies `data` to the start of the buffer (synchronous).
    pub fn write<T: Copy>(&self, data: &[T]) -> Result<(), CudaError> {
        if std::mem::size_of_val(data) > self.bytes {
            return Err(CudaError::BadBatch("upload larger than its buffer".into()));
        }
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: the destination holds at least size_of_val(data) bytes.
        unsafe { result::memcpy_htod_sync(self.ptr, data) }.map_err(drv("cuMemcpyHtoD"))
    }
    /// Copies the start of the buffer into `out` (synchronous: waits for the kernels).
    pub fn read<T: Copy>(&self, out: &mut [T]) -> Result<(), CudaError> {
        if std::mem::size_of_val(out) > self.bytes {
            return Err(CudaError::BadBatch(
                "download larger than its buffer".into(),
            ));
        }
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: the source holds at least size_of_val(out) bytes.
        unsafe { result::memcpy_dtoh_sync(out, self.ptr) }.map_err(drv("cuMemcpyDtoH"))
    }
    /// Copies the bytes from `offset` on into `out` (synchronous).
    pub fn read_at<T: Copy>(&self, offset: usize, out: &mut [T]) -> Result<(), CudaError> {
        if offset + std::mem::size_of_val(out) > self.bytes {
            return Err(CudaError::BadBatch(
                "download past the end of its buffer".into(),
            ));
        }
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: the source holds offset + size_of_val(out) bytes.
        unsafe { result::memcpy_dtoh_sync(out, self.ptr + offset as u64) }
            .map_err(drv("cuMemcpyDtoH"))
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by malloc_sync, freed once.
        let _ = unsafe { result::free_sync(self.ptr) };
        MEMORY_EPOCH.fetch_add(1, Ordering::AcqRel);
    }
}

/// A grow-only device buffer (scratch reused across steps).
#[derive(Default)]
pub(crate) struct Scratch(Option<DevBuf>);

impl Scratch {
    /// A buffer of at least `bytes`; reallocated (contents lost) when too small.
    pub fn get(&mut self, gpu: &Gpu, bytes: usize) -> Result<u64, CudaError> {
        if self.0.as_ref().is_none_or(|b| b.bytes < bytes) {
            self.0 = None;
            self.0 = Some(DevBuf::alloc(gpu, bytes.next_power_of_two().max(256))?);
        }
        Ok(self.0.as_ref().map_or(0, |b| b.ptr))
    }
    pub fn buf(&self) -> Option<&DevBuf> {
        self.0.as_ref()
    }
}

/// Kernel arguments, each in an 8-byte slot (the driver reads each parameter's own
/// size from its slot's start; x86-64 and aarch64 are little-endian).
#[derive(Default)]
pub(crate) struct Args(Vec<u64>);

impl Args {
    pub fn new() -> Self {
        Args(Vec::with_capacity(16))
    }
    pub fn ptr(mut self, p: u64) -> Self {
        self.0.push(p);
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.0.push(v as u32 as u64);
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.push(v);
        self
    }
    pub fn f32(mut self, v: f32) -> Self {
        self.0.push(v.to_bits() as u64);
        self
    }
    pub fn f64(mut self, v: f64) -> Self {
        self.0.push(v.to_bits());
        self
    }
}

/// A cuBLAS handle (the prefill GEMMs), when libcublas is present.
pub(crate) struct Blas(cudarc::cublas::sys::cublasHandle_t);

impl Blas {
    fn open() -> Option<Blas> {
        compile::preload_env_library("HANGAR_CUBLAS_LIB");
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return None;
        }
        cudarc::cublas::result::create_handle().ok().map(Blas)
    }

    /// `y[t][r] = sum_c w[r][c] x[t][c]`: `w` f16 row-major rows x cols, `x` f16
    /// ntok x cols, `y` f32 ntok x rows; f32 accumulation on the tensor cores.
    pub fn gemm_f16(
        &self,
        w: u64,
        x: u64,
        y: u64,
        rows: usize,
        cols: usize,
        ntok: usize,
    ) -> Result<(), CudaError> {
        use cudarc::cublas::sys::{
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T},
            cudaDataType::{CUDA_R_16F, CUDA_R_32F},
        };
        let (alpha, beta) = (1f32, 0f32);
        // Column-major view: Y'(rows x ntok) = W'(cols x rows)^T * X'(cols x ntok).
        // SAFETY: the pointers are live device buffers of the sizes given.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                self.0,
                CUBLAS_OP_T,
                CUBLAS_OP_N,
                rows as i32,
                ntok as i32,
                cols as i32,
                (&alpha as *const f32).cast(),
                w as *const c_void,
                CUDA_R_16F,
                cols as i32,
                x as *const c_void,
                CUDA_R_16F,
                cols as i32,
                (&beta as *const f32).cast(),
                y as *mut c_void,
                CUDA_R_32F,
                rows as i32,
                CUBLAS_COMPUTE_32F,
                CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(|e| CudaError::Driver {
            call: "cublasGemmEx".into(),
            msg: format!("{e:?}"),
        })
    }
}

/// One kernel launch as recorded for a graph: equal launches (function, shape and
/// argument values) replay the same graph.
#[derive(Clone, PartialEq, Eq)]
struct Launch {
    func: usize,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem: u32,
    /// CTAs per thread-block cluster along x (0: no cluster).
    cluster: u32,
    args: Vec<u64>,
}

/// An instantiated graph and the launches it was captured from.
struct Graph {
    launches: Vec<Launch>,
    exec: sys::CUgraphExec,
    /// [`memory_epoch`] when its launches were last recorded (or found equal).
    epoch: u64,
}

/// Whether a step whose graph is known skips building its launch list
/// (`HANGAR_CUDA_REUSE`: on; `0` off; `check` builds it anyway and counts the steps
/// where the known graph's launches differ, which would be a bug in the step's key).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reuse {
    On,
    Off,
    Check,
}

/// `HANGAR_CUDA_REUSE=check`'s counts: steps that would have reused a graph, and those
/// whose rebuilt launches differed from it.
#[derive(Default)]
struct ReuseCheck {
    pending: Option<bool>,
    checked: usize,
    differed: usize,
}

/// Graphs kept (one a step key) before the cache is cleared: a server's decode
/// steps see each batch size under 32 with a few context lengths.
const MAX_GRAPHS: usize = 128;

/// Milliseconds from event `a` to `b` (both from [`Gpu::event_now`], the stream
/// synchronized since); destroys both.
pub(crate) fn event_ms(a: sys::CUevent, b: sys::CUevent) -> f64 {
    // SAFETY: both events were recorded and have completed; each is destroyed once.
    unsafe {
        let ms = result::event::elapsed(a, b).unwrap_or(0.0) as f64;
        let _ = result::event::destroy(a);
        let _ = result::event::destroy(b);
        ms
    }
}

/// The context and the loaded kernels of one device.
pub(crate) struct Gpu {
    pub ctx: Arc<CudaContext>,
    /// cuBLAS for prefill; `None` when the library is absent (the GEMV path serves).
    pub blas: Option<Blas>,
    pub info: DeviceInfo,
    pub arch: String,
    /// Each loaded kernel and its parameter count (where the driver reports it,
    /// 12.4+): a launch with another count is refused instead of reading garbage.
    funcs: HashMap<String, (sys::CUfunction, Option<usize>)>,
    modules: Vec<sys::CUmodule>,
    /// Every launch goes to this stream (blocking: it orders with the synchronous
    /// copies on the legacy stream).
    stream: sys::CUstream,
    /// While recording, launches are kept here instead of being issued.
    rec: Option<Vec<Launch>>,
    /// Graphs by the step's key (its shape: see `CudaRunner::forward`).
    graphs: HashMap<Vec<u64>, Graph>,
    reuse: Reuse,
    reuse_check: ReuseCheck,
    /// Graph capture off (`HANGAR_CUDA_GRAPHS=0`, or a capture failed once).
    graphs_off: bool,
    /// Programmatic dependent launch (sm_90+, unless `HANGAR_CUDA_PDL=0`): each kernel
    /// may be scheduled while the previous one drains (kernels/common.cuh `pdl_entry`).
    pdl: bool,
    /// `HANGAR_CUDA_PROFILE=1`: every launch between two events, times summed per
    /// kernel and printed when the runner is dropped (graphs off).
    profile: Option<Profile>,
    /// `HANGAR_CUDA_SKIP=a,b`: launches of these kernels are dropped. A diagnostic for
    /// timing runs only (what a step costs without them): the outputs are wrong.
    skip: Vec<String>,
}

#[derive(Default)]
struct Profile {
    pending: Vec<(String, sys::CUevent, sys::CUevent)>,
    /// kernel -> (launches, milliseconds)
    total: HashMap<String, (usize, f64)>,
}

// SAFETY: module and function handles belong to the context, which is bound to the
// calling thread before every use.
unsafe impl Send for Gpu {}

impl Gpu {
    /// Opens device `ordinal` and loads every kernel unit (compiled now, or from the cache).
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        let info = probe(ordinal)?;
        compile::nvrtc_available()?;
        let ctx = CudaContext::new(ordinal).map_err(drv("creating the context"))?;
        let (major, minor) = info.compute_capability;
        let arch = compile::arch_for(major, minor);
        ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        let stream = result::stream::create(result::stream::StreamKind::Default)
            .map_err(drv("cuStreamCreate"))?;
        let mut gpu = Gpu {
            ctx,
            info,
            arch,
            funcs: HashMap::new(),
            modules: Vec::new(),
            blas: None,
            stream,
            rec: None,
            graphs: HashMap::new(),
            reuse: match std::env::var("HANGAR_CUDA_REUSE").as_deref() {
                Ok("0") => Reuse::Off,
                Ok("check") => Reuse::Check,
                _ => Reuse::On,
            },
            reuse_check: ReuseCheck::default(),
            graphs_off: std::env::var("HANGAR_CUDA_GRAPHS").as_deref() == Ok("0"),
            pdl: major >= 9 && std::env::var("HANGAR_CUDA_PDL").as_deref() != Ok("0"),
            profile: None,
            skip: std::env::var("HANGAR_CUDA_SKIP")
                .map(|v| {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
        };
        if !gpu.skip.is_empty() {
            eprintln!(
                "warning: HANGAR_CUDA_SKIP: launches of {:?} are dropped, outputs are wrong",
                gpu.skip
            );
        }
        if std::env::var("HANGAR_CUDA_PROFILE").as_deref() == Ok("1") {
            gpu.profile = Some(Profile::default());
            gpu.graphs_off = true;
        }
        for unit in UNITS {
            let (cubin, _cached) = compile::cubin_cached(unit, &gpu.arch)?;
            gpu.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            // SAFETY: a complete CUBIN image produced by NVRTC.
            let module = unsafe { result::module::load_data(cubin.as_ptr().cast()) }
                .map_err(drv(format!("loading the {} kernels", unit.name)))?;
            gpu.modules.push(module);
        }
        if std::env::var_os("HANGAR_CUDA_NO_CUBLAS").is_none() {
            gpu.blas = Blas::open();
            if let Some(b) = &gpu.blas {
                // SAFETY: a live handle and stream of this context.
                let _ = unsafe { cudarc::cublas::result::set_stream(b.0, gpu.stream as _) };
            }
        }
        Ok(gpu)
    }

    /// Binds the context to the calling thread.
    pub fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))
    }

    /// The kernel called `name` in any loaded unit.
    pub fn func(&mut self, name: &str) -> Result<sys::CUfunction, CudaError> {
        self.func_params(name).map(|(f, _)| f)
    }

    /// The kernel called `name` and its parameter count, if the driver reports it.
    fn func_params(&mut self, name: &str) -> Result<(sys::CUfunction, Option<usize>), CudaError> {
        if let Some(&fp) = self.funcs.get(name) {
            return Ok(fp);
        }
        let cname = CString::new(name).map_err(|_| CudaError::Unsupported(name.into()))?;
        for &m in &self.modules {
            // SAFETY: `m` is a loaded module.
            if let Ok(f) = unsafe { result::module::get_function(m, cname.clone()) } {
                let fp = (f, self.param_count(f));
                self.funcs.insert(name.to_string(), fp);
                return Ok(fp);
            }
        }
        Err(CudaError::Driver {
            call: format!("cuModuleGetFunction({name})"),
            msg: "no such kernel in the loaded units".into(),
        })
    }

    /// Lets kernel `name` take up to `bytes` of dynamic shared memory (beyond the 48 KiB
    /// a launch gets without opting in) and asks for the largest shared-memory carveout.
    pub fn allow_shared(&mut self, name: &str, bytes: usize) -> Result<(), CudaError> {
        let f = self.func(name)?;
        use sys::CUfunction_attribute::*;
        for (attr, v) in [
            (
                CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            ),
            (CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100),
        ] {
            // SAFETY: a function handle of a loaded module; the values are in range
            // (bytes at most the device's opt-in limit, a percentage).
            unsafe { sys::cuFuncSetAttribute(f, attr, v) }
                .result()
                .map_err(drv(format!("cuFuncSetAttribute({name})")))?;
        }
        Ok(())
    }

    /// How many parameters kernel `f` takes, from cuFuncGetParamInfo (drivers of CUDA
    /// 12.4 and later); `None` where the driver cannot say or a parameter is wider
    /// than the 8-byte slots of [`Args`].
    fn param_count(&self, f: sys::CUfunction) -> Option<usize> {
        if self.info.driver_version < 12040 {
            return None;
        }
        let mut n = 0;
        while n < 256 {
            let (mut offset, mut size) = (0usize, 0usize);
            // SAFETY: `f` is a function handle of a loaded module; the outputs are locals.
            let r = unsafe { sys::cuFuncGetParamInfo(f, n, &mut offset, &mut size) };
            if r != sys::CUresult::CUDA_SUCCESS {
                break;
            }
            if size > 8 {
                return None;
            }
            n += 1;
        }
        Some(n)
    }

    /// Launches `name` on the stream (or records it, see [`Gpu::record`]).
    pub fn launch(
        &mut self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: Args,
    ) -> Result<(), CudaError> {
        self.launch_cluster(name, grid, block, smem, 0, args)
    }

    /// As [`Gpu::launch`], with the grid's x dimension in thread-block clusters of
    /// `cluster` CTAs (sm_90+; 0 launches without clusters).
    pub fn launch_cluster(
        &mut self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        cluster: u32,
        args: Args,
    ) -> Result<(), CudaError> {
        let (f, params) = self.func_params(name)?;
        if let Some(n) = params {
            if n != args.0.len() {
                return Err(CudaError::BadLaunch(format!(
                    "kernel {name} takes {n} arguments but the launch passes {}",
                    args.0.len()
                )));
            }
        }
        if self.skip.iter().any(|k| k == name) {
            return Ok(());
        }
        let l = Launch {
            func: f as usize,
            grid,
            block,
            smem,
            cluster,
            args: args.0,
        };
        if let Some(rec) = &mut self.rec {
            rec.push(l);
            return Ok(());
        }
        if self.profile.is_some() {
            return self.issue_timed(name, &l);
        }
        self.issue(&l).map_err(drv(format!("launching {name}")))
    }

    fn issue_timed(&mut self, name: &str, l: &Launch) -> Result<(), CudaError> {
        let a = self.event_now()?;
        self.issue(l).map_err(drv(format!("launching {name}")))?;
        let b = self.event_now()?;
        if let Some(p) = &mut self.profile {
            p.pending.push((name.to_string(), a, b));
        }
        Ok(())
    }

    /// Folds the finished launches' event times into the profile (after a sync).
    fn collect_profile(&mut self) {
        let Some(p) = &mut self.profile else {
            return;
        };
        for (name, a, b) in p.pending.drain(..) {
            // (The context was synchronized: both events have completed.)
            let ms = event_ms(a, b);
            let e = p.total.entry(name).or_default();
            e.0 += 1;
            e.1 += ms;
        }
    }

    fn issue(&self, l: &Launch) -> Result<(), result::DriverError> {
        let mut slots = l.args.clone();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: the kernel's parameters match the slots (each caller passes them in
        // the order and sizes of the kernel's signature); buffers are live device memory;
        // `func` is a function handle of a loaded module.
        if !self.pdl && l.cluster == 0 {
            return unsafe {
                result::launch_kernel(
                    l.func as sys::CUfunction,
                    l.grid,
                    l.block,
                    l.smem,
                    self.stream,
                    &mut params,
                )
            };
        }
        let mut attrs = Vec::with_capacity(2);
        if self.pdl {
            let mut a = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                // SAFETY: an all-zero union is a valid value of each of its plain fields.
                value: unsafe { std::mem::zeroed() },
            };
            a.value.programmaticStreamSerializationAllowed = 1;
            attrs.push(a);
        }
        if l.cluster > 0 {
            let mut a = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                pad: [0; 4],
                // SAFETY: as above.
                value: unsafe { std::mem::zeroed() },
            };
            a.value.clusterDim.x = l.cluster;
            a.value.clusterDim.y = 1;
            a.value.clusterDim.z = 1;
            attrs.push(a);
        }
        let cfg = sys::CUlaunchConfig {
            gridDimX: l.grid.0,
            gridDimY: l.grid.1,
            gridDimZ: l.grid.2,
            blockDimX: l.block.0,
            blockDimY: l.block.1,
            blockDimZ: l.block.2,
            sharedMemBytes: l.smem,
            hStream: self.stream,
            attrs: attrs.as_mut_ptr(),
            numAttrs: attrs.len() as u32,
        };
        // SAFETY: as above; `cfg` and `attrs` outlive the call.
        unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                l.func as sys::CUfunction,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
    }

    /// Queues a copy of `src` to device address `dst` on the stream.
    ///
    /// # Safety
    /// `dst` holds `src.len()` bytes, and `src` is page-locked memory that stays
    /// unchanged until the stream has passed the copy.
    pub unsafe fn htod_async(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        // SAFETY: as the caller guarantees.
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }
            .map_err(drv("cuMemcpyHtoDAsync"))
    }

    /// Queues a copy from device address `src` into `dst` on the stream.
    ///
    /// # Safety
    /// `src` holds `dst.len()` bytes, and `dst` is page-locked memory not read until
    /// the stream has passed the copy.
    pub unsafe fn dtoh_async(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        // SAFETY: as the caller guarantees.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream) }
            .map_err(drv("cuMemcpyDtoHAsync"))
    }

    /// An event recorded on the stream now, for [`event_ms`].
    pub fn event_now(&self) -> Result<sys::CUevent, CudaError> {
        let e = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map_err(drv("cuEventCreate"))?;
        // SAFETY: a fresh event of this context, recorded on our stream.
        unsafe { result::event::record(e, self.stream) }.map_err(drv("cuEventRecord"))?;
        Ok(e)
    }

    /// Whether launches use programmatic dependent launch.
    pub fn pdl(&self) -> bool {
        self.pdl
    }

    /// From now on launches are recorded, not issued, until [`Gpu::replay`]. The
    /// caller makes sure no buffer a recorded launch uses is freed before then.
    pub fn record(&mut self) -> bool {
        if self.graphs_off {
            return false;
        }
        self.rec = Some(Vec::with_capacity(512));
        true
    }

    /// Drops a recording left by a step that failed half-way.
    pub fn stop_recording(&mut self) {
        self.rec = None;
        self.reuse_check.pending = None;
    }

    /// Whether the graph recorded for `key` can run again without its launches being
    /// built: no device memory was allocated or freed since they were recorded, so
    /// every address in them is still the one the step would pass. The key must hold
    /// everything else the launches depend on. (`Reuse::Check` answers no and checks
    /// the rebuilt launches in [`Gpu::replay`].)
    pub fn has_current_graph(&mut self, key: &[u64]) -> bool {
        if self.graphs_off || self.reuse == Reuse::Off {
            return false;
        }
        let current = self
            .graphs
            .get(key)
            .is_some_and(|g| g.epoch == memory_epoch());
        if self.reuse == Reuse::Check {
            self.reuse_check.pending = Some(current);
            return false;
        }
        current
    }

    /// Launches the graph of `key` (see [`Gpu::has_current_graph`]).
    pub fn launch_graph(&mut self, key: &[u64]) -> Result<(), CudaError> {
        let g = self
            .graphs
            .get(key)
            .ok_or_else(|| CudaError::BadLaunch("no graph recorded for this step".into()))?;
        // SAFETY: an instantiated graph of this context, on its stream.
        unsafe { sys::cuGraphLaunch(g.exec, self.stream) }
            .result()
            .map_err(drv("cuGraphLaunch"))
    }

    /// Runs the recorded launches: as the graph captured for `key` when they equal its
    /// launches (only buffer contents changed), else captured into a new graph first.
    /// A failed capture turns graphs off and issues the launches one by one.
    pub fn replay(&mut self, key: &[u64]) -> Result<(), CudaError> {
        let Some(list) = self.rec.take() else {
            return Ok(());
        };
        let epoch = memory_epoch();
        if let Some(would_reuse) = self.reuse_check.pending.take() {
            if would_reuse {
                let c = &mut self.reuse_check;
                c.checked += 1;
                let same = self
                    .graphs
                    .get(key)
                    .is_some_and(|g| g.launches == list && g.epoch == epoch);
                if !same {
                    if c.differed == 0 {
                        eprintln!("warning: HANGAR_CUDA_REUSE=check: a step's rebuilt launches differ from the graph its key names");
                    }
                    c.differed += 1;
                }
            }
        }
        if let Some(g) = self.graphs.get_mut(key) {
            if g.launches == list {
                g.epoch = epoch;
                // SAFETY: an instantiated graph of this context, on its stream.
                return unsafe { sys::cuGraphLaunch(g.exec, self.stream) }
                    .result()
                    .map_err(drv("cuGraphLaunch"));
            }
        }
        match self.capture(&list) {
            Ok(exec) => {
                if self.graphs.len() >= MAX_GRAPHS {
                    self.clear_graphs();
                }
                if let Some(old) = self.graphs.insert(
                    key.to_vec(),
                    Graph {
                        launches: list,
                        exec,
                        epoch,
                    },
                ) {
                    // SAFETY: instantiated once, destroyed once (no launch uses it now:
                    // the stream is ordered).
                    let _ = unsafe { sys::cuGraphExecDestroy(old.exec) };
                }
                // SAFETY: as above.
                unsafe { sys::cuGraphLaunch(exec, self.stream) }
                    .result()
                    .map_err(drv("cuGraphLaunch"))
            }
            Err(e) => {
                eprintln!("warning: CUDA graph capture failed ({e}); launching kernels one by one from now on");
                self.graphs_off = true;
                for l in &list {
                    self.issue(l).map_err(drv("launching a recorded kernel"))?;
                }
                Ok(())
            }
        }
    }

    fn capture(&self, list: &[Launch]) -> Result<sys::CUgraphExec, result::DriverError> {
        // SAFETY: capture of this thread's launches on our own stream; the capture is
        // always ended, and the graph destroyed once instantiated.
        unsafe {
            sys::cuStreamBeginCapture_v2(
                self.stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED,
            )
            .result()?;
            let mut failed = None;
            for l in list {
                if let Err(e) = self.issue(l) {
                    failed = Some(e);
                    break;
                }
            }
            let mut graph: sys::CUgraph = std::ptr::null_mut();
            let ended = sys::cuStreamEndCapture(self.stream, &mut graph).result();
            if let Some(e) = failed {
                if !graph.is_null() {
                    sys::cuGraphDestroy(graph);
                }
                return Err(e);
            }
            ended?;
            let mut exec: sys::CUgraphExec = std::ptr::null_mut();
            let inst = sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0).result();
            sys::cuGraphDestroy(graph);
            inst.map(|()| exec)
        }
    }

    fn clear_graphs(&mut self) {
        for (_, g) in self.graphs.drain() {
            // SAFETY: instantiated once, destroyed once.
            let _ = unsafe { sys::cuGraphExecDestroy(g.exec) };
        }
    }

    /// Copies `out.len()` floats from device address `ptr` (after the work launched
    /// so far): the layer taps of `CudaRunner::execute_observed`.
    ///
    /// # Safety
    /// `ptr` must address at least `out.len()` floats of a live allocation.
    pub unsafe fn read_floats(&mut self, ptr: u64, out: &mut [f32]) -> Result<(), CudaError> {
        self.sync()?;
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: the caller guarantees the source's size.
        unsafe { result::memcpy_dtoh_sync(out, ptr) }.map_err(drv("cuMemcpyDtoH"))
    }

    /// Waits for all launched work; reports a kernel fault.
    pub fn sync(&mut self) -> Result<(), CudaError> {
        self.ctx.synchronize().map_err(drv("cuCtxSynchronize"))?;
        self.collect_profile();
        Ok(())
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        self.bind()?;
        result::mem_get_info().map_err(drv("cuMemGetInfo"))
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = self.ctx.synchronize();
        self.collect_profile();
        if self.reuse == Reuse::Check {
            let c = &self.reuse_check;
            eprintln!(
                "HANGAR_CUDA_REUSE=check: {} steps would have reused a graph; {} of them rebuilt other launches",
                c.checked, c.differed
            );
        }
        if let Some(p) = &self.profile {
            let mut rows: Vec<_> = p.total.iter().collect();
            rows.sort_by(|x, y| y.1 .1.total_cmp(&x.1 .1));
            let all: f64 = rows.iter().map(|r| r.1 .1).sum();
            eprintln!("HANGAR_CUDA_PROFILE: {all:.3} ms in kernels");
            for (name, (n, ms)) in rows {
                eprintln!(
                    "{name:<24} {n:>8} launches {ms:>10.3} ms {:>5.1}% {:>8.2} us each",
                    100.0 * ms / all.max(1e-9),
                    1000.0 * ms / *n as f64
                );
            }
        }
        self.clear_graphs();
        // SAFETY: created once, destroyed once, after the work on it finished.
        let _ = unsafe { sys::cuStreamDestroy_v2(self.stream) };
        if let Some(b) = self.blas.take() {
            // SAFETY: created once, destroyed once.
            let _ = unsafe { cudarc::cublas::result::destroy_handle(b.0) };
        }
        for &m in &self.modules {
            // SAFETY: loaded once, unloaded once.
            let _ = unsafe { result::module::unload(m) };
        }
    }
}
