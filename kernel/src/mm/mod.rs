//! Memory management: the kernel heap, the page-fault policy, kernel page tables and the zone
//! layout (the buddy allocator, reporting, compaction, KSM and user spaces come here next).

pub mod boot_memory;
pub mod buddy;
pub mod checker;
pub mod compaction;
pub mod deferred_init;
pub mod fault;
pub mod frame;
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

/// Size of a base page.
pub const PAGE_SIZE: u64 = 4096;

/// Converts a physical address to its address in the direct map.
pub fn phys_to_virt(phys: u64) -> u64 {
    boot::DIRECT_MAP_BASE + phys
}
