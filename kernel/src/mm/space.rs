//! User address spaces: each has its own top-level page table sharing the kernel half, and an
//! ordered set of regions (start, length, permissions, mergeable). Pages are anonymous and
//! arrive on demand: the first touch maps a zeroed movable page; a write to a write-protected
//! shared page copies it (or reuses it when no other mapping is left).
//!
//! Owns the lower half of its page tables and the user pages mapped there (with the reverse
//! map, [`super::rmap`]). Every change to a mapping of the active space is followed by the TLB
//! invalidation it needs; inactive spaces need none (loading CR3 flushes their entries).

use super::frame::Owner;
use super::page_alloc::{self, AllocRequest, Pages};
use super::rmap::{self, Mapping, SpaceId};
use super::{PAGE_SIZE, phys_to_virt};
use crate::mm::buddy::MigrateType;
use crate::sync::{IrqMutex, LockClass};
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::mapper::{MapToError, MapperFlush, Translate, TranslateResult};
use x86_64::structures::paging::page_table::{PageTableEntry, PageTableFlags as Flags};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageSize, PageTable, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// Lowest and one-past-highest user address.
pub const USER_START: u64 = 0x0000_0000_0040_0000;
pub const USER_END: u64 = 0x0000_7fff_ffff_f000;
/// Where the kernel's half of every address space begins.
const KERNEL_HALF_START: u64 = 0xffff_8000_0000_0000;
/// Most regions one space may have (each costs kernel heap).
pub const MAX_REGIONS: usize = 1024;
/// Where `map_anonymous` places regions when the caller gives no address.
const MMAP_BASE: u64 = 0x0000_1000_0000_0000;

bitflags::bitflags! {
    /// A region's permissions and advice.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct RegionFlags: u8 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const EXECUTE = 1 << 2;
        /// KSM may merge identical pages here (madvise MERGEABLE).
        const MERGEABLE = 1 << 3;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub len: u64,
    pub flags: RegionFlags,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Why an address-space operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceError {
    OutOfMemory,
    /// Not page-aligned, empty, or outside the user half.
    BadRange,
    /// Overlaps an existing region.
    Overlap,
    /// No region covers (all of) the range.
    NotMapped,
}

/// What a fault did, or why it cannot be resolved (the task is then killed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// A zeroed page was mapped.
    DemandZero,
    /// A shared page was copied for the writer.
    CopiedOnWrite,
    /// The last mapper of a write-protected page got it back writable, no copy.
    ReusedOnWrite,
    /// The mapping was already fine (another path fixed it).
    Spurious,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultError {
    /// No region covers the address.
    Unmapped,
    /// The region forbids this access.
    Protection,
    /// The address is in the kernel's half.
    KernelAddress,
    OutOfMemory,
    /// The space holds as many pages as `user.max_resident_pct` allows.
    ResidentLimit,
}

impl FaultError {
    pub fn reason(self) -> &'static str {
        match self {
            FaultError::Unmapped => "access to an unmapped address",
            FaultError::Protection => "access the region does not allow",
            FaultError::KernelAddress => "access to kernel memory",
            FaultError::OutOfMemory => "out of memory for a page",
            FaultError::ResidentLimit => "resident memory limit (user.max_resident_pct) reached",
        }
    }
}

/// Counters of one address space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceCounters {
    /// User pages mapped now.
    pub resident: u64,
    pub minor_faults: u64,
    pub cow_copies: u64,
    pub cow_reuses: u64,
    /// Page-table pages of the lower half.
    pub table_pages: u64,
}

struct UserTableFrames<'a> {
    tables: &'a mut u64,
}

// SAFETY: every frame returned is a fresh, zeroed page allocated for this page table alone.
unsafe impl FrameAllocator<Size4KiB> for UserTableFrames<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let pages = page_alloc::alloc(AllocRequest::new(0).zeroed().owner(Owner::PageTable))?;
        *self.tables += 1;
        // From here the page table owns the page; teardown frees it by its frame number.
        let pfn = pages.into_raw();
        Some(PhysFrame::containing_address(PhysAddr::new(
            pfn * PAGE_SIZE,
        )))
    }
}

/// How the kernel touches user memory on a task's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    /// Written by the kernel whatever the page's permission (loading code).
    Load,
}

pub struct AddressSpace {
    id: SpaceId,
    /// The top-level table: `None` only while the space is being dropped.
    pml4: Option<Pages>,
    regions: BTreeMap<u64, Region>,
    pub counters: SpaceCounters,
    /// Every anonymous region, present and future, is mergeable (Linux's
    /// `PR_SET_MEMORY_MERGE`); a clone inherits it.
    merge_any: bool,
    /// KSM merges pages only between spaces of the same domain (0 by default: one domain for
    /// all); a clone inherits it.
    merge_domain: u32,
}

/// An address space shared between its task and the kernel's walkers.
pub type SharedSpace = Arc<IrqMutex<AddressSpace>>;

static NEXT_ID: AtomicU32 = AtomicU32::new(1);
static REGISTRY: IrqMutex<BTreeMap<SpaceId, Weak<IrqMutex<AddressSpace>>>> =
    IrqMutex::with_class(BTreeMap::new(), LockClass::SpaceRegistry);
/// Address spaces alive now.
pub static LIVE_SPACES: AtomicU64 = AtomicU64::new(0);
/// Spaces being torn down now (their pages are leaving the reverse map).
static TEARDOWNS: AtomicU64 = AtomicU64::new(0);
/// Page faults resolved in every space since boot (for the balloon's statistics).
static MINOR_FAULTS: AtomicU64 = AtomicU64::new(0);

/// The live space named `id` (for walkers that start from the reverse map: compaction, KSM).
pub fn find_space(id: SpaceId) -> Option<SharedSpace> {
    REGISTRY.lock().get(&id).and_then(Weak::upgrade)
}

