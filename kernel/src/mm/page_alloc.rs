//! The page allocator's public face: zones built from the firmware map at boot, allocation and
//! freeing with zone limits, migratetypes, zeroing and owners, the per-CPU cache of blocks of
//! orders 0..=9, watermarks and statistics.
//!
//! Owns the zone set and the per-CPU caches. Mechanisms (the heap, page tables, user spaces,
//! reporting, compaction, KSM) allocate and free only through these functions.

use super::buddy::{FreeArea, MAX_ORDER, MigrateType};
use super::frame::{self, FrameFlags, FrameIndex, FrameState, HeadWord, Owner};
use super::zone::{Watermarks, Zone};
use super::zones::{self, ZoneKind};
use super::{PAGE_SIZE, phys_to_virt};
use crate::sync::{LocalLock, LockClass};
use alloc::vec::Vec;
use boot::{AddrRange, MemoryRegion};
use core::num::NonZeroU64;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use spin::Once;

/// The highest zone an allocation may come from (for devices that address only low memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ZoneLimit {
    Dma,
    Dma32,
    Any,
}

bitflags::bitflags! {
    /// The yes-or-no parts of an [`AllocRequest`], in one byte.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct RequestFlags: u8 {
        const ZEROED = 1 << 0;
        /// May dip below the min watermark (for allocations that free memory, e.g. page
        /// tables of the reclaim path).
        const USE_RESERVES = 1 << 1;
        /// May take pages back from the balloon when memory runs out (deflate-on-OOM). Off for
        /// the balloon's own allocations.
        const DEFLATE_ON_OOM = 1 << 2;
        /// Stops at the low watermark instead of the min one (user pages): what lies between
        /// is the kernel's, so that its heap, page tables and stacks are not what fails when
        /// tasks fill memory (the OOM killer frees memory before the kernel runs short).
        const LEAVE_KERNEL_RESERVE = 1 << 3;
        /// May compact memory when no block of this order is free (off where a smaller block
        /// will do instead).
        const COMPACT = 1 << 4;
    }
}

/// What to allocate. Five bytes: a request travels in one register, and a caller's constant
/// request costs no stores (under TCG every store and load is emulated).
#[derive(Clone, Copy, Debug)]
pub struct AllocRequest {
    pub order: u8,
    pub kind: MigrateType,
    pub limit: ZoneLimit,
    pub owner: Owner,
    flags: RequestFlags,
}

impl AllocRequest {
    /// An unmovable kernel allocation of `order`, from any zone, not zeroed, that may deflate
    /// the balloon and compact.
    pub const fn new(order: u8) -> AllocRequest {
        AllocRequest {
            order,
            kind: MigrateType::Unmovable,
            limit: ZoneLimit::Any,
            owner: Owner::Kernel,
            flags: RequestFlags::DEFLATE_ON_OOM.union(RequestFlags::COMPACT),
        }
    }
    const fn with(self, flag: RequestFlags, on: bool) -> Self {
        let flags = if on {
            self.flags.union(flag)
        } else {
            self.flags.difference(flag)
        };
        AllocRequest { flags, ..self }
    }
    #[inline]
    const fn has(&self, flag: RequestFlags) -> bool {
        self.flags.contains(flag)
    }
    /// Fails instead of deflating the balloon (for the balloon's own inflation).
    pub const fn without_balloon_deflate(self) -> Self {
        self.with(RequestFlags::DEFLATE_ON_OOM, false)
    }
    /// With `skip`, fails instead of compacting (the caller falls back to smaller blocks).
    pub const fn without_compaction(self, skip: bool) -> Self {
        self.with(RequestFlags::COMPACT, !skip)
    }
    /// The same request for blocks of another order.
    pub const fn with_order(self, order: u8) -> Self {
        AllocRequest { order, ..self }
    }
    pub const fn kind(self, kind: MigrateType) -> Self {
        AllocRequest { kind, ..self }
    }
    pub const fn limit(self, limit: ZoneLimit) -> Self {
        AllocRequest { limit, ..self }
    }
    /// The block comes back filled with zeroes.
    pub const fn zeroed(self) -> Self {
        self.with(RequestFlags::ZEROED, true)
    }
    pub const fn owner(self, owner: Owner) -> Self {
        AllocRequest { owner, ..self }
    }
    /// For user pages: stops at the low watermark instead of the min one (what lies between is
    /// the kernel's, so that its heap, page tables and stacks are not what fails when tasks
    /// fill memory: the OOM killer frees memory before the kernel runs short).
    pub const fn leave_kernel_reserve(self) -> Self {
        self.with(RequestFlags::LEAVE_KERNEL_RESERVE, true)
    }
    /// May dip below the min watermark (for allocations that free memory, e.g. page tables of
    /// the reclaim path).
    pub const fn use_reserves(self) -> Self {
        self.with(RequestFlags::USE_RESERVES, true)
    }
}

/// An allocated block, `2^order` pages from `pfn`, and the right to free it.
///
/// The handle owns the block: it is neither `Copy` nor `Clone`, so two owners of one block
/// cannot arise by accident, and dropping it frees the block (through [`free`], which refuses
/// and logs a block that is not allocated with this order, so nothing is corrupted even then).
/// An owner that keeps the block by its frame number instead (a page-table entry, the balloon's
/// pfn array, the reverse map) gives the handle up with [`Pages::into_raw`] and gets it back
/// with [`Pages::from_raw`] when it frees or hands the block on: that pair is the one place
/// where ownership passes through a plain number, and `from_raw` is `unsafe` so every such
/// place says why it owns the block.
#[must_use = "dropping a block frees it; keep it, or give it up with `into_raw`"]
#[derive(PartialEq, Eq)]
pub struct Pages {
    /// The frame number plus one: never 0, so `Option<Pages>` fits two registers (read
    /// through [`Pages::pfn`]).
    pfn_plus_one: NonZeroU64,
    order: u8,
}

