//! Memory management: the kernel heap, the page-fault policy, kernel page tables and the zone
//! layout (the buddy allocator, reporting, compaction, KSM and user spaces come here next).

pub mod boot_memory;
pub mod checker;
pub mod compaction;
pub mod deferred_init;
pub mod fault;
pub mod heap;
pub mod ksm;
pub mod migrate;
pub mod page_alloc;
pub mod paging;
pub mod reporting;
pub mod rmap;
pub mod space;

pub mod stack;
pub mod zone;
pub mod zones;

/// The buddy core (frame records, one zone's free lists) lives in its own crate, which also
/// builds and tests on the host (`kernel/buddy`).
pub use buddy_core::buddy;

/// The page-frame database: the records are [`buddy_core::frame`]'s; this adds the direct map.
pub mod frame {
    pub use buddy_core::frame::*;

    /// Turns the memory at physical `phys` into the table of `count` frames' records for pfns
    /// `base_pfn..`, all [`FrameState::Reserved`].
    ///
    /// # Safety
    /// `[phys, phys + FrameTable::storage_len(base_pfn, count) * 32)` must be RAM,
    /// direct-mapped, used by nothing else, now or later; `phys` aligned for a `Frame`.
    pub unsafe fn build_database(phys: u64, base_pfn: u64, count: usize) -> FrameTable {
        let records = super::phys_to_virt(phys) as *mut Frame;
        // SAFETY: the caller's promise, through the direct map.
        unsafe { buddy_core::frame::build_database(records, base_pfn, count) }
    }

    /// The table of `count` frames' records for pfns `base_pfn..` at physical `phys`, as they
    /// are (see [`buddy_core::frame::database_at`]).
    ///
    /// # Safety
    /// `[phys, phys + FrameTable::storage_len(base_pfn, count) * 32)` must be RAM,
    /// direct-mapped, used by nothing else, now or later; `phys` aligned for a `Frame`.
    pub unsafe fn database_at(phys: u64, base_pfn: u64, count: usize) -> FrameTable {
        let records = super::phys_to_virt(phys) as *mut Frame;
        // SAFETY: the caller's promise, through the direct map.
        unsafe { buddy_core::frame::database_at(records, base_pfn, count) }
    }
}

/// Size of a base page.
pub const PAGE_SIZE: u64 = 4096;

/// Converts a physical address to its address in the direct map.
pub fn phys_to_virt(phys: u64) -> u64 {
    boot::DIRECT_MAP_BASE + phys
}