/// The live space with the lowest id at or above `from` (KSM's scan cursor walks them in id
/// order).
pub fn next_space(from: SpaceId) -> Option<(SpaceId, SharedSpace)> {
    REGISTRY
        .lock()
        .range(from..)
        .find_map(|(id, weak)| weak.upgrade().map(|space| (*id, space)))
}

/// Test hook: the id the next space tries first (to reach the end of the id range quickly).
#[cfg(test)]
pub(crate) fn set_next_space_id(id: SpaceId) {
    NEXT_ID.store(id, Relaxed);
}

/// Page faults resolved in all user address spaces since boot.
pub fn minor_faults_total() -> u64 {
    MINOR_FAULTS.load(Relaxed)
}

fn user_flags(flags: RegionFlags, writable: bool) -> Flags {
    let mut pte = Flags::PRESENT | Flags::USER_ACCESSIBLE;
    if writable {
        pte |= Flags::WRITABLE;
    }
    if !flags.contains(RegionFlags::EXECUTE) {
        pte |= Flags::NO_EXECUTE;
    }
    pte
}

impl AddressSpace {
    /// An empty space (no regions), registered for the reverse-map walkers.
    pub fn new() -> Result<SharedSpace, SpaceError> {
        let pml4 = page_alloc::alloc(AllocRequest::new(0).zeroed().owner(Owner::PageTable))
            .ok_or(SpaceError::OutOfMemory)?;
        let kernel = phys_to_virt(super::paging::kernel_pml4_phys()) as *const PageTable;
        let table = phys_to_virt(pml4.phys()) as *mut PageTable;
        // SAFETY: both are page tables reachable through the direct map; the new one is ours
        // alone. The kernel half's entries are copied (they point to shared lower tables that
        // exist for the kernel's whole life, see paging::init).
        unsafe {
            let (kernel, table) = (&*kernel, &mut *table);
            for index in 256..512 {
                table[index] = kernel[index].clone();
            }
        }
        let mut space = AddressSpace {
            id: 0,
            pml4: Some(pml4),
            regions: BTreeMap::new(),
            counters: SpaceCounters::default(),
            merge_any: false,
            merge_domain: 0,
        };
        let placeholder = Weak::new();
        let mut registry = REGISTRY.lock();
        // Ids are reused once their space is gone: the reverse map keeps only
        // `rmap::SPACE_ID_BITS` bits of one inline, so they must stay below 2^28 however many
        // spaces come and go (a space leaves the registry only after its last mapping left the
        // reverse map, so a reused id never meets a stale entry).
        let mut found = None;
        for _ in 0..rmap::MAX_SPACE_ID {
            let candidate = NEXT_ID.load(Relaxed);
            let next = if candidate >= rmap::MAX_SPACE_ID {
                1
            } else {
                candidate + 1
            };
            NEXT_ID.store(next, Relaxed);
            if !registry.contains_key(&candidate) {
                found = Some(candidate);
                break;
            }
        }
        let id = found.ok_or(SpaceError::OutOfMemory)?;
        registry.insert(id, placeholder);
        drop(registry);
        space.id = id;
        let shared = Arc::new(IrqMutex::with_class(space, LockClass::Space));
        REGISTRY.lock().insert(id, Arc::downgrade(&shared));
        LIVE_SPACES.fetch_add(1, Relaxed);
        Ok(shared)
    }

    pub fn id(&self) -> SpaceId {
        self.id
    }

