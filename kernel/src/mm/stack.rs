//! Kernel thread stacks: 32 KiB of unmovable pages each, mapped in a slot of their own virtual
//! range with an unmapped guard page below, so an overflow faults instead of corrupting memory.
//!
//! Owns the stack virtual range. A [`KernelStack`] frees its pages and slot when dropped.

use super::PAGE_SIZE;
use super::frame::Owner;
use super::page_alloc::{self, AllocRequest, Pages};
use super::paging;
use crate::sync::IrqMutex;
use alloc::vec::Vec;

const STACK_AREA: u64 = 0xffff_e000_0000_0000;
/// Virtual size of a slot: the guard page, the stack, and unmapped room.
const SLOT_SIZE: u64 = 64 * 1024;
const MAX_SLOTS: u64 = 1 << 20;
/// Stack size: 2^3 pages.
pub const STACK_ORDER: u8 = 3;
pub const STACK_BYTES: usize = (PAGE_SIZE as usize) << STACK_ORDER;

struct Slots {
    next: u64,
    free: Vec<u64>,
}

static SLOTS: IrqMutex<Slots> = IrqMutex::new(Slots {
    next: 0,
    free: Vec::new(),
});

pub struct KernelStack {
    slot: u64,
    pages: Pages,
}

impl KernelStack {
    /// A fresh stack, or `None` (logged) when memory or slots are exhausted.
    pub fn new() -> Option<KernelStack> {
        let pages = page_alloc::alloc(AllocRequest::new(STACK_ORDER).owner(Owner::Stack));
        let Some(pages) = pages else {
            log::error!("kernel stack: no memory for {STACK_BYTES} bytes");
            return None;
        };
        let slot = {
            let mut slots = SLOTS.lock();
            slots.free.pop().or_else(|| {
                let slot = slots.next;
                (slot < MAX_SLOTS).then(|| {
                    slots.next += 1;
                    slot
                })
            })
        };
        let Some(slot) = slot else {
            log::error!("kernel stack: all {MAX_SLOTS} stack slots in use");
            return None;
        };
        let stack = KernelStack { slot, pages };
        if let Err(error) = paging::map_kernel_pages(stack.bottom(), &stack.pages) {
            log::error!("kernel stack: cannot map: {error:?}");
            return None;
        }
        Some(stack)
    }

    /// Lowest address of the stack (the guard page is just below).
    pub fn bottom(&self) -> u64 {
        STACK_AREA + self.slot * SLOT_SIZE + PAGE_SIZE
    }

    pub fn guard_page(&self) -> u64 {
        self.bottom() - PAGE_SIZE
    }

    /// The stack's memory as words (to write a new thread's first frame).
    pub fn words(&mut self) -> &mut [u64] {
        // SAFETY: [bottom, bottom + STACK_BYTES) is mapped to our pages for as long as `self`
        // lives, and `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.bottom() as *mut u64, STACK_BYTES / 8) }
    }
}

impl Drop for KernelStack {
    fn drop(&mut self) {
        paging::unmap_kernel_pages(self.bottom(), self.pages.page_count());
        SLOTS.lock().free.push(self.slot);
        // `self.pages` is freed when the fields drop, right after: unmapped already.
    }
}

/// Whether `address` lies in the guard page of a kernel stack slot (or of the boot stack).
pub fn is_guard_page(address: u64) -> bool {
    let boot_guard = boot::kernel_layout().boot_stack_guard;
    if (boot_guard..boot_guard + PAGE_SIZE).contains(&address) {
        return true;
    }
    (STACK_AREA..STACK_AREA + MAX_SLOTS * SLOT_SIZE).contains(&address)
        && (address - STACK_AREA) % SLOT_SIZE < PAGE_SIZE
}
