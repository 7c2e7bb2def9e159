//! Kernel page tables: built at boot from the page allocator, replacing the early tables.
//!
//! - The direct map covers every RAM range with the largest pages that fit (1 GiB where the CPU
//!   has them, then 2 MiB, then 4 KiB), writable and never executable.
//! - The kernel image keeps W^X: text read-execute, rodata read-only, data and bss read-write
//!   and no-execute. The page under the boot stack is left unmapped (a guard).
//! - Device registers (local APIC, HPET, later PCI BARs) are mapped uncached on request,
//!   at their direct-map address.
//! - Kernel stacks and the heap get their own virtual ranges, mapped page by page.
//!
//! Owns the kernel half of every page table (user spaces share it). Page-table pages are
//! unmovable allocations owned by [`Owner::PageTable`].

use super::frame::Owner;
use super::page_alloc::{self, AllocRequest, Pages};
use super::{PAGE_SIZE, phys_to_virt};
use crate::arch;
use crate::sync::{IrqMutex, LockClass};
use boot::{KERNEL_VMA, MemoryRegion};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::{MapToError, MapperFlush, UnmapError};
use x86_64::structures::paging::page_table::PageTableFlags as Flags;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PhysFrame, Size1GiB, Size2MiB,
    Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

const KIB4: u64 = 4096;
const MIB2: u64 = 2 << 20;
const GIB1: u64 = 1 << 30;

/// Page-table pages come from the page allocator: unmovable, zeroed.
struct TableFrames;

// SAFETY: every frame returned is a fresh, zeroed, page-aligned allocation used for nothing else.
unsafe impl FrameAllocator<Size4KiB> for TableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let pages = page_alloc::alloc(
            AllocRequest::new(0)
                .zeroed()
                .owner(Owner::PageTable)
                .use_reserves(),
        )?;
        // The kernel's tables own it from now on (they are never torn down).
        let pfn = pages.into_raw();
        Some(PhysFrame::containing_address(PhysAddr::new(
            pfn * PAGE_SIZE,
        )))
    }
}

struct KernelTables {
    pml4_phys: u64,
}

static KERNEL_TABLES: IrqMutex<Option<KernelTables>> =
    IrqMutex::with_class(None, LockClass::KernelTables);
/// The kernel PML4's physical address, readable without the lock (the scheduler loads it on
/// every switch to a kernel thread). Zero until the tables are built.
static KERNEL_PML4: AtomicU64 = AtomicU64::new(0);

fn mapper(pml4_phys: u64) -> OffsetPageTable<'static> {
    let pml4 = phys_to_virt(pml4_phys) as *mut PageTable;
    // SAFETY: `pml4_phys` is the kernel's top-level table, a page of RAM reachable through the
    // direct map; all changes go through KERNEL_TABLES' lock, so this is the only mutable
    // reference while it lives.
    unsafe { OffsetPageTable::new(&mut *pml4, VirtAddr::new(boot::DIRECT_MAP_BASE)) }
}

fn flush<S: x86_64::structures::paging::PageSize>(
    result: Result<MapperFlush<S>, MapToError<S>>,
) -> Result<(), MapError> {
    match result {
        Ok(flush) => {
            flush.flush();
            Ok(())
        }
        Err(MapToError::FrameAllocationFailed) => Err(MapError::OutOfMemory),
        Err(_) => Err(MapError::AlreadyMapped),
    }
}

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    OutOfMemory,
    AlreadyMapped,
    /// The kernel page tables are not built yet.
    NotReady,
}

/// Maps one 4 KiB page of the kernel half.
fn map_4k(
    tables: &mut OffsetPageTable,
    virt: u64,
    phys: u64,
    flags: Flags,
) -> Result<(), MapError> {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
    let frame = PhysFrame::containing_address(PhysAddr::new(phys));
    // SAFETY: kernel-half mappings of frames the caller owns (RAM it allocated, the kernel image,
    // or device registers); intermediate tables get the same permissive flags as Linux.
    flush(unsafe {
        tables.map_to_with_table_flags(
            page,
            frame,
            flags,
            Flags::PRESENT | Flags::WRITABLE,
            &mut TableFrames,
        )
    })
}