    /// Physical address of the top-level table (for CR3).
    pub fn pml4_phys(&self) -> u64 {
        self.pml4
            .as_ref()
            .expect("a space has its PML4 until it is dropped")
            .phys()
    }

    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.values()
    }

    fn is_active(&self) -> bool {
        Cr3::read().0.start_address().as_u64() == self.pml4_phys()
    }

    fn tables(&self) -> OffsetPageTable<'static> {
        let pml4 = phys_to_virt(self.pml4_phys()) as *mut PageTable;
        // SAFETY: the PML4 is this space's own page, reachable through the direct map; `&self`
        // or `&mut self` on the space (under its lock) is held while the mapper lives, so no
        // other mapper of this table exists at the same time.
        unsafe { OffsetPageTable::new(&mut *pml4, VirtAddr::new(boot::DIRECT_MAP_BASE)) }
    }

    fn finish<S: PageSize>(&self, flush: MapperFlush<S>) {
        if self.is_active() {
            flush.flush()
        } else {
            flush.ignore()
        }
    }

    /// The region holding `address`.
    pub fn region_at(&self, address: u64) -> Option<Region> {
        let (_, region) = self.regions.range(..=address).next_back()?;
        (address < region.end()).then_some(*region)
    }

    /// What `address` maps to: (pfn, writable).
    pub fn translate(&self, address: u64) -> Option<(u64, bool)> {
        if address >= USER_END {
            return None;
        }
        match self.tables().translate(VirtAddr::new(address)) {
            TranslateResult::Mapped { frame, flags, .. } => Some((
                frame.start_address().as_u64() / PAGE_SIZE,
                flags.contains(Flags::WRITABLE),
            )),
            _ => None,
        }
    }

    /// The leaf entry mapping `address`, if its tables exist (walked in place, no allocation).
    fn leaf_entry(&mut self, address: u64) -> Option<&mut PageTableEntry> {
        if address >= USER_END {
            return None;
        }
        let mut phys = self.pml4_phys();
        for shift in [39u64, 30, 21] {
            // SAFETY: a table of this space (the PML4 or one reached from a present entry),
            // direct-mapped RAM; `&mut self` holds the space's lock, so no other reference.
            let table = unsafe { &mut *(phys_to_virt(phys) as *mut PageTable) };
            let entry = &table[((address >> shift) & 511) as usize];
            if !entry.flags().contains(Flags::PRESENT) {
                return None;
            }
            phys = entry.addr().as_u64();
        }
        // SAFETY: as above, for the last-level table.
        let table = unsafe { &mut *(phys_to_virt(phys) as *mut PageTable) };
        Some(&mut table[((address >> 12) & 511) as usize])
    }

    /// Drops the TLB entry of `address` in this space: needed only while the space is loaded
    /// (loading CR3 flushes the rest). With more CPUs, shootdowns go here.
    fn flush_page(&self, address: u64) {
        if self.is_active() {
            crate::arch::flush_tlb_page(address);
        }
    }

    /// The leaf entry at `address` if it maps `expected_pfn`.
    fn entry_mapping(&mut self, address: u64, expected_pfn: u64) -> Option<&mut PageTableEntry> {
        self.leaf_entry(address).filter(|entry| {
            entry.flags().contains(Flags::PRESENT)
                && entry.addr().as_u64() / PAGE_SIZE == expected_pfn
        })
    }

    /// Points the mapping at `address` to `new_pfn`, keeping its permissions, if it still maps
    /// `expected_pfn`; false (nothing changed) otherwise. The caller moves the reverse map.
    pub fn replace_page(&mut self, address: u64, expected_pfn: u64, new_pfn: u64) -> bool {
        let Some(entry) = self.entry_mapping(address, expected_pfn) else {
            return false;
        };
        let flags = entry.flags();
        entry.set_addr(PhysAddr::new(new_pfn * PAGE_SIZE), flags);
        self.flush_page(address);
        true
    }

    /// Removes write permission from the mapping at `address` if it maps `expected_pfn`.
    pub fn write_protect(&mut self, address: u64, expected_pfn: u64) -> bool {
        let Some(entry) = self.entry_mapping(address, expected_pfn) else {
            return false;
        };
        entry.set_flags(entry.flags() - Flags::WRITABLE);
        self.flush_page(address);
        true
    }

    /// KSM's scan: appends (address, pfn) of present pages in mergeable regions from `from` on,
    /// in address order, until `out` holds `max`. Returns where to resume if it stopped because
    /// `out` was full, and whether any mergeable region lies at or after `from`.
    pub fn mergeable_pages(
        &self,
        from: u64,
        max: usize,
        out: &mut Vec<(u64, u64)>,
    ) -> (Option<u64>, bool) {
        let mut any_region = false;
        for region in self.regions.values() {
            if !region.flags.contains(RegionFlags::MERGEABLE) || region.end() <= from {
                continue;
            }
            any_region = true;
            let result = walk_user_tables(
                self.pml4_phys(),
                region.start.max(from),
                region.end(),
                None,
                |address, entry| {
                    if out.len() >= max {
                        return core::ops::ControlFlow::Break(address);
                    }
                    out.push((address, entry.addr().as_u64() / PAGE_SIZE));
                    core::ops::ControlFlow::Continue(())
                },
            );
            if let Err(resume) = result {
                return (Some(resume), true);
            }
        }
        (None, any_region)
    }

    /// Gives every KSM page (shared page or zero page) mapped in `[start, end)` a private copy
    /// (madvise UNMERGEABLE, `ksm.run=2`). Out of memory: stops with the pages copied so far
    /// private and the rest still merged (nothing lost). Returns how many were unmerged.
    pub fn unmerge(&mut self, start: u64, end: u64) -> Result<u64, SpaceError> {
        let mut merged = Vec::new();
        let _ = walk_user_tables(self.pml4_phys(), start, end, None, |address, entry| {
            let pfn = entry.addr().as_u64() / PAGE_SIZE;
            if page_alloc::zone_of(pfn)
                .is_some_and(|zone| zone.frame(pfn).owner() == Owner::KsmShared)
            {
                merged.push((address, pfn));
            }
            core::ops::ControlFlow::<()>::Continue(())
        });
        let mut done = 0;
        for (address, pfn) in merged {
            let region = self.region_at(address).ok_or(SpaceError::NotMapped)?;
            self.break_cow(address, pfn, region.flags)
                .map_err(|_| SpaceError::OutOfMemory)?;
            done += 1;
        }
        Ok(done)
    }

    /// Adds an anonymous region of `len` bytes at `start` (or wherever there is room); pages
    /// are mapped on first touch. Returns its start.
    pub fn map_anonymous(
        &mut self,
        start: Option<u64>,
        len: u64,
        flags: RegionFlags,
    ) -> Result<u64, SpaceError> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(SpaceError::BadRange);
        }
        let start = match start {
            Some(start) => start,
            None => self.find_gap(len).ok_or(SpaceError::BadRange)?,
        };
        let end = start.checked_add(len).ok_or(SpaceError::BadRange)?;
        if start % PAGE_SIZE != 0 || start < USER_START || end > USER_END {
            return Err(SpaceError::BadRange);
        }
        if self
            .regions
            .values()
            .any(|region| region.start < end && start < region.end())
        {
            return Err(SpaceError::Overlap);
        }
        if self.regions.len() >= MAX_REGIONS {
            return Err(SpaceError::OutOfMemory);
        }
        let mut flags = flags;
        if self.merge_any {
            flags |= RegionFlags::MERGEABLE;
        }
        self.regions.insert(start, Region { start, len, flags });
        if flags.contains(RegionFlags::MERGEABLE) {
            super::ksm::region_became_mergeable();
        }
        Ok(start)
    }

    /// The lowest address from [`MMAP_BASE`] with `len` bytes free before the next region.
    fn find_gap(&self, len: u64) -> Option<u64> {
        let mut candidate = MMAP_BASE;
        for region in self.regions.values() {
            if region.end() <= candidate {
                continue;
            }
            if region.start >= candidate && region.start - candidate >= len {
                return Some(candidate);
            }
            candidate = candidate.max(region.end());
        }
        (USER_END.checked_sub(candidate)? >= len).then_some(candidate)
    }

    /// Splits regions so that `start` and `end` fall on region boundaries.
    fn split_at(&mut self, address: u64) {
        if let Some(region) = self.region_at(address)
            && region.start != address
        {
            let head = Region {
                len: address - region.start,
                ..region
            };
            let tail = Region {
                start: address,
                len: region.end() - address,
                flags: region.flags,
            };
            self.regions.insert(head.start, head);
            self.regions.insert(tail.start, tail);
        }
    }

    fn check_range(start: u64, len: u64) -> Result<u64, SpaceError> {
        let end = start.checked_add(len).ok_or(SpaceError::BadRange)?;
        if len == 0
            || !start.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || start < USER_START
            || end > USER_END
        {
            return Err(SpaceError::BadRange);
        }
        Ok(end)
    }

    /// Removes `[start, start + len)`: its pages are unmapped (and freed once no one maps them).
    pub fn unmap(&mut self, start: u64, len: u64) -> Result<(), SpaceError> {
        let end = Self::check_range(start, len)?;
        if self.regions.len() >= MAX_REGIONS {
            // A hole in the middle of a region splits it in three.
            return Err(SpaceError::OutOfMemory);
        }
        if !self
            .regions
            .values()
            .any(|region| region.start < end && start < region.end())
        {
            return Err(SpaceError::NotMapped);
        }
        self.split_at(start);
        self.split_at(end);
        // One at a time: no list of them (freeing memory needs no memory).
        while let Some(key) = self.regions.range(start..end).next().map(|(key, _)| *key) {
            self.regions.remove(&key);
        }
        self.drop_pages(start, end);
        Ok(())
    }

    /// Unmaps every page present in `[start, end)` (freed once no one maps them) and frees the
    /// page-table pages that leaves empty. Only the pages present are visited (a huge, barely
    /// touched region costs what it holds, not its size), in place: freeing memory needs no
    /// memory. Returns how many pages it unmapped.
    fn drop_pages(&mut self, start: u64, end: u64) -> u64 {
        let (id, active) = (self.id, self.is_active());
        let mut unmapped = 0;
        let pruned = walk_user_tables(
            self.pml4_phys(),
            start,
            end,
            Some(&mut self.counters.table_pages),
            |address, entry| {
                let pfn = entry.addr().as_u64() / PAGE_SIZE;
                entry.set_unused();
                if active {
                    crate::arch::flush_tlb_page(address);
                }
                release_mapping(id, pfn, address);
                unmapped += 1;
                core::ops::ControlFlow::<()>::Continue(())
            },
        );
        self.counters.resident -= unmapped;
        if matches!(pruned, Ok(true)) && active {
            // Freed table pages may sit in the paging-structure caches.
            crate::arch::flush_tlb_all();
        }
        unmapped
    }

    /// Sets or clears MERGEABLE on every region in the range (splitting at its edges).
    pub fn advise_mergeable(
        &mut self,
        start: u64,
        len: u64,
        mergeable: bool,
    ) -> Result<(), SpaceError> {
        let end = Self::check_range(start, len)?;
        let mut covered = 0;
        for region in self.regions.values() {
            covered += region
                .end()
                .min(end)
                .saturating_sub(region.start.max(start));
        }
        if covered != len {
            return Err(SpaceError::NotMapped);
        }
        if self.regions.len() + 2 > MAX_REGIONS {
            return Err(SpaceError::OutOfMemory);
        }
        if !mergeable {
            // Every merged page gets its private copy first; out of memory, the range stays
            // mergeable (what was copied stays copied, nothing is lost).
            self.unmerge(start, end)?;
        }
        self.split_at(start);
        self.split_at(end);
        for region in self.regions.range_mut(start..end).map(|(_, region)| region) {
            region.flags.set(RegionFlags::MERGEABLE, mergeable);
        }
        if mergeable {
            super::ksm::region_became_mergeable();
        }
        Ok(())
    }

    /// Linux's `MADV_DONTNEED` on private anonymous memory: drops the pages present in the
    /// range (freed once no one maps them) and keeps the regions, so the next touch maps a
    /// zeroed page. Unlike `unmap` it never splits a region: freeing every other page of a
    /// region costs no region records. Returns how many pages it unmapped; allocates nothing.
    pub fn discard(&mut self, start: u64, len: u64) -> Result<u64, SpaceError> {
        let end = Self::check_range(start, len)?;
        let covered: u64 = self
            .regions
            .values()
            .map(|region| {
                region
                    .end()
                    .min(end)
                    .saturating_sub(region.start.max(start))
            })
            .sum();
        if covered != len {
            return Err(SpaceError::NotMapped);
        }
        Ok(self.drop_pages(start, end))
    }

    /// Whole-space opt-in to KSM (Linux's `PR_SET_MEMORY_MERGE`): on, every region now and
    /// every later one is mergeable; off, every region is unmerged (out of memory: the error,
    /// with the opt-in and the regions left as they were for what was not unmerged) and no
    /// longer mergeable.
    pub fn set_merge_any(&mut self, on: bool) -> Result<(), SpaceError> {
        if on {
            self.merge_any = true;
            for region in self.regions.values_mut() {
                region.flags |= RegionFlags::MERGEABLE;
            }
            super::ksm::region_became_mergeable();
            return Ok(());
        }
        self.unmerge(USER_START, USER_END)?;
        self.merge_any = false;
        for region in self.regions.values_mut() {
            region.flags -= RegionFlags::MERGEABLE;
        }
        Ok(())
    }

    /// The space's KSM merge domain.
    pub fn merge_domain(&self) -> u32 {
        self.merge_domain
    }

    /// Moves the space to merge domain `domain` (set at spawn; a clone inherits it). Pages
    /// merged so far are unmerged first, so that nothing stays shared across domains (out of
    /// memory: the error, and the space stays in its domain).
    pub fn set_merge_domain(&mut self, domain: u32) -> Result<(), SpaceError> {
        if domain != self.merge_domain {
            self.unmerge(USER_START, USER_END)?;
            self.merge_domain = domain;
        }
        Ok(())
    }

    /// Whether the whole space is opted in to KSM.
    pub fn merge_any(&self) -> bool {
        self.merge_any
    }

    /// Drops this space's mapping of `pfn` at `address`; frees the page if it was the last.
    fn release(&self, pfn: u64, address: u64) {
        release_mapping(self.id, pfn, address);
    }

    fn map_page(&mut self, address: u64, pfn: u64, flags: Flags) -> Result<(), SpaceError> {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(address));
        let frame = PhysFrame::containing_address(PhysAddr::new(pfn * PAGE_SIZE));
        let mut tables = self.tables();
        let parent = Flags::PRESENT | Flags::WRITABLE | Flags::USER_ACCESSIBLE;
        let mut allocator = UserTableFrames {
            tables: &mut self.counters.table_pages,
        };
        // SAFETY: a user-half mapping of a page this space now holds a reference to (the
        // reverse map records it right after).
        match unsafe { tables.map_to_with_table_flags(page, frame, flags, parent, &mut allocator) }
        {
            Ok(flush) => {
                self.finish(flush);
                Ok(())
            }
            Err(MapToError::FrameAllocationFailed) => Err(SpaceError::OutOfMemory),
            Err(_) => Err(SpaceError::Overlap),
        }
    }

    /// Resolves a fault at `address` (`write`: the access was a write; `execute`: a fetch).
    pub fn handle_fault(
        &mut self,
        address: u64,
        write: bool,
        execute: bool,
    ) -> Result<FaultOutcome, FaultError> {
        if address >= KERNEL_HALF_START {
            return Err(FaultError::KernelAddress);
        }
        let region = self.region_at(address).ok_or(FaultError::Unmapped)?;

        let allowed = if execute {
            region.flags.contains(RegionFlags::EXECUTE)
        } else if write {
            region.flags.contains(RegionFlags::WRITE)
        } else {
            region.flags.contains(RegionFlags::READ)
        };
        if !allowed {
            return Err(FaultError::Protection);
        }
        let page_address = address & !(PAGE_SIZE - 1);
        self.counters.minor_faults += 1;
        MINOR_FAULTS.fetch_add(1, Relaxed);
        match self.translate(page_address) {
            None => {
                let request = AllocRequest::new(0)
                    .kind(MigrateType::Movable)
                    .zeroed()
                    .owner(Owner::UserAnon)
                    .leave_kernel_reserve();
                self.check_resident_limit()?;
                let pages = page_alloc::alloc(request).ok_or(FaultError::OutOfMemory)?;
                let writable = region.flags.contains(RegionFlags::WRITE);
                if self
                    .map_page(
                        page_address,
                        pages.pfn(),
                        user_flags(region.flags, writable),
                    )
                    .is_err()
                {
                    return Err(FaultError::OutOfMemory);
                }
                // The mapping owns the page now (the reverse map records it).
                let pfn = pages.into_raw();
                rmap::add_new(
                    pfn,
                    Mapping {
                        space: self.id,
                        address: page_address,
                    },
                );
                self.counters.resident += 1;
                Ok(FaultOutcome::DemandZero)
            }
            Some((_, true)) => Ok(FaultOutcome::Spurious),
            Some((_, false)) if !write => Ok(FaultOutcome::Spurious),
            Some((pfn, false)) => self.break_cow(page_address, pfn, region.flags),
        }
    }

    /// One more page would exceed the space's share of memory: no task may take the kernel's
    /// memory away from everyone else.
    fn check_resident_limit(&self) -> Result<(), FaultError> {
        let limit =
            page_alloc::managed_pages() * crate::tunables::USER_MAX_RESIDENT_PCT.get() / 100;
        if self.counters.resident >= limit {
            return Err(FaultError::ResidentLimit);
        }
        Ok(())
    }

    /// A write to a write-protected page of a writable region: the last mapper takes the page
    /// back, anyone else gets a private copy. A KSM page (shared or zero) is never taken back,
    /// even by its last mapper (`cow_ksm`): it is in the stable tree, and ksmd may be comparing
    /// it. Unmerging calls this too (the copy is writable only if the region is).
    fn break_cow(
        &mut self,
        address: u64,
        pfn: u64,
        flags: RegionFlags,
    ) -> Result<FaultOutcome, FaultError> {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(address));
        let ksm_page = page_alloc::zone_of(pfn)
            .is_some_and(|zone| zone.frame(pfn).owner() == Owner::KsmShared);
        let writable = flags.contains(RegionFlags::WRITE);
        if !ksm_page && rmap::map_count(pfn) == 1 {
            // SAFETY: only the permission of an existing user mapping changes.
            let flush = unsafe { self.tables().update_flags(page, user_flags(flags, true)) };
            self.finish(flush.map_err(|_| FaultError::Unmapped)?);
            self.counters.cow_reuses += 1;
            return Ok(FaultOutcome::ReusedOnWrite);
        }
        let request = AllocRequest::new(0)
            .kind(MigrateType::Movable)
            .owner(Owner::UserAnon)
            .leave_kernel_reserve();
        // No resident-limit check: the copy replaces the shared page in this space, so the
        // space does not grow (a task at its limit may still write what it shares after clone).
        let copy = page_alloc::alloc(request).ok_or(FaultError::OutOfMemory)?;
        // SAFETY: both pages are direct-mapped RAM; the copy is ours alone, the source is mapped
        // read-only everywhere (nobody can write it while we copy).
        unsafe {
            core::ptr::copy_nonoverlapping(
                phys_to_virt(pfn * PAGE_SIZE) as *const u8,
                copy.virt() as *mut u8,
                PAGE_SIZE as usize,
            )
        };
        let (_, flush) = self
            .tables()
            .unmap(page)
            .map_err(|_| FaultError::Unmapped)?;
        flush.ignore();
        self.map_page(address, copy.pfn(), user_flags(flags, writable))
            .map_err(|_| FaultError::OutOfMemory)?;
        // The mapping owns the copy now (the reverse map records it).
        let copy = copy.into_raw();
        rmap::add_new(
            copy,
            Mapping {
                space: self.id,
                address,
            },
        );
        self.release(pfn, address);
        self.counters.cow_copies += 1;
        if ksm_page {
            super::ksm::count_cow();
        }
        Ok(FaultOutcome::CopiedOnWrite)
    }

    /// A copy of this space sharing every present page copy-on-write: both sides see the same
    /// data, and the first write on either side gets a private page. Walks the page tables in
    /// place; the reverse map's entries need heap, which is reserved in steps up front, so a
    /// clone without memory fails cleanly (`OutOfMemory`, the half-made child torn down) rather
    /// than panicking halfway.
    pub fn fork(&mut self) -> Result<SharedSpace, SpaceError> {
        let child = AddressSpace::new()?;
        let mut guard = child.lock();
        guard.merge_any = self.merge_any;
        guard.merge_domain = self.merge_domain;
        for region in self.regions.values() {
            guard.regions.insert(region.start, *region);
        }
        let regions = &self.regions;
        let region_at = |address: u64| {
            let (_, region) = regions.range(..=address).next_back()?;
            (address < region.end()).then_some(*region)
        };
        let mut shared = 0u64;
        let result = walk_user_tables(
            self.pml4_phys(),
            USER_START,
            USER_END,
            None,
            |address, entry| {
                if shared.is_multiple_of(FORK_RESERVE_STEP)
                    && super::heap::reserve(FORK_RESERVE_STEP * RMAP_HEAP_PER_PAGE).is_err()
                {
                    return core::ops::ControlFlow::Break(SpaceError::OutOfMemory);
                }
                let Some(region) = region_at(address) else {
                    return core::ops::ControlFlow::Break(SpaceError::NotMapped);
                };
                let pfn = entry.addr().as_u64() / PAGE_SIZE;
                // Write-protected in place; the TLB is flushed once, after the walk.
                entry.set_flags(entry.flags() - Flags::WRITABLE);
                if let Err(error) = guard.map_page(address, pfn, user_flags(region.flags, false)) {
                    return core::ops::ControlFlow::Break(error);
                }
                rmap::add(
                    pfn,
                    Mapping {
                        space: guard.id,
                        address,
                    },
                );
                guard.counters.resident += 1;
                shared += 1;
                core::ops::ControlFlow::Continue(())
            },
        );
        if shared > 0 && self.is_active() {
            crate::arch::flush_tlb_all();
        }
        drop(guard);
        result?;
        Ok(child)
    }

    /// Every present user page: (address, pfn, writable), in address order (for checkers and
    /// tests; the memory paths walk in place instead).
    pub fn present_pages(&self) -> Vec<(u64, u64, bool)> {
        let mut pages = Vec::new();
        let _ = walk_user_tables(
            self.pml4_phys(),
            USER_START,
            USER_END,
            None,
            |address, entry| {
                pages.push((
                    address,
                    entry.addr().as_u64() / PAGE_SIZE,
                    entry.flags().contains(Flags::WRITABLE),
                ));
                core::ops::ControlFlow::<()>::Continue(())
            },
        );
        pages
    }

    /// Reads user memory through the page tables (faulting pages in as the task would), for
    /// system calls. Fails like the task's own access would.
    pub fn read_user(&mut self, address: u64, buffer: &mut [u8]) -> Result<(), FaultError> {
        self.copy_user(address, buffer.len(), Access::Read, |offset, chunk| {
            buffer[offset..offset + chunk.len()].copy_from_slice(chunk)
        })
    }

    /// Writes user memory through the page tables, for system calls.
    pub fn write_user(&mut self, address: u64, data: &[u8]) -> Result<(), FaultError> {
        self.copy_user(address, data.len(), Access::Write, |offset, chunk| {
            chunk.copy_from_slice(&data[offset..offset + chunk.len()])
        })
    }

    /// Fills memory the task can read but not write (a program's code) with `data`: pages are
    /// faulted in as for a read and written by the kernel. Only private pages (mapped once) can
    /// be loaded; a shared one is refused rather than changed under its other mappers.
    pub fn load(&mut self, address: u64, data: &[u8]) -> Result<(), FaultError> {
        self.copy_user(address, data.len(), Access::Load, |offset, chunk| {
            chunk.copy_from_slice(&data[offset..offset + chunk.len()])
        })
    }

    fn copy_user(
        &mut self,
        address: u64,
        len: usize,
        access: Access,
        mut each: impl FnMut(usize, &mut [u8]),
    ) -> Result<(), FaultError> {
        let write = access == Access::Write;
        let mut done = 0;
        while done < len {
            let at = address
                .checked_add(done as u64)
                .ok_or(FaultError::Unmapped)?;
            if at >= USER_END {
                return Err(FaultError::Unmapped);
            }
            let ready = match self.translate(at) {
                Some((_, writable)) => !write || writable,
                None => false,
            };
            if !ready {
                self.handle_fault(at, write, false)?;
            } else if self.region_at(at).is_none() {
                return Err(FaultError::Unmapped);
            }
            let (pfn, _) = self.translate(at).ok_or(FaultError::Unmapped)?;
            let ksm_page = page_alloc::zone_of(pfn)
                .is_some_and(|zone| zone.frame(pfn).owner() == Owner::KsmShared);
            if access == Access::Load && (rmap::map_count(pfn) != 1 || ksm_page) {
                return Err(FaultError::Protection);
            }
            let offset_in_page = (at % PAGE_SIZE) as usize;
            let chunk = (PAGE_SIZE as usize - offset_in_page).min(len - done);
            let base = phys_to_virt(pfn * PAGE_SIZE) as *mut u8;
            // SAFETY: `pfn` is a user page this space maps (present, writable for writes), and
            // the chunk stays inside it; the space's lock keeps the mapping from changing.
            let bytes = unsafe { core::slice::from_raw_parts_mut(base.add(offset_in_page), chunk) };
            each(done, bytes);
            done += chunk;
        }
        Ok(())
    }

    fn free_tables(&mut self) {
        let free = |phys: PhysAddr| {
            // SAFETY: a lower-half table page of this space, owned by it since
            // `UserTableFrames` gave up its handle, unlinked by this teardown and freed once.
            let page = unsafe { Pages::from_raw(phys.as_u64() / PAGE_SIZE, 0) };
            if let Err(error) = page_alloc::free(page) {
                log::error!("freeing a page-table page: {error:?}");
            }
        };
        // SAFETY: the space is being torn down and is not active (checked by the caller): no
        // CPU walks these tables any more; every lower-half table page is owned by the space and
        // reachable through the direct map; each is visited once.
        let table =
            |phys: PhysAddr| unsafe { &mut *(phys_to_virt(phys.as_u64()) as *mut PageTable) };
        {
            for e4 in table(PhysAddr::new(self.pml4_phys())).iter_mut().take(256) {
                if !e4.flags().contains(Flags::PRESENT) {
                    continue;
                }
                for e3 in table(e4.addr()).iter_mut() {
                    if !e3.flags().contains(Flags::PRESENT) {
                        continue;
                    }
                    for e2 in table(e3.addr()).iter_mut() {
                        if e2.flags().contains(Flags::PRESENT) {
                            free(e2.addr());
                            self.counters.table_pages -= 1;
                        }
                    }
                    free(e3.addr());
                    self.counters.table_pages -= 1;
                }
                free(e4.addr());
                self.counters.table_pages -= 1;
                e4.set_unused();
            }
        }
    }
}

