//! The kernel heap: `linked_list_allocator` behind interrupt-safe locks, as the global
//! allocator. A fixed bootstrap region serves allocations before the page allocator exists;
//! after that, the heap grows in chunks mapped from the page allocator and gives a chunk's
//! pages back as soon as nothing in it is allocated any more.
//!
//! Owns the heap's memory and its virtual range (64 GiB from `0xffff_d000_0000_0000`, cut into
//! 2048 slots of 32 MiB; a chunk takes one slot, or several for an allocation larger than a
//! slot). Growth takes pages like any other allocation, so under pressure it goes through
//! deflate-on-OOM, and it stops at the zones' min watermark. Shrinking keeps one empty chunk
//! as a spare, so a heap that breathes around a chunk boundary does not map and unmap on every
//! allocation. Running out (no pages, or the range is full) logs an error and makes the
//! allocation return null, which Rust turns into a panic naming the size that failed: a clear
//! error, never a hang. Paths that can fail cleanly ask for room first with [`reserve`].
//!
//! Lock order: the heap's locks come after address spaces, the reverse map and the balloon,
//! and before the kernel page tables, the per-CPU cache, the zones and the scheduler (see
//! [`crate::sync`]): growing and shrinking take those, so none of them may use the heap.

use super::PAGE_SIZE;
use super::frame::Owner;
use super::page_alloc::{self, AllocRequest};
use crate::sync::{IrqMutex, LockClass};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use linked_list_allocator::Heap;