/// Builds the kernel's page tables and switches to them. Returns the bytes of RAM direct-mapped.
/// Until the switch, the allocator gives only pages the early tables map (below 4 GiB): the
/// new tables are written through the early direct map.
pub fn init(map: &[MemoryRegion]) -> u64 {
    let pml4 = page_alloc::alloc(AllocRequest::new(0).zeroed().owner(Owner::PageTable))
        .expect("memory for the PML4")
        .into_raw()
        * PAGE_SIZE;
    let mut tables = mapper(pml4);
    let huge_1g = arch::has_1gib_pages();
    let data = Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE | Flags::GLOBAL;
    let mut mapped = 0;
    for (start, end) in super::zones::ram_ranges(map) {
        let mut address = start;
        while address < end {
            let virt = VirtAddr::new(phys_to_virt(address));
            let result = if huge_1g && address % GIB1 == 0 && end - address >= GIB1 {
                // SAFETY: direct-map entries for RAM, mapped once each.
                let page = Page::<Size1GiB>::containing_address(virt);
                let frame = PhysFrame::containing_address(PhysAddr::new(address));
                flush(unsafe {
                    tables.map_to(page, frame, data | Flags::HUGE_PAGE, &mut TableFrames)
                })
                .map(|_| GIB1)
            } else if address % MIB2 == 0 && end - address >= MIB2 {
                // SAFETY: as above.
                let page = Page::<Size2MiB>::containing_address(virt);
                let frame = PhysFrame::containing_address(PhysAddr::new(address));
                flush(unsafe {
                    tables.map_to(page, frame, data | Flags::HUGE_PAGE, &mut TableFrames)
                })
                .map(|_| MIB2)
            } else {
                map_4k(&mut tables, virt.as_u64(), address, data).map(|_| KIB4)
            };
            let step = result.expect("memory for the direct map's page tables");
            address += step;
            mapped += step;
        }
    }
    // Every kernel-half top-level entry exists from now on (1 MiB of tables, most of them empty),
    // so that user spaces, which copy these entries, see every later kernel mapping too.
    {
        // SAFETY: the new PML4 is ours, reachable through the direct map.
        let table = unsafe { &mut *(phys_to_virt(pml4) as *mut PageTable) };
        for entry in table.iter_mut().skip(256) {
            if entry.is_unused() {
                let pdpt = TableFrames
                    .allocate_frame()
                    .expect("memory for the kernel's page tables");
                entry.set_frame(pdpt, Flags::PRESENT | Flags::WRITABLE);
            }
        }
    }
    let layout = boot::kernel_layout();
    let sections = [
        (layout.text, Flags::PRESENT | Flags::GLOBAL),
        (
            layout.rodata,
            Flags::PRESENT | Flags::NO_EXECUTE | Flags::GLOBAL,
        ),
        (layout.data, data),
    ];
    for (range, flags) in sections {
        let mut virt = range.start;
        while virt < range.end {
            if virt != layout.boot_stack_guard {
                map_4k(&mut tables, virt, virt - KERNEL_VMA, flags)
                    .expect("memory for the image's page tables");
            }
            virt += PAGE_SIZE;
        }
    }

    *KERNEL_TABLES.lock() = Some(KernelTables { pml4_phys: pml4 });
    KERNEL_PML4.store(pml4, Relaxed);
    // Device registers the kernel already uses, at their direct-map addresses, uncached.
    for device in [arch::apic::registers_phys(), arch::hpet::HPET_PHYS] {
        map_mmio(device, PAGE_SIZE).expect("memory to map device registers");
    }
    let frame = PhysFrame::containing_address(PhysAddr::new(pml4));
    // SAFETY: the new tables map everything the kernel uses from now on at the same virtual
    // addresses as the early tables (image, direct map of RAM, device registers); the early
    // identity map of low memory is dropped on purpose.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
    // Only now may the allocator hand out pages above the early map's 4 GiB: every page-table
    // page above was allocated, zeroed and written through the early map.
    page_alloc::set_direct_map_end(super::zones::ram_end(map));
    mapped
}

/// Maps device registers at their direct-map address, uncached; returns that address. Mapping
/// an already mapped page again is not an error.
pub fn map_mmio(phys: u64, size: u64) -> Result<u64, MapError> {
    let guard = KERNEL_TABLES.lock();
    let pml4 = guard.as_ref().ok_or(MapError::NotReady)?.pml4_phys;
    let mut tables = mapper(pml4);
    let flags = Flags::PRESENT
        | Flags::WRITABLE
        | Flags::NO_EXECUTE
        | Flags::NO_CACHE
        | Flags::WRITE_THROUGH;
    let start = phys / PAGE_SIZE * PAGE_SIZE;
    for page in (start..phys + size).step_by(PAGE_SIZE as usize) {
        match map_4k(&mut tables, phys_to_virt(page), page, flags) {
            Ok(()) | Err(MapError::AlreadyMapped) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(phys_to_virt(phys))
}

/// Maps pages of RAM at `virt` (kernel half), writable, not executable. The caller keeps the
/// block's ownership (and unmaps before it frees).
pub fn map_kernel_pages(virt: u64, pages: &Pages) -> Result<(), MapError> {
    let guard = KERNEL_TABLES.lock();
    let mut tables = mapper(guard.as_ref().ok_or(MapError::NotReady)?.pml4_phys);
    let flags = Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE | Flags::GLOBAL;
    for index in 0..pages.page_count() {
        map_4k(
            &mut tables,
            virt + index * PAGE_SIZE,
            pages.phys() + index * PAGE_SIZE,
            flags,
        )?;
    }
    Ok(())
}

/// Unmaps `count` pages from `virt` (kernel half) and flushes them from the TLB. The pages
/// themselves are the caller's to free.
pub fn unmap_kernel_pages(virt: u64, count: u64) {
    let guard = KERNEL_TABLES.lock();
    let mut tables = mapper(guard.as_ref().expect("kernel page tables built").pml4_phys);
    for index in 0..count {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt + index * PAGE_SIZE));
        match tables.unmap(page) {
            Ok((_, flush)) => flush.flush(),
            Err(UnmapError::PageNotMapped) => {}
            Err(error) => log::error!("unmapping kernel page {virt:#x}: {error:?}"),
        }
    }
}