impl Pages {
    /// Takes back the ownership of a block given up with [`Pages::into_raw`].
    ///
    /// # Safety
    /// The caller owns the allocated block of `2^order` pages at `pfn`: it was given up with
    /// `into_raw` (or is a page the caller's mappings own, a user page whose last mapping the
    /// caller just removed), and no other `Pages` for it exists nor will be made. Breaking this
    /// cannot corrupt the allocator ([`free`] refuses a block that is not allocated), but the
    /// other owner would go on using memory that is free or reused.
    pub unsafe fn from_raw(pfn: u64, order: u8) -> Pages {
        Pages::new(pfn, order)
    }

    /// The handle of the block at `pfn`. Every frame number is kept as it is but the largest,
    /// `u64::MAX`, which no memory has (nor the one below it): it is kept as the one below,
    /// which frees as it would (refused, no such frame).
    #[inline(always)]
    fn new(pfn: u64, order: u8) -> Pages {
        Pages {
            pfn_plus_one: NonZeroU64::new(pfn.wrapping_add(1)).unwrap_or(NonZeroU64::MAX),
            order,
        }
    }

    /// Gives up the handle without freeing the block: the caller now keeps it by its frame
    /// number (and knows its order) and must free it through [`Pages::from_raw`].
    pub fn into_raw(self) -> u64 {
        let pfn = self.pfn();
        core::mem::forget(self);
        pfn
    }

    #[inline]
    pub fn pfn(&self) -> u64 {
        self.pfn_plus_one.get() - 1
    }
    pub fn order(&self) -> u8 {
        self.order
    }
    pub fn phys(&self) -> u64 {
        self.pfn() * PAGE_SIZE
    }
    /// Its address in the direct map.
    pub fn virt(&self) -> u64 {
        phys_to_virt(self.phys())
    }
    pub fn bytes(&self) -> u64 {
        PAGE_SIZE << self.order
    }
    pub fn page_count(&self) -> u64 {
        1 << self.order
    }
}

/// A compile-time test that `Pages` is neither `Copy` nor `Clone`: were it either, one of
/// these item lookups would match two impls and the kernel would not build.
const _: () = {
    trait AmbiguousIfCopy<Marker> {
        const CHECK: () = ();
    }
    impl<T: ?Sized> AmbiguousIfCopy<()> for T {}
    impl<T: Copy> AmbiguousIfCopy<u8> for T {}
    trait AmbiguousIfClone<Marker> {
        const CHECK: () = ();
    }
    impl<T: ?Sized> AmbiguousIfClone<()> for T {}
    impl<T: Clone> AmbiguousIfClone<u8> for T {}
    let () = <Pages as AmbiguousIfCopy<_>>::CHECK;
    let () = <Pages as AmbiguousIfClone<_>>::CHECK;
};

// What the fast path's calling convention rests on: a request fits a register, a result two.
const _: () = assert!(core::mem::size_of::<AllocRequest>() <= 8);
const _: () = assert!(core::mem::size_of::<Option<Pages>>() == 16);

impl core::fmt::Debug for Pages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pages")
            .field("pfn", &self.pfn())
            .field("order", &self.order)
            .finish()
    }
}

impl Drop for Pages {
    #[inline]
    fn drop(&mut self) {
        // `free` logs a refusal; a handle has nothing more to do with its block either way.
        let _ = free_block(self.pfn(), self.order);
    }
}

/// Why a free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// No zone holds this pfn.
    NoSuchFrame,
    /// The frame is not the head of an allocated block: a double free, a free of a reserved
    /// frame, or of a frame inside a block.
    NotAllocated(FrameState),
    /// The block was allocated with another order.
    WrongOrder { allocated: u8 },
}

struct ZoneSet {
    zones: Vec<Zone>,
    /// Each kind's zone (an index of `zones`), or [`NO_ZONE`]: a frame's zone in one load.
    by_kind: [u8; 3],
}

const NO_ZONE: u8 = u8::MAX;

/// The first zone each [`ZoneLimit`] may use now (an index of the zones, or [`NO_ZONE`]):
/// [`candidate_zones`]'s first, kept by [`refresh_first_zones`] so that the allocation fast
/// path does not filter the zones on every call.
static FIRST_ZONE: [AtomicU8; 3] = [const { AtomicU8::new(NO_ZONE) }; 3];

/// Recomputes [`FIRST_ZONE`] (after the zones are built and when the direct map grows).
fn refresh_first_zones() {
    if !is_initialised() {
        return;
    }
    for limit in [ZoneLimit::Dma, ZoneLimit::Dma32, ZoneLimit::Any] {
        let first = candidate_zones(limit)
            .next()
            .map_or(NO_ZONE, |zone| zone_index(zone) as u8);
        FIRST_ZONE[limit as usize].store(first, Relaxed);
    }
}

/// `zone`'s index in the zones.
fn zone_index(zone: &Zone) -> usize {
    ZONES.get().expect("page allocator initialised").by_kind[zone.kind as usize] as usize
}

static ZONES: Once<ZoneSet> = Once::new();
static BOOT_FREE_PAGES: AtomicU64 = AtomicU64::new(0);
/// Physical memory below this address is reachable through the direct map. Until the kernel's
/// own page tables are live that is only what the early tables map (4 GiB): every allocation
/// may be zeroed or written through the direct map (page tables are), so until then zones
/// that reach above it are not used.
static DIRECT_MAP_END: AtomicU64 = AtomicU64::new(boot::EARLY_DIRECT_MAP_SIZE);

/// Tells the allocator that the direct map now covers physical memory up to `end` (the kernel
/// page tables call it once they map all RAM): zones up to there become usable.
pub fn set_direct_map_end(end: u64) {
    DIRECT_MAP_END.store(end, Relaxed);
    refresh_first_zones();
}

/// Whether every page of `zone` is reachable through the direct map now.
#[inline]
fn is_direct_mapped(zone: &Zone) -> bool {
    zone.end_pfn * PAGE_SIZE <= DIRECT_MAP_END.load(Relaxed)
}

#[inline]
fn zones() -> &'static [Zone] {
    &ZONES.get().expect("page allocator initialised").zones
}

/// The zones, lowest first.
pub fn all_zones() -> &'static [Zone] {
    zones()
}

pub fn is_initialised() -> bool {
    ZONES.get().is_some()
}