/// Heap the reverse map may need per page shared by a clone (a side-table entry and its share
/// of a tree node), and how many pages a clone shares per reservation.
const RMAP_HEAP_PER_PAGE: u64 = 128;
const FORK_RESERVE_STEP: u64 = 256;

/// Drops mapping (`space`, `address`) of `pfn` from the reverse map; frees the page if it was
/// the last (a KSM page leaves the stable tree first). Allocates nothing.
fn release_mapping(space: SpaceId, pfn: u64, address: u64) {
    match rmap::remove(pfn, Mapping { space, address }) {
        Some(rmap::Unmapped {
            last_reference: true,
            ..
        }) => {
            super::ksm::page_freeing(pfn);
            // SAFETY: the reverse map just dropped the page's last mapping and reference: the
            // mappings owned it (the fault path gave up its handle), and nothing else does.
            let page = unsafe { Pages::from_raw(pfn, 0) };
            if let Err(error) = page_alloc::free(page) {
                log::error!("space {space}: freeing user page {pfn:#x}: {error:?}");
            }
        }
        Some(_) => {}
        None => log::error!("space {space}: reverse map had no entry for {address:#x} -> {pfn:#x}"),
    }
}

/// Walks the lower-half page tables under `pml4_phys` in place and calls `visit` with the
/// address and entry of every present 4 KiB mapping in `[start, end)`, in address order,
/// stopping at the first `Break`. With `prune` (the space's table-page counter), table pages
/// that the walk leaves without a present entry are freed and unlinked; the result says
/// whether any was (the caller flushes the TLB). Allocates nothing.
fn walk_user_tables<E>(
    pml4_phys: u64,
    start: u64,
    end: u64,
    mut prune: Option<&mut u64>,
    mut visit: impl FnMut(u64, &mut PageTableEntry) -> core::ops::ControlFlow<E>,
) -> Result<bool, E> {
    // SAFETY: every table reached from a present lower-half entry of a space's PML4 is a page
    // of RAM owned by that space, reachable through the direct map; the caller holds the
    // space's lock (or owns the space outright in teardown), so no other reference to these
    // tables exists while the walk runs, and each table is borrowed once at a time.
    let table = |phys: u64| unsafe { &mut *(phys_to_virt(phys) as *mut PageTable) };
    let overlaps = |base: u64, size: u64| base < end && start < base + size;
    let mut pruned = false;
    let mut free_if_empty = |entry: &mut PageTableEntry, prune: &mut Option<&mut u64>| {
        if let Some(tables) = prune.as_deref_mut() {
            let phys = entry.addr().as_u64();
            if table(phys).iter().all(|e| e.is_unused()) {
                entry.set_unused();
                // SAFETY: a table page of this space (see `UserTableFrames`), just unlinked
                // from its parent entry: nothing reaches it any more.
                let page = unsafe { Pages::from_raw(phys / PAGE_SIZE, 0) };
                if let Err(error) = page_alloc::free(page) {
                    log::error!("freeing an empty page-table page: {error:?}");
                }
                *tables -= 1;
                pruned = true;
            }
        }
    };
    for (i4, e4) in table(pml4_phys).iter_mut().enumerate().take(256) {
        let base4 = (i4 as u64) << 39;
        if !e4.flags().contains(Flags::PRESENT) || !overlaps(base4, 1 << 39) {
            continue;
        }
        for (i3, e3) in table(e4.addr().as_u64()).iter_mut().enumerate() {
            let base3 = base4 | (i3 as u64) << 30;
            if !e3.flags().contains(Flags::PRESENT) || !overlaps(base3, 1 << 30) {
                continue;
            }
            for (i2, e2) in table(e3.addr().as_u64()).iter_mut().enumerate() {
                let base2 = base3 | (i2 as u64) << 21;
                if !e2.flags().contains(Flags::PRESENT) || !overlaps(base2, 1 << 21) {
                    continue;
                }
                for (i1, e1) in table(e2.addr().as_u64()).iter_mut().enumerate() {
                    let address = base2 | (i1 as u64) << 12;
                    if e1.flags().contains(Flags::PRESENT)
                        && overlaps(address, PAGE_SIZE)
                        && let core::ops::ControlFlow::Break(error) = visit(address, e1)
                    {
                        return Err(error);
                    }
                }
                free_if_empty(e2, &mut prune);
            }
            free_if_empty(e3, &mut prune);
        }
        free_if_empty(e4, &mut prune);
    }
    Ok(pruned)
}

