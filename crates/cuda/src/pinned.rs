//! Page-locked host staging for a step's small uploads and its logits copy back
//! (on unless `HANGAR_CUDA_PINNED=0`; run 49: the same device-check figures, 8B
//! tg128 +3-7% and 1B +3-6% alternated in one call, the host's share of a step
//! 191 us against 324). A copy from pageable
//! memory goes through the driver's own bounce buffer and holds the host until it is
//! done; from page-locked memory it is a DMA transfer queued on the runner's stream,
//! ahead of the step's kernels. Run 48 left 0.68 ms of a 3.0 ms 8B token outside
//! the GEMVs, part of it host time in which the GPU waits.

use crate::gpu::Gpu;
use crate::CudaError;
use cudarc::driver::result;

/// A grow-only page-locked buffer.
struct HostBuf {
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: page-locked host memory is plain memory, usable from any thread; the runner
// that owns it is used by one thread at a time.
unsafe impl Send for HostBuf {}

impl HostBuf {
    const fn empty() -> Self {
        HostBuf {
            ptr: std::ptr::null_mut(),
            bytes: 0,
        }
    }

    /// At least `bytes`, reallocated (contents lost) when smaller. The caller makes
    /// sure no queued copy still reads or writes the old memory.
    fn reserve(&mut self, gpu: &Gpu, bytes: usize) -> Result<(), CudaError> {
        if self.bytes >= bytes {
            return Ok(());
        }
        self.free(gpu);
        let bytes = bytes.next_power_of_two().max(4096);
        gpu.bind()?;
        // SAFETY: a plain page-locked allocation; freed once in `free`.
        let p = unsafe { result::malloc_host(bytes, 0) }.map_err(|e| CudaError::Driver {
            call: format!("cuMemHostAlloc({bytes} bytes)"),
            msg: format!("{e:?}"),
        })?;
        self.ptr = p.cast();
        self.bytes = bytes;
        Ok(())
    }

    fn free(&mut self, gpu: &Gpu) {
        if !self.ptr.is_null() {
            let _ = gpu.bind();
            // SAFETY: allocated by malloc_host, freed once (the pointer is cleared).
            let _ = unsafe { result::free_host(self.ptr.cast()) };
        }
        self.ptr = std::ptr::null_mut();
        self.bytes = 0;
    }
}

/// The staging of one runner: uploads packed one after another into `up` (reset at
/// each step, after the previous step's sync), and `down` for the logits.
pub(crate) struct Pinned {
    up: HostBuf,
    used: usize,
    down: HostBuf,
}

/// Uploads are placed at 16-byte boundaries.
const ALIGN: usize = 16;

impl Pinned {
    pub fn from_env() -> Option<Self> {
        (std::env::var("HANGAR_CUDA_PINNED").as_deref() != Ok("0")).then(|| Pinned {
            up: HostBuf::empty(),
            used: 0,
            down: HostBuf::empty(),
        })
    }

    /// Starts a step that uploads at most `bytes` (each upload rounded up to
    /// [`ALIGN`]). A step that ended early (an error before its sync) may have left
    /// copies queued from the staging: they are waited for first.
    pub fn begin(&mut self, gpu: &mut Gpu, bytes: usize) -> Result<(), CudaError> {
        if self.used > 0 {
            gpu.sync()?;
        }
        self.used = 0;
        self.up.reserve(gpu, bytes)
    }

    /// The step's sync returned: every queued copy from the staging is done.
    pub fn done(&mut self) {
        self.used = 0;
    }

    /// The bytes [`Pinned::begin`] needs for uploads of these sizes.
    pub fn room(sizes: &[usize]) -> usize {
        sizes.iter().map(|s| s.next_multiple_of(ALIGN)).sum()
    }

    /// Queues a copy of `data` to device address `dst` on the stream, through the
    /// staging (the step reserved room for it in [`Pinned::begin`]).
    pub fn upload<T: Copy>(&mut self, gpu: &Gpu, dst: u64, data: &[T]) -> Result<(), CudaError> {
        let n = std::mem::size_of_val(data);
        if n == 0 {
            return Ok(());
        }
        let at = self.used;
        if at + n > self.up.bytes {
            return Err(CudaError::BadBatch(format!(
                "pinned staging of {} bytes is too small for {} more at {at}",
                self.up.bytes, n
            )));
        }
        // SAFETY: the staging holds `at + n` bytes, `data` is `n` plain bytes, and the
        // two do not overlap (the staging is our own allocation).
        let staged = unsafe {
            let p = self.up.ptr.add(at);
            std::ptr::copy_nonoverlapping(data.as_ptr().cast::<u8>(), p, n);
            std::slice::from_raw_parts(p, n)
        };
        self.used = (at + n).next_multiple_of(ALIGN);
        // SAFETY: `dst` holds `n` bytes (the caller sized it); the staged bytes stay
        // untouched until the step's sync (the next `begin`).
        unsafe { gpu.htod_async(dst, staged) }
    }

    /// Appends `n` floats from device address `src` to `out` (after the work queued
    /// so far), through the page-locked `down` buffer.
    pub fn download_append(
        &mut self,
        gpu: &mut Gpu,
        src: u64,
        n: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let bytes = n * std::mem::size_of::<f32>();
        self.down.reserve(gpu, bytes)?;
        // SAFETY: `down` holds at least `bytes` bytes, page-aligned (so aligned for
        // f32); the copy lands before the sync returns, and only then are they read.
        unsafe {
            let staged = std::slice::from_raw_parts_mut(self.down.ptr, bytes);
            gpu.dtoh_async(staged, src)?;
            gpu.sync()?;
            out.extend_from_slice(std::slice::from_raw_parts(self.down.ptr.cast::<f32>(), n));
        }
        Ok(())
    }

    /// Frees the page-locked memory (the runner calls this before its context goes).
    pub fn release(&mut self, gpu: &Gpu) {
        self.up.free(gpu);
        self.down.free(gpu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_rounds_each_upload_to_its_boundary() {
        assert_eq!(Pinned::room(&[]), 0);
        assert_eq!(Pinned::room(&[4]), 16);
        assert_eq!(Pinned::room(&[16, 17, 0]), 48);
    }
}