/// The zone holding `pfn`, if its record is initialised (a frame beyond a zone's initialised
/// boundary has no record yet: nothing can have been allocated there).
#[inline]
pub fn zone_of(pfn: u64) -> Option<&'static Zone> {
    // Each zone lies inside its kind's range: the kind names the only zone that may hold it.
    let set = ZONES.get().expect("page allocator initialised");
    let zone = set
        .zones
        .get(set.by_kind[ZoneKind::of_pfn(pfn) as usize] as usize)?;
    zone.has_record(pfn).then_some(zone)
}

/// What boot set up, for the log and the demo.
#[derive(Clone, Copy, Debug)]
pub struct InitReport {
    pub database_bytes: u64,
    pub database_phys: u64,
    pub managed_pages: u64,
    /// Records written at boot (the rest are deferred: see `mm::deferred_init`).
    pub initialised_frames: u64,
    /// Managed pages left for later.
    pub deferred_pages: u64,
    pub setup_ns: u64,
}

/// `ranges` minus every range of `holes` (both sorted or not; results sorted).
pub fn subtract(ranges: &[(u64, u64)], holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut result: Vec<(u64, u64)> = ranges.to_vec();
    for &(hole_start, hole_end) in holes {
        let mut next = Vec::with_capacity(result.len() + 1);
        for (start, end) in result {
            if hole_end <= start || hole_start >= end {
                next.push((start, end));
                continue;
            }
            if start < hole_start {
                next.push((start, hole_start));
            }
            if hole_end < end {
                next.push((hole_end, end));
            }
        }
        result = next;
    }
    result.sort_unstable();
    result
}

/// Builds the zones from the memory map: reserves low memory, the kernel image and the frame
/// database itself, and gives everything else to the buddy allocator: at once what each zone
/// needs to run on, the rest as `mm::deferred_init` initialises it (all of it at once with
/// `mm.deferred_init=0`).
pub fn init(map: &[MemoryRegion], kernel_image: AddrRange) -> InitReport {
    let started = crate::time::Instant::now();
    let spans = zones::zone_spans(map);
    let database_bytes = zones::database_bytes(map);
    // Low memory (real-mode structures, the PVH start_info) and the kernel image stay reserved.
    let mut reserved = alloc::vec![
        (0, 1 << 20),
        (
            kernel_image.start,
            kernel_image.end.next_multiple_of(PAGE_SIZE)
        )
    ];
    let ram: Vec<(u64, u64)> = zones::ram_ranges(map).collect();
    let free_before_database = subtract(&ram, &reserved);
    // The database goes in the first free RAM above 16 MiB (sparing the DMA zone) that holds it
    // inside the early direct map; failing that, anywhere that does.
    let place_above = |floor: u64| {
        free_before_database.iter().find_map(|&(start, end)| {
            let start = start.max(floor);
            (end > start
                && end - start >= database_bytes
                && start + database_bytes <= boot::EARLY_DIRECT_MAP_SIZE)
                .then_some(start)
        })
    };
    let database_phys = place_above(16 << 20)
        .or_else(|| place_above(0))
        .expect("no free RAM range below 4 GiB can hold the page-frame database");
    reserved.push((database_phys, database_phys + database_bytes));
    let free_ranges = subtract(&ram, &reserved);
    let free_pfns: Vec<(u64, u64)> = free_ranges
        .iter()
        .map(|&(start, end)| (start / PAGE_SIZE, end / PAGE_SIZE))
        .collect();

    // The zones and their records: only the database's place is decided here; its records
    // are written chunk by chunk (see `deferred_init`), most of them after boot.
    let mut zone_list = Vec::new();
    let mut offset = database_phys;
    for span in &spans {
        let count = (span.end_pfn - span.start_pfn) as usize;
        // SAFETY: [database_phys, +database_bytes) is RAM, below 4 GiB (direct-mapped), and was
        // just reserved: no free list will ever hand it out. Zones take disjoint parts of it,
        // each its table's storage (padding included: `ZoneSpan::database_bytes`).
        let records = unsafe { frame::database_at(offset, span.start_pfn, count) };
        offset += span.database_bytes();
        let mut zone = Zone::new(span.kind, span.start_pfn, span.present_pages, records);
        zone.managed_pages =
            super::deferred_init::managed_pages_in(span.start_pfn, span.end_pfn, &free_pfns);
        zone.set_deferred_pages(zone.managed_pages);
        zone_list.push(zone);
    }
    set_watermarks(&mut zone_list);
    let managed_pages = zone_list.iter().map(|zone| zone.managed_pages).sum();
    let mut by_kind = [NO_ZONE; 3];
    for (index, zone) in zone_list.iter().enumerate() {
        by_kind[zone.kind as usize] = index as u8;
    }
    ZONES.call_once(|| ZoneSet {
        zones: zone_list,
        by_kind,
    });
    refresh_first_zones();
    super::deferred_init::set_free_ranges(free_pfns);
    let everything = crate::tunables::MM_DEFERRED_INIT.get() == 0;
    let initialised_frames = zones()
        .iter()
        .map(|zone| super::deferred_init::init_at_boot(zone, everything))
        .sum();
    BOOT_FREE_PAGES.store(free_pages(), Relaxed);
    InitReport {
        database_bytes,
        database_phys,
        managed_pages,
        initialised_frames,
        deferred_pages: super::deferred_init::deferred_pages(),
        setup_ns: started.elapsed().as_nanos() as u64,
    }
}

/// Linux's rule: min_free_kbytes = 4 * sqrt(managed KiB), at least 128 KiB, split across zones
/// by their size; low = min * 5/4, high = min * 3/2.
fn set_watermarks(zone_list: &mut [Zone]) {
    let managed: u64 = zone_list.iter().map(|zone| zone.managed_pages).sum();
    let min_kib = (4 * (managed * 4).isqrt()).clamp(128, 256 * 1024);
    let min_pages = min_kib / 4;
    for zone in zone_list {
        let min = (min_pages * zone.managed_pages / managed.max(1)).max(1);
        zone.watermarks = Watermarks {
            min,
            low: min * 5 / 4,
            high: min * 3 / 2,
        };
    }
}

/// Free pages when the allocator was set up.
pub fn boot_free_pages() -> u64 {
    BOOT_FREE_PAGES.load(Relaxed)
}

