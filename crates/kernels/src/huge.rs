//! Heap memory for packed weights, backed by transparent huge pages.
//!
//! Why: a decode step streams every packed matrix once. In 4 KiB pages the 60 MB of
//! Gemma 3 270M's layer matrices are ~15 000 pages, far more than the TLB holds, so
//! every page costs a page walk each step; in 2 MiB pages they are ~30. A huge page
//! only backs a 2 MiB-aligned range the allocation covers whole, so matrices smaller
//! than that (most layer matrices of small models) share 32 MiB slabs, carved
//! 64-byte aligned in allocation order (`layers_bench`: the layer products of a decode
//! step at 16 rows 7.1-7.4 -> 6.6-6.9 ms). Large matrices get a slab of their own:
//! packing a 180 MB output matrix then takes ~90 page faults instead of ~45 000.
//!
//! A slab is freed when the last buffer carved from it is dropped.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

/// Bytes per shared slab; buffers of at least half this get their own.
const SLAB: usize = 32 << 20;
const HUGE_PAGE: usize = 2 << 20;

struct Slab {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: plain bytes; each buffer carved from a slab covers a disjoint range.
unsafe impl Send for Slab {}
unsafe impl Sync for Slab {}

impl Slab {
    fn new(size: usize) -> Arc<Slab> {
        let layout = Layout::from_size_align(size.max(64), HUGE_PAGE)
            .expect("packed matrix size fits the address space");
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(p) else {
            std::alloc::handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        // SAFETY: the range is our own allocation; the advice is only a hint.
        unsafe {
            libc::madvise(p as *mut libc::c_void, layout.size(), libc::MADV_HUGEPAGE);
        }
        Arc::new(Slab { ptr, layout })
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The slab small buffers are carved from, and the bytes of it already handed out.
static OPEN: Mutex<Option<(Weak<Slab>, usize)>> = Mutex::new(None);

/// `len` bytes (a multiple of 64 at least as large; the padding is zeroed) in
/// huge-page-backed memory, 64-byte aligned. The other bytes are uninitialised: every
/// byte is written by the packing code before it is read.
pub(crate) struct HugeBuf {
    ptr: NonNull<u8>,
    len: usize,
    _slab: Arc<Slab>,
}

// SAFETY: plain bytes, written only during packing (through disjoint ranges).
unsafe impl Send for HugeBuf {}
unsafe impl Sync for HugeBuf {}

impl HugeBuf {
    pub(crate) fn new(len: usize) -> Self {
        let padded = len.max(64).next_multiple_of(64);
        let (slab, at) = if padded >= SLAB / 2 {
            (Slab::new(padded), 0)
        } else {
            let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
            let current = open
                .as_ref()
                .and_then(|(w, used)| Some((w.upgrade()?, *used)))
                .filter(|(_, used)| used + padded <= SLAB);
            let (slab, at) = current.unwrap_or_else(|| (Slab::new(SLAB), 0));
            *open = Some((Arc::downgrade(&slab), at + padded));
            (slab, at)
        };
        // SAFETY: `at + padded` is inside the slab (checked above, or a slab of its own).
        let p = unsafe { slab.ptr.as_ptr().add(at) };
        // SAFETY: the padding is inside this buffer's range.
        unsafe { std::ptr::write_bytes(p.add(len), 0, padded - len) };
        HugeBuf {
            // SAFETY: an offset into a non-null allocation.
            ptr: unsafe { NonNull::new_unchecked(p) },
            len: padded,
            _slab: slab,
        }
    }
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_share_a_slab_without_overlap_and_large_ones_own_one() {
        let bufs: Vec<HugeBuf> = [100usize, 64, 1, 5000, 3 << 20, 7]
            .iter()
            .map(|&n| HugeBuf::new(n))
            .collect();
        let mut ranges: Vec<(usize, usize)> = bufs
            .iter()
            .map(|b| (b.as_ptr() as usize, b.as_ptr() as usize + b.len()))
            .collect();
        for b in &bufs {
            assert_eq!(b.as_ptr() as usize % 64, 0);
            assert_eq!(b.len() % 64, 0);
        }
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "buffers overlap: {w:?}");
        }
        let big = HugeBuf::new(SLAB);
        assert_eq!(big.as_ptr() as usize % HUGE_PAGE, 0);
        // Writing every byte of every buffer stays inside its allocation (run under
        // Miri or ASan this would catch an overrun).
        for b in bufs.iter().chain([&big]) {
            unsafe { std::ptr::write_bytes(b.as_ptr() as *mut u8, 0xab, b.len()) };
        }
    }
}
