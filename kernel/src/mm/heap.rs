//! The kernel heap: `linked_list_allocator` behind interrupt-safe locks, as the global
//! allocator. A fixed bootstrap region serves allocations before the page allocator exists;
//! after that, a second heap grows in its own virtual range by mapping unmovable pages from the
//! page allocator.
//!
//! Owns the heap's memory and its virtual range. Running out (no pages, or the range is full)
//! logs an error and makes the allocation return null, which Rust turns into a panic naming the
//! size that failed: a clear error, never a hang. The grown heap does not shrink yet.

use super::PAGE_SIZE;
use super::frame::Owner;
use super::page_alloc::{self, AllocRequest};
use crate::sync::IrqMutex;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use linked_list_allocator::Heap;

/// Size of the bootstrap heap region (in `.noinit`: the heap needs no zeroed memory, and
/// zeroing 8 MiB at boot took 10 ms under TCG).
pub const BOOTSTRAP_HEAP_SIZE: usize = 8 * 1024 * 1024;

#[repr(C, align(4096))]
struct BootstrapRegion([u8; BOOTSTRAP_HEAP_SIZE]);

#[unsafe(link_section = ".noinit.bootstrap_heap")]
static mut BOOTSTRAP_REGION: BootstrapRegion = BootstrapRegion([0; BOOTSTRAP_HEAP_SIZE]);

/// Where the growable heap lives, and how large it may become.
const GROWN_HEAP_START: u64 = 0xffff_d000_0000_0000;
const GROWN_HEAP_MAX: u64 = 64 << 30;
/// The heap grows by at least this much at a time.
const GROW_STEP: u64 = 256 * 1024;

struct GrownHeap {
    heap: Heap,
    /// Bytes mapped from GROWN_HEAP_START.
    mapped: u64,
}

pub struct KernelHeap {
    bootstrap: IrqMutex<Heap>,
    grown: IrqMutex<GrownHeap>,
}

#[global_allocator]
static KERNEL_HEAP: KernelHeap = KernelHeap {
    bootstrap: IrqMutex::new(Heap::empty()),
    grown: IrqMutex::new(GrownHeap {
        heap: Heap::empty(),
        mapped: 0,
    }),
};

/// Gives the heap its bootstrap region. Allocation before this fails (returns null).
pub fn init() {
    let mut heap = KERNEL_HEAP.bootstrap.lock();
    if heap.size() == 0 {
        let region = (&raw mut BOOTSTRAP_REGION).cast::<u8>();
        // SAFETY: the bootstrap region is a static used by nothing but this heap, and this runs
        // once (the size check) so the region is handed over exactly once.
        unsafe { heap.init(region, BOOTSTRAP_HEAP_SIZE) };
    }
}

fn in_bootstrap_region(ptr: *mut u8) -> bool {
    let start = (&raw const BOOTSTRAP_REGION) as usize;
    (start..start + BOOTSTRAP_HEAP_SIZE).contains(&(ptr as usize))
}

impl GrownHeap {
    /// Maps at least `bytes` more at the top of the heap; false (logged) if it cannot.
    fn grow(&mut self, bytes: u64) -> bool {
        let bytes = bytes.max(GROW_STEP).next_multiple_of(PAGE_SIZE);
        if self.mapped + bytes > GROWN_HEAP_MAX {
            log::error!(
                "kernel heap: its {} GiB virtual range is full",
                GROWN_HEAP_MAX >> 30
            );
            return false;
        }
        let free_bytes = page_alloc::free_pages() * PAGE_SIZE;
        if bytes >= free_bytes {
            log::error!(
                "kernel heap: cannot grow by {bytes} bytes: {free_bytes} bytes of memory are free"
            );
            return false;
        }
        let mut added = 0;
        while added < bytes {
            let virt = GROWN_HEAP_START + self.mapped + added;
            let Some(page) = page_alloc::alloc(AllocRequest::new(0).owner(Owner::Heap)) else {
                break;
            };
            if super::paging::map_kernel_pages(virt, page).is_err() {
                let _ = page_alloc::free(page);
                break;
            }
            added += PAGE_SIZE;
        }
        if added == 0 {
            log::error!("kernel heap: no memory to grow by {bytes} bytes");
            return false;
        }
        if self.mapped == 0 {
            // SAFETY: [GROWN_HEAP_START, +added) was just mapped to pages owned by the heap.
            unsafe { self.heap.init(GROWN_HEAP_START as *mut u8, added as usize) };
        } else {
            // SAFETY: the new pages were mapped right above the heap's current top.
            unsafe { self.heap.extend(added as usize) };
        }
        self.mapped += added;
        true
    }
}

// SAFETY: every allocation comes from `linked_list_allocator`, which returns blocks that fit the
// layout and do not overlap, from memory owned by one of the two heaps; the locks make each
// heap exclusive across threads and interrupts.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Ok(ptr) = self.bootstrap.lock().allocate_first_fit(layout) {
            return ptr.as_ptr();
        }
        if !page_alloc::is_initialised() {
            return core::ptr::null_mut();
        }
        let mut grown = self.grown.lock();
        loop {
            if let Ok(ptr) = grown.heap.allocate_first_fit(layout) {
                return ptr.as_ptr();
            }
            let needed = (layout.size() + layout.align() + 64) as u64;
            if !grown.grow(needed) {
                return core::ptr::null_mut();
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(nonnull) = NonNull::new(ptr) else {
            return;
        };
        // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with this `layout`, from the
        // heap whose range holds it.
        unsafe {
            if in_bootstrap_region(ptr) {
                self.bootstrap.lock().deallocate(nonnull, layout)
            } else {
                self.grown.lock().heap.deallocate(nonnull, layout)
            }
        }
    }
}

/// Heap usage in bytes (both regions).
#[derive(Clone, Copy, Debug)]
pub struct HeapStats {
    pub size: usize,
    pub used: usize,
    pub free: usize,
    /// Bytes of the grown region (pages mapped from the page allocator).
    pub grown: usize,
}

pub fn stats() -> HeapStats {
    let bootstrap = KERNEL_HEAP.bootstrap.lock();
    let grown = KERNEL_HEAP.grown.lock();
    HeapStats {
        size: bootstrap.size() + grown.heap.size(),
        used: bootstrap.used() + grown.heap.used(),
        free: bootstrap.free() + grown.heap.free(),
        grown: grown.mapped as usize,
    }
}