/// The zones a request may use, in the order to try them (highest allowed first). Zones the
/// direct map does not reach yet are left out (see [`DIRECT_MAP_END`]).
#[inline]
fn candidate_zones(limit: ZoneLimit) -> impl Iterator<Item = &'static Zone> {
    let allowed = move |kind: ZoneKind| match limit {
        ZoneLimit::Any => true,
        ZoneLimit::Dma32 => kind != ZoneKind::Normal,
        ZoneLimit::Dma => kind == ZoneKind::Dma,
    };
    zones()
        .iter()
        .rev()
        .filter(move |zone| allowed(zone.kind) && is_direct_mapped(zone))
}

// ---- The per-CPU cache of orders 0..=9 --------------------------------------------------

pub use buddy_core::pcp::{
    PCP_BATCH, PCP_COSTLY_ORDER, PCP_HIGH, PCP_ORDERS, PCP_SLOTS, pcp_high_pages, pcp_order_slot,
    pcp_passes_through,
};
use buddy_core::pcp::{PcpList, PcpLists, Pushed, completes_large_block, may_complete_large_block};

/// One CPU's cache: a list per zone, allocatable migratetype and order of [`PCP_ORDERS`].
struct PerCpuCache {
    lists: [[PcpLists; 3]; 3],
}

static PCP: LocalLock<PerCpuCache> = LocalLock::with_class(
    PerCpuCache {
        lists: [const { [const { PcpLists::new() }; 3] }; 3],
    },
    LockClass::PerCpuCache,
);

#[inline]
fn zone_slot(zone: &Zone) -> usize {
    zone.kind as usize
}

#[inline]
fn pcp_type_slot(kind: MigrateType) -> Option<usize> {
    match kind {
        MigrateType::Isolate => None,
        other => Some(other as usize),
    }
}

/// The free pages `request` must leave in `zone`.
fn watermark(zone: &Zone, request: &AllocRequest) -> u64 {
    if request.has(RequestFlags::USE_RESERVES) {
        0
    } else if request.has(RequestFlags::LEAVE_KERNEL_RESERVE) {
        zone.watermarks.low
    } else {
        zone.watermarks.min
    }
}

/// Allocation of an order with a per-CPU list (0..=9) through the per-CPU cache (the common
/// case touches no zone lock). With `refill`, an empty list takes a batch from the zone first;
/// without (the fast path), it gives nothing.
#[inline(always)]
fn alloc_cached(
    zone: &'static Zone,
    request: &AllocRequest,
    order_slot: usize,
    refill: bool,
) -> Option<u64> {
    let type_slot = pcp_type_slot(request.kind)?;
    let mut pcp = PCP.lock();
    let mut list = pcp.lists[zone_slot(zone)][type_slot].list(order_slot);
    if refill && list.is_empty() && !list.passes_through() {
        // Refill a batch under the zone lock, keeping the zone above its watermark (a list
        // that passes through gives nothing: the caller takes the block from the zone).
        let mut area = zone.lock();
        list.refill(&mut area, request.kind, watermark(zone, request));
    }
    let pfn = list.pop()?;
    // Labelled before the lock goes: no checker ever sees it cached yet in no cache.
    label_allocated(zone.frame(pfn), request);
    Some(pfn)
}

/// Makes a block just taken off a list (under its list's lock) the head of an allocated block.
#[inline]
fn label_allocated(head: &frame::Frame, request: &AllocRequest) {
    // One store: an allocated block's links are never read.
    head.relabel(HeadWord::new(
        FrameState::Allocated,
        request.order,
        request.owner as u8,
        FrameFlags::empty(),
    ));
    head.refcount.store(1, Relaxed);
}

/// Drains the per-CPU lists that could serve `request` once back in the zone: every list for
/// a block of order > 0 (pieces may complete it), the lists of higher orders for a single page
/// (the order-0 lists were looked at already). Returns the pages drained.
fn drain_for(request: &AllocRequest) -> u64 {
    if request.order > 0 {
        drain_per_cpu_caches()
    } else {
        drain_per_cpu_caches_from(1)
    }
}

/// Gives every block in the per-CPU caches back to the buddy lists (before an allocation that
/// needs contiguous memory fails, before compaction, and for exact accounting in tests);
/// returns how many pages.
pub fn drain_per_cpu_caches() -> u64 {
    drain_per_cpu_caches_from(0)
}

/// Gives the blocks of `min_order` and up in the per-CPU caches back to the buddy lists (the
/// reporting worker, before a pass: the pageblock-order lists hold whole 2 MiB blocks it would
/// report, the lists of orders 4..=8 pieces of them); returns how many pages.
pub fn drain_per_cpu_caches_from(min_order: u8) -> u64 {
    let mut pcp = PCP.lock();
    let mut drained = 0;
    for zone in zones() {
        let lists = &mut pcp.lists[zone_slot(zone)];
        if !lists
            .iter()
            .flat_map(PcpLists::cached)
            .any(|(order, pfns)| order >= min_order && !pfns.is_empty())
        {
            continue;
        }
        let mut area = zone.lock();
        for lists in lists.iter_mut() {
            drained += lists.drain_from(min_order, &mut area);
        }
    }
    drained
}

/// Runs `f` with the per-CPU caches locked (so they cannot change), giving it a way to list
/// the blocks cached for each zone (head pfn and the order of its list). Zone locks may be
/// taken inside (the usual order: cache, then zone).
pub fn with_caches_locked<R>(f: impl FnOnce(&dyn Fn(&Zone, &mut Vec<(u64, u8)>)) -> R) -> R {
    let pcp = PCP.lock();
    let cached_of = |zone: &Zone, out: &mut Vec<(u64, u8)>| {
        for (order, pfns) in pcp.lists[zone_slot(zone)].iter().flat_map(PcpLists::cached) {
            out.extend(pfns.iter().map(|&pfn| (pfn, order)));
        }
    };
    f(&cached_of)
}

/// Most blocks the per-CPU caches can hold for one zone (a buffer this large never grows): per
/// migratetype and order, one over the list's high mark.
pub const PCP_CAPACITY_PER_ZONE: usize = 3 * PCP_SLOTS;