/// Allocations served since boot (tests use it to prove a path allocates nothing).
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Size of the bootstrap heap region (in `.noinit`: the heap needs no zeroed memory, and
/// zeroing 8 MiB at boot took 10 ms under TCG).
pub const BOOTSTRAP_HEAP_SIZE: usize = 8 * 1024 * 1024;

#[repr(C, align(4096))]
struct BootstrapRegion([u8; BOOTSTRAP_HEAP_SIZE]);

#[unsafe(link_section = ".noinit.bootstrap_heap")]
static mut BOOTSTRAP_REGION: BootstrapRegion = BootstrapRegion([0; BOOTSTRAP_HEAP_SIZE]);

/// Where the grown heap lives, and how large it may become.
const GROWN_HEAP_START: u64 = 0xffff_d000_0000_0000;
const GROWN_HEAP_MAX: u64 = 64 << 30;
/// Virtual room per slot; a chunk starts at a slot's start.
const SLOT_BYTES: u64 = 32 << 20;
const SLOTS: usize = (GROWN_HEAP_MAX / SLOT_BYTES) as usize;
/// The smallest chunk (a larger allocation gets a chunk of its own size).
pub const CHUNK_BYTES: u64 = 1 << 20;
/// A chunk's pages come in blocks of up to this order (1 MiB).
const CHUNK_ORDER: u8 = 8;
/// Room a chunk's allocator needs beyond the allocation it was made for.
const CHUNK_SLACK: u64 = 256;

/// One piece of the grown heap: mapped pages with an allocator of their own.
struct Chunk {
    heap: Heap,
    start: u64,
    /// Bytes mapped from `start`.
    bytes: u64,
}

struct GrownHeap {
    /// Chunks by their first slot.
    chunks: [Option<Chunk>; SLOTS],
    /// For each slot: 1 + the first slot of the chunk covering it, or 0 (free).
    owner: [u16; SLOTS],
    /// First slots of live chunks, in no order.
    live: [u16; SLOTS],
    live_count: usize,
    /// The chunk that served the last allocation (tried first).
    hint: Option<usize>,
    /// An empty chunk kept instead of being given back.
    spare: Option<usize>,
    /// Bytes mapped in all chunks.
    mapped: u64,
    /// Chunks made and given back since boot.
    chunks_made: u64,
    chunks_released: u64,
}

pub struct KernelHeap {
    bootstrap: IrqMutex<Heap>,
    grown: IrqMutex<GrownHeap>,
}

#[global_allocator]
static KERNEL_HEAP: KernelHeap = KernelHeap {
    bootstrap: IrqMutex::with_class(Heap::empty(), LockClass::Heap),
    grown: IrqMutex::with_class(
        GrownHeap {
            chunks: [const { None }; SLOTS],
            owner: [0; SLOTS],
            live: [0; SLOTS],
            live_count: 0,
            hint: None,
            spare: None,
            mapped: 0,
            chunks_made: 0,
            chunks_released: 0,
        },
        LockClass::Heap,
    ),
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

/// Why the heap could not grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapError {
    /// The page allocator (and the balloon) had no page left.
    OutOfMemory,
    /// The heap's virtual range has no room for a chunk this large.
    RangeFull,
}

impl GrownHeap {
    /// Maps a chunk of at least `bytes` (a page multiple, at least [`CHUNK_BYTES`]).
    fn make_chunk(&mut self, bytes: u64) -> Result<usize, HeapError> {
        let bytes = bytes.max(CHUNK_BYTES).next_multiple_of(PAGE_SIZE);
        // More than all free memory and the balloon together can never be had: refuse before
        // taking (and then giving back) every page there is.
        let obtainable = page_alloc::free_pages() + crate::drivers::balloon::stats().actual_pages;
        if bytes / PAGE_SIZE > obtainable {
            return Err(HeapError::OutOfMemory);
        }
        let slots = bytes.div_ceil(SLOT_BYTES) as usize;
        let first = (0..=SLOTS.saturating_sub(slots))
            .find(|&first| self.owner[first..first + slots].iter().all(|&o| o == 0))
            .ok_or(HeapError::RangeFull)?;
        let start = GROWN_HEAP_START + first as u64 * SLOT_BYTES;
        // In blocks as large as fit (up to a chunk's 1 MiB, order 8), so that the heap's
        // unmovable pages come in few places instead of single pages sprinkled over movable
        // pageblocks (which compaction could never empty); single pages when memory is short.
        let mut mapped = 0;
        while mapped < bytes {
            let left = (bytes - mapped) / PAGE_SIZE;
            let largest = (63 - left.leading_zeros()).min(CHUNK_ORDER as u32) as u8;
            let Some(block) = (0..=largest).rev().find_map(|order| {
                page_alloc::alloc(
                    AllocRequest::new(order)
                        .owner(Owner::Heap)
                        .without_compaction(order > 0),
                )
            }) else {
                break;
            };
            if super::paging::map_kernel_pages(start + mapped, &block).is_err() {
                break;
            }
            mapped += block.bytes();
            // The heap's range owns the block now: `unmap_and_free` gives it back.
            block.into_raw();
        }
        if mapped < bytes {
            unmap_and_free(start, mapped);
            return Err(HeapError::OutOfMemory);
        }
        let mut heap = Heap::empty();
        // SAFETY: [start, start + bytes) was just mapped to pages owned by the heap alone and
        // lies in a free part of the heap's range.
        unsafe { heap.init(start as *mut u8, bytes as usize) };
        self.chunks[first] = Some(Chunk { heap, start, bytes });
        for owner in &mut self.owner[first..first + slots] {
            *owner = first as u16 + 1;
        }
        self.live[self.live_count] = first as u16;
        self.live_count += 1;
        self.mapped += bytes;
        self.chunks_made += 1;
        Ok(first)
    }

    /// Unmaps a chunk and gives its pages back.
    fn release_chunk(&mut self, first: usize) {
        let Some(chunk) = self.chunks[first].take() else {
            return;
        };
        let slots = chunk.bytes.div_ceil(SLOT_BYTES) as usize;
        for owner in &mut self.owner[first..first + slots] {
            *owner = 0;
        }
        if let Some(at) = self.live[..self.live_count]
            .iter()
            .position(|&live| live as usize == first)
        {
            self.live_count -= 1;
            self.live[at] = self.live[self.live_count];
        }
        if self.hint == Some(first) {
            self.hint = None;
        }
        if self.spare == Some(first) {
            self.spare = None;
        }
        self.mapped -= chunk.bytes;
        self.chunks_released += 1;
        unmap_and_free(chunk.start, chunk.bytes);
    }

    fn allocate_in(&mut self, first: usize, layout: Layout) -> Option<*mut u8> {
        let chunk = self.chunks[first].as_mut()?;
        let ptr = chunk.heap.allocate_first_fit(layout).ok()?;
        self.hint = Some(first);
        if self.spare == Some(first) {
            self.spare = None;
        }
        Some(ptr.as_ptr())
    }

    fn allocate(&mut self, layout: Layout) -> *mut u8 {
        if let Some(ptr) = self.hint.and_then(|hint| self.allocate_in(hint, layout)) {
            return ptr;
        }
        for at in 0..self.live_count {
            let first = self.live[at] as usize;
            if let Some(ptr) = self.allocate_in(first, layout) {
                return ptr;
            }
        }
        let bytes = layout.size() as u64 + layout.align() as u64 + CHUNK_SLACK;
        match self.make_chunk(bytes) {
            Ok(first) => self
                .allocate_in(first, layout)
                .unwrap_or(core::ptr::null_mut()),
            Err(error) => {
                log::error!(
                    "kernel heap: cannot grow for {} bytes: {error:?} ({} KiB mapped)",
                    layout.size(),
                    self.mapped >> 10
                );
                core::ptr::null_mut()
            }
        }
    }

    /// Frees a block of the grown heap; gives its chunk back once the chunk is empty (keeping
    /// one empty chunk of the smallest size as a spare).
    ///
    /// # Safety
    /// `ptr` was returned by [`Self::allocate`] with `layout` and is not used after.
    unsafe fn deallocate(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let slot = ((ptr.as_ptr() as u64 - GROWN_HEAP_START) / SLOT_BYTES) as usize;
        let Some(first) = self
            .owner
            .get(slot)
            .and_then(|&o| (o as usize).checked_sub(1))
        else {
            log::error!("kernel heap: free of {ptr:p} outside every chunk");
            return;
        };
        let Some(chunk) = self.chunks[first].as_mut() else {
            return;
        };
        // SAFETY: forwarded from the caller; the block lies in this chunk (its slot says so).
        unsafe { chunk.heap.deallocate(ptr, layout) };
        if chunk.heap.used() != 0 {
            return;
        }
        let small = chunk.bytes == CHUNK_BYTES;
        match self.spare {
            None if small => self.spare = Some(first),
            Some(spare) if spare == first => {}
            _ => self.release_chunk(first),
        }
    }
}

/// Unmaps `bytes` of the heap from `start` and frees their blocks (each once, by its head).
fn unmap_and_free(start: u64, bytes: u64) {
    super::paging::unmap_kernel_range(start, bytes / PAGE_SIZE, |pfn| {
        let Some(zone) = page_alloc::zone_of(pfn) else {
            return;
        };
        let head = zone.frame(pfn);
        if head.state() != super::frame::FrameState::Allocated {
            return; // a tail of a block freed by its head
        }
        // SAFETY: the head of a block the heap mapped here and gave up its handle for (see
        // `grow`); the range is unmapped now, so nothing else reaches or owns it.
        let block = unsafe { page_alloc::Pages::from_raw(pfn, head.order()) };
        if let Err(error) = page_alloc::free(block) {
            log::error!("kernel heap: giving back block {pfn:#x}: {error:?}");
        }
    });
}

// SAFETY: every allocation comes from `linked_list_allocator`, which returns blocks that fit the
// layout and do not overlap, from memory owned by the bootstrap region or one chunk of the grown
// heap; the locks make each heap exclusive across threads and interrupts, and a chunk is given
// back only when nothing in it is allocated.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        if let Ok(ptr) = self.bootstrap.lock().allocate_first_fit(layout) {
            return ptr.as_ptr();
        }
        if !page_alloc::is_initialised() {
            return core::ptr::null_mut();
        }
        self.grown.lock().allocate(layout)
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
                self.grown.lock().deallocate(nonnull, layout)
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
    /// Bytes of the grown heap (pages mapped from the page allocator now).
    pub grown: usize,
    /// Chunks of the grown heap now, made since boot, and given back since boot.
    pub chunks: usize,
    pub chunks_made: u64,
    pub chunks_released: u64,
    /// Allocations since boot.
    pub allocations: u64,
}

pub fn stats() -> HeapStats {
    // One heap lock at a time (the lock order allows no two).
    let (boot_size, boot_used, boot_free) = {
        let bootstrap = KERNEL_HEAP.bootstrap.lock();
        (bootstrap.size(), bootstrap.used(), bootstrap.free())
    };
    let grown = KERNEL_HEAP.grown.lock();
    let (size, used, free) =
        grown
            .chunks
            .iter()
            .flatten()
            .fold((0, 0, 0), |(size, used, free), chunk| {
                (
                    size + chunk.heap.size(),
                    used + chunk.heap.used(),
                    free + chunk.heap.free(),
                )
            });
    HeapStats {
        size: boot_size + size,
        used: boot_used + used,
        free: boot_free + free,
        grown: grown.mapped as usize,
        chunks: grown.live_count,
        chunks_made: grown.chunks_made,
        chunks_released: grown.chunks_released,
        allocations: ALLOCATIONS.load(Relaxed),
    }
}
