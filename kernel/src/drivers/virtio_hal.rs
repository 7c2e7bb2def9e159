//! What `virtio-drivers` needs from the kernel: DMA memory, device registers, and the physical
//! address of a buffer.
//!
//! DMA memory is contiguous unmovable pages from the buddy allocator, reached through the direct
//! map, so a buffer's physical address is its direct-map address minus the offset. Drivers give
//! the queues only direct-mapped buffers (pages they allocated); a heap buffer, which may span
//! discontiguous pages, is refused loudly.

use crate::mm::frame::Owner;
use crate::mm::page_alloc::{self, AllocRequest, Pages};
use crate::mm::{PAGE_SIZE, paging};
use core::ptr::NonNull;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

pub struct KernelHal;

fn order_for(pages: usize) -> u8 {
    pages.max(1).next_power_of_two().trailing_zeros() as u8
}

/// Whether `[virt, virt + len)` lies in the direct map of RAM.
fn is_direct_mapped(virt: u64, len: u64) -> bool {
    let end_pfn = page_alloc::all_zones()
        .last()
        .map_or(0, |zone| zone.end_pfn);
    let phys_end = end_pfn * PAGE_SIZE;
    virt >= boot::DIRECT_MAP_BASE && virt + len <= boot::DIRECT_MAP_BASE + phys_end
}

// SAFETY: `dma_alloc` returns zeroed, contiguous pages owned by the caller until `dma_dealloc`;
// `mmio_phys_to_virt` maps device registers uncached; `share` returns the true physical address
// of a contiguous direct-mapped buffer (and refuses anything else), and the CPU is
// cache-coherent with devices, so `share`/`unshare` need no copies or flushes.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let request = AllocRequest::new(order_for(pages))
            .zeroed()
            .owner(Owner::Device);
        let Some(block) = page_alloc::alloc(request) else {
            // virtio-drivers cannot take a failure here; queues are created at driver start.
            panic!("virtio: no memory for {pages} DMA pages");
        };
        let virt = NonNull::new(block.virt() as *mut u8).expect("direct-map address");
        // virtio-drivers owns the region until `dma_dealloc`.
        (block.into_raw() * PAGE_SIZE, virt)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the trait's contract: `paddr` and `pages` are what `dma_alloc` returned,
        // whose handle it gave up, and the region is no longer used by the driver or device.
        let block = unsafe { Pages::from_raw(paddr / PAGE_SIZE, order_for(pages)) };
        match page_alloc::free(block) {
            Ok(()) => 0,
            Err(_) => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let virt = paging::map_mmio(paddr, size as u64).unwrap_or_else(|error| {
            panic!("virtio: cannot map registers at {paddr:#x}: {error:?}")
        });
        NonNull::new(virt as *mut u8).expect("direct-map address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let virt = buffer.as_ptr() as *mut u8 as u64;
        assert!(
            is_direct_mapped(virt, buffer.len() as u64),
            "virtio: buffer at {virt:#x} is not in the direct map"
        );
        virt - boot::DIRECT_MAP_BASE
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