/// Pages held in per-CPU caches, per zone kind.
pub fn cached_pages(zone: &Zone) -> u64 {
    PCP.lock().lists[zone_slot(zone)]
        .iter()
        .map(PcpLists::pages)
        .sum()
}

// ---- Allocation and freeing ----------------------------------------------------------------

static ALLOC_FAILURES: AtomicU64 = AtomicU64::new(0);

fn alloc_from_zone(zone: &'static Zone, request: &AllocRequest) -> Option<u64> {
    if let Some(order_slot) = pcp_order_slot(request.order)
        && let Some(pfn) = alloc_cached(zone, request, order_slot, true)
    {
        return Some(pfn);
    }
    take_from_zone(zone, request)
}

/// A block from `zone`'s free lists, keeping the zone above the request's watermark.
#[inline(always)]
fn take_from_zone(zone: &'static Zone, request: &AllocRequest) -> Option<u64> {
    let mut area = zone.lock();
    let mark = watermark(zone, request);
    if area.free_pages < mark + (1 << request.order) {
        return None;
    }
    let index = area.allocate(request.order, request.kind)?;
    label_allocated(area.frame(index), request);
    Some(area.pfn(index))
}

/// [`alloc_from_zone`], but a zone short of memory that still has deferred memory initialises
/// more of it first (Linux's `deferred_grow_zone`), before a lower zone is tried.
fn alloc_from_zone_or_grow(zone: &'static Zone, request: &AllocRequest) -> Option<u64> {
    loop {
        if let Some(pfn) = alloc_from_zone(zone, request) {
            return Some(pfn);
        }
        if !super::deferred_init::grow_zone(zone, request.order, watermark(zone, request)) {
            return None;
        }
    }
}

/// Allocates `2^order` contiguous pages, or `None` when no allowed zone can give them without
/// going below its watermark.
///
/// The common case is a short path: the first zone the request may use gives the block at
/// once, from its per-CPU list, or, for an order whose list passes blocks through and is
/// empty, from its free lists (under TCG every instruction and every saved register costs: the
/// fast path is short and saves none). Everything else (refill, the max order, other zones,
/// draining, compaction, deflate-on-OOM, zeroing) is [`alloc_slow`].
#[inline(never)]
#[unsafe(link_section = ".text.hot.fast")]
pub fn alloc(request: AllocRequest) -> Option<Pages> {
    // Every path ends in a return or a tail call: nothing is saved on the way.
    match alloc_fast(&request) {
        Fast::Cached(pfn) => Some(Pages::new(pfn, request.order)),
        Fast::FromZone(zone) => alloc_from_first_zone(zone, request),
        Fast::Slow => alloc_slow(request),
    }
}