impl Drop for AddressSpace {
    /// Teardown: every page and page-table page goes back. Must not run while the space is
    /// loaded in CR3 (a task switches to the kernel's tables before dropping its space).
    fn drop(&mut self) {
        TEARDOWNS.fetch_add(1, Relaxed);
        if self.is_active() {
            super::paging::activate_kernel_tables();
        }
        // In place: tearing down a space of any size needs no memory. The walk frees the
        // tables it empties; `free_tables` takes whatever is left.
        self.drop_pages(USER_START, USER_END);
        self.free_tables();
        // Before the space leaves the registry, as every other page of it.
        drop(self.pml4.take());
        REGISTRY.lock().remove(&self.id);
        LIVE_SPACES.fetch_sub(1, Relaxed);
        TEARDOWNS.fetch_sub(1, Relaxed);
    }
}

/// Proves the reverse map exact: every present user mapping of every live space is recorded
/// for its page, and every page's map count equals the mappings found. Returns the number of
/// mapped pages checked, or `None` if a space is being torn down right now (its mappings are
/// half gone: the picture is not checkable until it is done).
pub fn check_reverse_map() -> Result<Option<usize>, alloc::string::String> {
    if TEARDOWNS.load(Relaxed) > 0 {
        return Ok(None);
    }
    /// What the walk found wrong (formatted once the walk is over).
    enum Problem {
        NotRecorded(u64, Mapping),
        KsmWritable(u64),
        Counts(u64, Owner, u32, u32),
    }
    let spaces: Vec<SharedSpace> = REGISTRY.lock().values().filter_map(Weak::upgrade).collect();
    // Walked in place, a mapping at a time: the checker must work when memory is short (a
    // list of every mapping took 3 MiB of heap in a soak that had none left).
    let (mut found, mut expected, mut pages) = (0u64, 0u64, 0usize);
    for shared in &spaces {
        let space = shared.lock();
        let id = space.id;
        let walked = walk_user_tables(
            space.pml4_phys(),
            USER_START,
            USER_END,
            None,
            |address, entry| {
                use core::ops::ControlFlow::{Break, Continue};
                let pfn = entry.addr().as_u64() / PAGE_SIZE;
                let mapping = Mapping { space: id, address };
                if !rmap::contains(pfn, mapping) {
                    return Break(Problem::NotRecorded(pfn, mapping));
                }
                found += 1;
                let Some(zone) = page_alloc::zone_of(pfn) else {
                    return Break(Problem::NotRecorded(pfn, mapping));
                };
                let record = zone.frame(pfn);
                if record.owner() == Owner::KsmShared && entry.flags().contains(Flags::WRITABLE) {
                    return Break(Problem::KsmWritable(pfn));
                }
                // Each page once: at its smallest mapping.
                if rmap::first_mapping(pfn) != Some(mapping) {
                    return Continue(());
                }
                pages += 1;
                let mapped = rmap::map_count(pfn);
                expected += u64::from(mapped);
                // One reference per mapping, one more while compaction moves the page, and
                // KSM's own on the shared zero page.
                let holders = mapped
                    + u32::from(record.flags().contains(super::frame::FrameFlags::MIGRATING))
                    + u32::from(super::ksm::is_zero_page(pfn));
                let owner_ok = match record.owner() {
                    Owner::UserAnon => true,
                    // A shared page is in the stable tree (or is the zero page), read-only.
                    Owner::KsmShared => super::ksm::is_zero_page(pfn) || super::ksm::is_stable(pfn),
                    _ => false,
                };
                let references = record.refcount.load(Relaxed);
                if !owner_ok || references != holders {
                    return Break(Problem::Counts(pfn, record.owner(), references, mapped));
                }
                Continue(())
            },
        );
        drop(space);
        match walked {
            Ok(_) => {}
            Err(Problem::NotRecorded(pfn, mapping)) => {
                return Err(alloc::format!(
                    "pfn {pfn:#x}: the page tables map it at {mapping:?}, the reverse map does not say so"
                ));
            }
            Err(Problem::KsmWritable(pfn)) => {
                return Err(alloc::format!(
                    "pfn {pfn:#x}: a KSM page is mapped writable"
                ));
            }
            Err(Problem::Counts(pfn, owner, references, mapped)) => {
                return Err(alloc::format!(
                    "pfn {pfn:#x}: owner {owner:?} refcount {references} for {mapped} mappings"
                ));
            }
        }
    }
    // Every mapping found is recorded; as many recorded as found means none is missing.
    if found != expected {
        return Err(alloc::format!(
            "{found} mappings in the page tables, {expected} in the reverse map"
        ));
    }
    Ok(Some(pages))
}