/// Unmaps `count` pages from `virt` (kernel half), flushes them from the TLB, and hands each
/// unmapped frame's pfn to `on_frame` (the heap frees them; nothing under this lock may use the
/// heap).
pub fn unmap_kernel_range(virt: u64, count: u64, mut on_frame: impl FnMut(u64)) {
    let guard = KERNEL_TABLES.lock();
    let Some(tables) = guard.as_ref() else {
        return;
    };
    let mut tables = mapper(tables.pml4_phys);
    for index in 0..count {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt + index * PAGE_SIZE));
        match tables.unmap(page) {
            Ok((frame, flush)) => {
                flush.flush();
                on_frame(frame.start_address().as_u64() / PAGE_SIZE);
            }
            Err(UnmapError::PageNotMapped) => {}
            Err(error) => log::error!("unmapping kernel page {virt:#x}: {error:?}"),
        }
    }
}

/// Loads the kernel's own page tables (before a user space that is loaded goes away).
pub fn activate_kernel_tables() {
    let frame = PhysFrame::containing_address(PhysAddr::new(kernel_pml4_phys()));
    // SAFETY: the kernel's tables map everything the kernel uses; only user mappings go.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
}

/// Loads `pml4_phys` (a user space's tables, which share the kernel half) if not loaded yet.
pub fn activate(pml4_phys: u64) {
    if Cr3::read().0.start_address().as_u64() != pml4_phys {
        let frame = PhysFrame::containing_address(PhysAddr::new(pml4_phys));
        // SAFETY: the caller passes a live PML4 whose kernel half is the kernel's.
        unsafe { Cr3::write(frame, Cr3Flags::empty()) };
    }
}

/// The physical PML4 of the kernel (user spaces copy its upper half).
pub fn kernel_pml4_phys() -> u64 {
    let phys = KERNEL_PML4.load(Relaxed);
    assert_ne!(phys, 0, "kernel page tables not built yet");
    phys
}

/// The raw entry that maps `virt` in the kernel's tables, and whether it maps a large page
/// (2 MiB or 1 GiB); `None` if unmapped. Raw, because a large entry's PAT bit (bit 12) sits
/// where `x86_64`'s entry types see an address bit (for the memory-type check).
pub fn leaf_entry(virt: u64) -> Option<(u64, bool)> {
    const PRESENT: u64 = 1;
    const LARGE: u64 = 1 << 7;
    let guard = KERNEL_TABLES.lock();
    let mut table = guard.as_ref()?.pml4_phys;
    for level in (1..=4u32).rev() {
        let index = (virt >> (12 + 9 * (level - 1))) & 0x1ff;
        let slot = (phys_to_virt(table) as *const u64).wrapping_add(index as usize);
        // SAFETY: `table` is a page-table page of the kernel's tables (the PML4 or one an
        // entry above points to), direct-mapped; the lock keeps it from being freed.
        let entry = unsafe { slot.read_volatile() };
        if entry & PRESENT == 0 {
            return None;
        }
        if level == 1 {
            return Some((entry, false));
        }
        if level <= 3 && entry & LARGE != 0 {
            return Some((entry, true));
        }
        table = entry & 0x000f_ffff_ffff_f000;
    }
    None
}

/// Whether `virt` is mapped in the current tables, and with what flags (for tests).
pub fn translate_flags(virt: u64) -> Option<Flags> {
    use x86_64::structures::paging::mapper::{Translate, TranslateResult};
    let guard = KERNEL_TABLES.lock();
    let tables = mapper(guard.as_ref().expect("kernel page tables built").pml4_phys);
    match tables.translate(VirtAddr::new(virt)) {
        TranslateResult::Mapped { flags, .. } => Some(flags),
        _ => None,
    }
}