/// What [`alloc_fast`] found.
enum Fast {
    /// The top of the first zone's per-CPU list.
    Cached(u64),
    /// That list is empty and passes blocks through: the zone's free lists are next.
    FromZone(&'static Zone),
    /// Everything else: [`alloc_slow`].
    Slow,
}

/// The block the first zone `request` may use gives without more ado: the top of its per-CPU
/// list; an empty list that is not refilled (it passes blocks through) sends the request to the
/// zone's free lists. No refill, no other zone, no list-less order: those are
/// [`alloc_slow`]'s.
#[inline(always)]
fn alloc_fast(request: &AllocRequest) -> Fast {
    // Orders above the pageblock order have no per-CPU list (`pcp_order_slot` below).
    if request.has(RequestFlags::ZEROED) || request.kind == MigrateType::Isolate {
        return Fast::Slow;
    }
    let Some(zone) = zones().get(FIRST_ZONE[request.limit as usize].load(Relaxed) as usize) else {
        return Fast::Slow;
    };
    // The max order has no list: its blocks come from the zone, in `alloc_slow` (few callers
    // want 4 MiB; inlining the zone's allocation here would make every call save more).
    let Some(order_slot) = pcp_order_slot(request.order) else {
        return Fast::Slow;
    };
    match alloc_cached(zone, request, order_slot, false) {
        Some(pfn) => Fast::Cached(pfn),
        None if pcp_passes_through(request.order) => Fast::FromZone(zone),
        None => Fast::Slow,
    }
}

/// A block from the free lists of `zone`, the first `request` may use, whose per-CPU list was
/// empty and passes blocks through (above the watermark; else [`alloc_slow`] does the rest).
/// Out of line: the fast path saves no registers.
#[inline(never)]
#[unsafe(link_section = ".text.hot.zone")]
fn alloc_from_first_zone(zone: &'static Zone, request: AllocRequest) -> Option<Pages> {
    match take_from_zone(zone, &request) {
        Some(pfn) => Some(Pages::new(pfn, request.order)),
        None => alloc_slow(request),
    }
}

#[inline(never)]
#[unsafe(link_section = ".text.hot.refill")]
fn alloc_slow(request: AllocRequest) -> Option<Pages> {
    if request.order > MAX_ORDER || request.kind == MigrateType::Isolate {
        log::error!(
            "page allocator: refused a request for order {} {:?}",
            request.order,
            request.kind
        );
        return None;
    }
    let found = candidate_zones(request.limit)
        .find_map(|zone| Some((zone, alloc_from_zone_or_grow(zone, &request)?)));
    let found = found.or_else(|| {
        // Pages sitting in per-CPU caches may complete a larger block, and a cached block of
        // a higher order can serve a smaller request: drain and retry once.
        if drain_for(&request) > 0 {
            candidate_zones(request.limit)
                .find_map(|zone| Some((zone, alloc_from_zone(zone, &request)?)))
        } else {
            None
        }
    });
    let found = found.or_else(|| {
        // Direct compaction: free memory in pieces may make a block of this order (the
        // compaction module decides whether it can help, and whether it may run here).
        candidate_zones(request.limit).find_map(|zone| {
            if request.has(RequestFlags::COMPACT)
                && super::compaction::compact_for_allocation(zone, request.order)
            {
                Some((zone, alloc_from_zone(zone, &request)?))
            } else {
                None
            }
        })
    });
    let found = found.or_else(|| {
        // Deflate-on-OOM: pages the balloon holds come back before the allocation fails. Its
        // 2 MiB blocks are freed like any (a pageblock-order one may wait in a per-CPU list):
        // drained before the retry.
        if request.has(RequestFlags::DEFLATE_ON_OOM)
            && crate::drivers::balloon::deflate_on_oom(1 << request.order) > 0
        {
            drain_for(&request);
            candidate_zones(request.limit)
                .find_map(|zone| Some((zone, alloc_from_zone(zone, &request)?)))
        } else {
            None
        }
    });
    let Some((_, pfn)) = found else {
        ALLOC_FAILURES.fetch_add(1, Relaxed);
        return None;
    };
    let pages = Pages::new(pfn, request.order);
    if request.has(RequestFlags::ZEROED) {
        // SAFETY: the block was just allocated to us and is direct-mapped RAM of this size.
        unsafe { core::ptr::write_bytes(pages.virt() as *mut u8, 0, pages.bytes() as usize) };
    }
    Some(pages)
}

/// Allocates up to `count` blocks as [`alloc`] would each, appending them to `out`, whose room
/// is made first (nothing allocates under a zone's lock). Each zone's lock is taken once for the
/// batch and free blocks are cut into blocks of the order in place
/// (`FreeArea::allocate_batch`: one list operation per free block, not per page), past the
/// per-CPU cache; what the zones cannot give that way is tried one by one through [`alloc`]
/// (which may compact or deflate the balloon). Returns how many blocks it added.
#[unsafe(link_section = ".text.hot.bulk_alloc")]
pub fn alloc_bulk(request: AllocRequest, count: usize, out: &mut Vec<Pages>) -> usize {
    if request.order > MAX_ORDER || request.kind == MigrateType::Isolate {
        log::error!(
            "page allocator: refused a bulk request for order {} {:?}",
            request.order,
            request.kind
        );
        return 0;
    }
    out.reserve(count);
    let start = out.len();
    for zone in candidate_zones(request.limit) {
        let wanted = count - (out.len() - start);
        if wanted == 0 {
            break;
        }
        let base = zone.start_pfn;
        let mut area = zone.lock();
        area.allocate_batch(
            request.order,
            request.kind,
            wanted,
            watermark(zone, &request),
            |index, head| {
                label_allocated(head, &request);
                out.push(Pages::new(base + index as u64, request.order));
            },
        );
    }
    let batched = out.len();
    if request.has(RequestFlags::ZEROED) {
        for pages in &out[start..batched] {
            // SAFETY: each block was just allocated to us and is direct-mapped RAM of its size.
            unsafe { core::ptr::write_bytes(pages.virt() as *mut u8, 0, pages.bytes() as usize) };
        }
    }
    while out.len() - start < count {
        match alloc(request) {
            Some(pages) => out.push(pages),
            None => break,
        }
    }
    out.len() - start
}

/// Frees every block of `pages` (emptying it) as [`free`] would each, but with each zone's lock
/// taken once per run of blocks in that zone, adjacent blocks given back together
/// (`FreeArea::free_batch`: pages that were one block go back as that block) and the per-CPU
/// cache left alone. A block [`free`] would refuse is left out and logged; the first refusal is
/// returned.
#[unsafe(link_section = ".text.hot.bulk_free")]
pub fn free_bulk(pages: &mut Vec<Pages>) -> Result<(), FreeError> {
    let mut result = Ok(());
    let mut freed = 0;
    let mut rest = &pages[..];
    while let Some(first) = rest.first() {
        let Some(zone) = zone_of(first.pfn()) else {
            log::error!(
                "page allocator: refused to free pfn {:#x} order {}: no such frame",
                first.pfn(),
                first.order
            );
            result = result.and(Err(FreeError::NoSuchFrame));
            rest = &rest[1..];
            continue;
        };
        let inside = rest
            .iter()
            .position(|block| !zone.contains(block.pfn()))
            .unwrap_or(rest.len());
        let (run, next) = rest.split_at(inside);
        let mut refusal = None;
        {
            // Under the zone's lock (no preemption) from the claim to the lists: the checker
            // never sees a block in transit.
            let mut area = zone.lock();
            area.free_batch(run.iter().filter_map(|block| {
                let head = zone.frame(block.pfn());
                if let Err(error) = claim(head, block.order, HeadWord::in_transit(block.order)) {
                    refusal = refusal.or(Some((block.pfn(), block.order, error)));
                    return None;
                }
                freed += block.page_count();
                Some(((block.pfn() - zone.start_pfn) as u32, block.order))
            }));
        }
        if let Some((pfn, order, error)) = refusal {
            refused(pfn, order, error);
            result = result.and(Err(error));
        }
        rest = next;
    }
    // Every handle's block is freed now (or was refused): give the handles up without their
    // drop freeing them again.
    for block in pages.drain(..) {
        block.into_raw();
    }
    super::compaction::note_freed(freed);
    result
}

/// Takes the free block whose head is `index` in a locked zone as allocated order-0 pages of
/// `owner` (compaction's targets: the free scanner takes free memory where it finds it),
/// appended to `into` (the caller made room: nothing is allocated under the zone's lock).
/// Returns the block's order and whether it had been reported, or `None` if `index` is not
/// the head of a free block.
pub fn claim_free_block(
    area: &mut FreeArea,
    index: FrameIndex,
    owner: Owner,
    into: &mut Vec<Pages>,
) -> Option<(u8, bool)> {
    let pfn = area.pfn(index);
    let (order, reported) = area.claim_free_block(index, owner as u8)?;
    debug_assert!(into.capacity() - into.len() >= 1 << order);
    // Each page is now an allocated order-0 block of its own, with one handle each.
    into.extend((0..1u64 << order).map(|page| Pages::new(pfn + page, 0)));
    Some((order, reported))
}

/// Labels the allocated block at `pfn` with a new owner (a compaction target becoming a user
/// page, a user page becoming a KSM page): the label only, not the right to free it.
pub fn set_owner(pfn: u64, owner: Owner) {
    if let Some(zone) = zone_of(pfn) {
        let head = zone.frame(pfn);
        debug_assert_eq!(head.state(), FrameState::Allocated);
        head.set_list(owner as u8);
    }
}

/// Frees a block allocated by [`alloc`] (dropping the handle does the same, without the
/// result). A block that is not allocated with this order (a double free through a wrong
/// [`Pages::from_raw`], a reserved frame) is refused with a logged error; nothing changes.
#[inline]
pub fn free(pages: Pages) -> Result<(), FreeError> {
    let (pfn, order) = (pages.pfn(), pages.order);
    core::mem::forget(pages);
    free_block(pfn, order)
}

#[inline]
fn free_block(pfn: u64, order: u8) -> Result<(), FreeError> {
    let result = free_to_lists(pfn, order);
    if let Err(error) = result {
        refused(pfn, order, error);
    }
    result
}

#[cold]
#[inline(never)]
fn refused(pfn: u64, order: u8, error: FreeError) {
    log::error!("page allocator: refused to free pfn {pfn:#x} order {order}: {error:?}")
}

/// Claims the block under the lock of the list it goes to (the per-CPU cache for a block of an
/// order with a list, unless it would complete a 2 MiB or 4 MiB block; its zone otherwise) and
/// puts it there: the claim checks the head and labels it for that list in one store, with
/// preemption off (both locks keep it off), so a second free of the block, on this one CPU,
/// finds it claimed and is refused (`Frame::claim_for_free` says what more CPUs need); and the
/// lock is held from the claim until the block is on a list, so the checker never sees it in
/// transit.
///
/// Pages that reach the zone's lists (not those that stay cached) count towards waking the
/// compaction task ([`super::compaction::note_freed`]).
#[inline]
#[unsafe(link_section = ".text.hot.fast")]
fn free_to_lists(pfn: u64, order: u8) -> Result<(), FreeError> {
    let zone = zone_of(pfn).ok_or(FreeError::NoSuchFrame)?;
    // The pageblock's type decides the list (as Linux), not the type it was allocated as.
    let (head, kind) = zone.frame_and_pageblock_type(pfn);
    match (pcp_order_slot(order), pcp_type_slot(kind)) {
        // Every path below ends in a call or the push: nothing is live across a call, so the
        // common one saves no registers (under TCG each is memory traffic).
        (Some(order_slot), Some(type_slot)) if !may_complete_large_block(order) => {
            free_to_cache(zone, head, pfn, order, kind, (type_slot, order_slot))
        }
        (Some(_), Some(_)) => free_large_block(zone, head, pfn, order, kind),
        _ => free_to_zone(zone, head, pfn, order, Holder::Owner),
    }
}

/// [`free_to_lists`] for a block that goes to the per-CPU list `slots` (its migratetype's and
/// order's): claimed and pushed under the cache's lock; when the list passes its high mark,
/// the oldest batch drains to the zone, or, for a list that passes blocks through, this block
/// goes on to the zone's free lists (`PcpList::push_or_pass`), still under the cache's lock
/// (no checker sees it in transit).
#[inline(always)]
fn free_to_cache(
    zone: &Zone,
    head: &frame::Frame,
    pfn: u64,
    order: u8,
    kind: MigrateType,
    (type_slot, order_slot): (usize, usize),
) -> Result<(), FreeError> {
    let mut pcp = PCP.lock();
    // The claim is one store: a cached block's links are never read.
    let cached = HeadWord::new(FrameState::Cached, order, kind as u8, FrameFlags::empty());
    claim(head, order, cached)?;
    let mut list = pcp.lists[zone_slot(zone)][type_slot].list(order_slot);
    match list.push_or_pass(pfn) {
        Pushed::Kept => Ok(()),
        Pushed::OverHighMark => {
            drain_batch(zone, list);
            Ok(())
        }
        Pushed::PassOn => free_to_zone(zone, head, pfn, order, Holder::Cache),
    }
}

/// [`free_to_lists`] for a block one order below 2 MiB or the max order: to the zone if it
/// completes that block ([`completes_large_block`]), to its per-CPU list otherwise. Out of
/// line (in the `refill` group: the `zone` group's page is full): the common orders' path stays
/// short.
#[inline(never)]
#[unsafe(link_section = ".text.hot.refill")]
fn free_large_block(
    zone: &Zone,
    head: &frame::Frame,
    pfn: u64,
    order: u8,
    kind: MigrateType,
) -> Result<(), FreeError> {
    // (Five arguments, all in registers: the caller keeps no frame for a sixth.)
    match (pcp_order_slot(order), pcp_type_slot(kind)) {
        (Some(order_slot), Some(type_slot))
            if !completes_large_block(zone.frames(), zone.start_pfn, pfn, order) =>
        {
            free_to_cache(zone, head, pfn, order, kind, (type_slot, order_slot))
        }
        _ => free_to_zone(zone, head, pfn, order, Holder::Owner),
    }
}

/// Who hands a block to [`free_to_zone`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// Its owner: the block is claimed under the zone's lock.
    Owner,
    /// The per-CPU cache, whose lock the caller holds: the block was claimed under it, for a
    /// list that passed it on.
    Cache,
}

/// [`free_to_lists`] for a block that goes to its zone's lists (merging), out of line so that
/// the per-CPU path stays small (see the hot text in `boot/kernel.ld`).
#[inline(never)]
#[unsafe(link_section = ".text.hot.zone")]
fn free_to_zone(
    zone: &Zone,
    head: &frame::Frame,
    pfn: u64,
    order: u8,
    from: Holder,
) -> Result<(), FreeError> {
    let mut area = zone.lock();
    if from == Holder::Cache {
        // Claimed already, under the cache's lock (still held): ours to relabel.
        head.relabel(HeadWord::in_transit(order));
    } else {
        claim(head, order, HeadWord::in_transit(order))?;
    }
    area.free((pfn - zone.start_pfn) as u32, order);
    drop(area);
    super::compaction::note_freed(1 << order);
    Ok(())
}

/// Gives the oldest batch of a per-CPU list over its high mark (the bottom of the stack) back to
/// its zone; the warm ones stay.
#[inline(never)]
#[unsafe(link_section = ".text.hot.refill")]
fn drain_batch(zone: &Zone, mut list: PcpList<'_>) {
    // By value: two pointers, in registers (the caller keeps no copy of the list in memory).
    let before = list.pages();
    list.drain_batch(&mut zone.lock());
    super::compaction::note_freed(before - list.pages());
}

/// The transition that frees an allocated head ([`frame::Frame::claim_for_free`]: a check and
/// one store of `label`, under the lock of the list it goes to), and the owner's counts
/// cleared.
#[inline]
fn claim(head: &frame::Frame, order: u8, label: HeadWord) -> Result<(), FreeError> {
    head.claim_for_free(order, label)
        .map_err(|state| match state {
            FrameState::Allocated => FreeError::WrongOrder {
                allocated: head.order(),
            },
            other => FreeError::NotAllocated(other),
        })?;
    head.clear_owner_counts();
    Ok(())
}

/// Why [`split_allocated`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// Not the head of an allocated block of that order (as [`free`] would refuse it).
    NotAllocated(FreeError),
    /// A single page has no halves.
    OrderZero,
    /// The block is mapped (its halves would share mappings and reverse-map entries).
    Mapped,
}

/// Splits an allocated, unmapped block of order 1 or more into its two halves, each an
/// allocated block of one order less with the block's owner and a reference count of 1; the
/// caller frees each half on its own. Nothing else changes: allocated pages per owner stay
/// the same and the frame-state checker sees two allocated blocks (the balloon deflates part
/// of a 2 MiB block this way). Refused with nothing changed otherwise, the block handed back.
pub fn split_allocated(pages: Pages) -> Result<[Pages; 2], (SplitError, Pages)> {
    if let Err(error) = check_allocated(&pages) {
        return Err((SplitError::NotAllocated(error), pages));
    }
    if pages.order == 0 {
        return Err((SplitError::OrderZero, pages));
    }
    let Some(zone) = zone_of(pages.pfn()) else {
        return Err((SplitError::NotAllocated(FreeError::NoSuchFrame), pages));
    };
    let head = zone.frame(pages.pfn());
    if head.mapcount.load(Relaxed) != 0 {
        return Err((SplitError::Mapped, pages));
    }
    let half = pages.order - 1;
    let pfn = pages.into_raw();
    let (low, high) = (pfn, pfn + (1 << half));
    // Under the zone's lock, which the checker holds while it walks the frames: it sees the
    // block whole or split, never half split. The upper half's head was a tail until now.
    let area = zone.lock();
    let upper = zone.frame(high);
    upper.make_head(FrameState::Allocated, half, head.list());
    upper.refcount.store(1, Relaxed);
    upper.mapcount.store(0, Relaxed);
    upper.rmap.store(0, Relaxed);
    head.set_order(half);
    drop(area);
    // The one handle became two, each owning its half.
    Ok([Pages::new(low, half), Pages::new(high, half)])
}

/// Whether `pages` names the head of an allocated block of that order (what [`free`] accepts).
fn check_allocated(pages: &Pages) -> Result<(), FreeError> {
    let zone = zone_of(pages.pfn()).ok_or(FreeError::NoSuchFrame)?;
    let head = zone.frame(pages.pfn());
    match head.state() {
        FrameState::Allocated if head.order() == pages.order => Ok(()),
        FrameState::Allocated => Err(FreeError::WrongOrder {
            allocated: head.order(),
        }),
        other => Err(FreeError::NotAllocated(other)),
    }
}

// ---- Statistics ----------------------------------------------------------------------------

/// Free pages on all buddy lists plus the per-CPU caches plus the deferred ones (free memory
/// whose records are not initialised yet: an allocation that needs it initialises it). The sum
/// does not move while deferred memory is initialised.
pub fn free_pages() -> u64 {
    zones()
        .iter()
        .map(|zone| zone.free_pages() + cached_pages(zone) + zone.deferred_pages())
        .sum()
}

/// Allocations that found no memory.
pub fn alloc_failures() -> u64 {
    ALLOC_FAILURES.load(Relaxed)
}

/// Total RAM managed by the allocator, in pages.
pub fn managed_pages() -> u64 {
    zones().iter().map(|zone| zone.managed_pages).sum()
}

/// Free blocks per zone, order and migratetype (Linux's /proc/pagetypeinfo).
pub fn write_buddyinfo(out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    write!(out, "{:<7} {:<12}", "zone", "type")?;
    for order in 0..=MAX_ORDER {
        write!(out, "{order:>6}")?;
    }
    writeln!(out)?;
    for zone in zones() {
        // Counted under the lock, written after it: `out` may allocate, and nothing may use the
        // heap under a zone's lock (see crate::sync).
        let mut counts = [[0u32; MAX_ORDER as usize + 1]; MigrateType::ALL.len()];
        {
            let area = zone.lock();
            for (row, kind) in counts.iter_mut().zip(MigrateType::ALL) {
                for (order, count) in row.iter_mut().enumerate() {
                    *count = area.list_count(order as u8, kind);
                }
            }
        }
        for (row, kind) in counts.iter().zip(MigrateType::ALL) {
            write!(out, "{:<7} {:<12}", zone.kind.name(), kind.short_name())?;
            for count in row {
                write!(out, "{count:>6}")?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Each zone's size, free memory and watermarks (Linux's /proc/zoneinfo, short).
pub fn write_zoneinfo(out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    writeln!(
        out,
        "{:<7} {:>10} {:>10} {:>10} {:>8} {:>6} {:>6} {:>6} {:>9} {:>8} {:>9}",
        "zone",
        "start_pfn",
        "present",
        "managed",
        "free",
        "min",
        "low",
        "high",
        "pcp",
        "stolen",
        "deferred"
    )?;
    for zone in zones() {
        let (free, stolen, deferred) = {
            let area = zone.lock();
            (
                area.free_pages,
                area.counters.pageblocks_stolen,
                zone.deferred_pages(),
            )
        };
        let mark = zone.watermarks;
        writeln!(
            out,
            "{:<7} {:>#10x} {:>10} {:>10} {:>8} {:>6} {:>6} {:>6} {:>9} {:>8} {:>9}",
            zone.kind.name(),
            zone.start_pfn,
            zone.present_pages,
            zone.managed_pages,
            free,
            mark.min,
            mark.low,
            mark.high,
            cached_pages(zone),
            stolen,
            deferred
        )?;
    }
    Ok(())
}
