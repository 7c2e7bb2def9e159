//! A host-side stand-in for the kernel's page allocator (`mm::page_alloc`), built from this
//! crate's parts the way the kernel builds it: zones (lowest first) each with a [`FreeArea`]
//! and a min watermark, allocation from the highest zone a limit allows, the per-CPU cache
//! ([`PcpLists`]) in front of orders 0..=9 with the same refill and drain, the check and store
//! that claim a block being freed under the lock of its list, and the labels the kernel gives
//! allocated heads.
//!
//! Owns its zones' frame records (leaked: they live as long as the program, as the kernel's
//! do). For the host tests, the model test and the native benchmark; the kernel does not use
//! it. Left out: compaction, the balloon, the reporting worker, zeroing, owners (every block
//! is `Owner::Kernel`). Its locks are never contended (it takes `&mut self`): they are there
//! to charge what the kernel pays to take and release them: for a zone's, the preemption count
//! and an atomic swap and a store (`sync::PreemptMutex`); for the per-CPU cache's, the
//! preemption count and a plain check and store of its flag (`sync::LocalLock`).

use crate::buddy::{FreeArea, MigrateType};
use crate::check::{AreaCensus, CheckError};
use crate::frame::{Frame, FrameFlags, FrameIndex, FrameState, FrameTable, HeadWord, Owner};
use crate::pcp::{PcpLists, Pushed, completes_large_block, pcp_order_slot};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The cost of the kernel's count of preemption-off sections (`sync::PreemptMutex`,
/// `sync::LocalLock`): a plain increment and decrement. Each lock keeps its own here (the cost
/// is the same, and the host tests run simulators on several threads at once).
#[derive(Default)]
struct PreemptCount(AtomicU32);

impl PreemptCount {
    #[inline]
    fn disable(&self) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
    }
    #[inline]
    fn enable(&self) {
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        self.0
            .store(self.0.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
    }
}

/// An uncontended zone lock's cost (`sync::PreemptMutex`): see the module's documentation.
#[derive(Default)]
struct CostLock(AtomicBool, PreemptCount);

impl CostLock {
    #[inline]
    fn take(&self) {
        self.1.disable();
        while self.0.swap(true, Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
    #[inline]
    fn give(&self) {
        self.0.store(false, Ordering::Release);
        self.1.enable();
    }
}

/// The per-CPU cache's lock's cost (`sync::LocalLock`): see the module's documentation.
#[derive(Default)]
struct CostLocalLock(AtomicBool, PreemptCount);

impl CostLocalLock {
    #[inline]
    fn take(&self) {
        self.1.disable();
        assert!(!self.0.load(Ordering::Relaxed), "local lock taken twice");
        self.0.store(true, Ordering::Relaxed);
    }
    #[inline]
    fn give(&self) {
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        self.0.store(false, Ordering::Relaxed);
        self.1.enable();
    }
}

/// One zone: its span of frame numbers, its allocator and its min watermark.
pub struct SimZone {
    pub start_pfn: u64,
    pub end_pfn: u64,
    pub area: FreeArea,
    /// Free pages an allocation must leave in the zone.
    pub mark: u64,
    lock: CostLock,
}

/// The per-CPU lists of one zone, per allocatable migratetype (and order of
/// [`crate::pcp::PCP_ORDERS`]).
type ZoneCache = [PcpLists; 3];

pub struct Sim {
    zones: Vec<SimZone>,
    pcp: Vec<ZoneCache>,
    pcp_lock: CostLocalLock,
}

/// The list slot of an allocatable migratetype in the per-CPU cache.
fn pcp_slot(kind: MigrateType) -> Option<usize> {
    (kind != MigrateType::Isolate).then_some(kind as usize)
}

/// Adds frames `start..end` (indices of `area`'s zone) to the free lists as the largest naturally
/// aligned blocks that fit, as the kernel's boot does.
pub fn add_free_range(area: &mut FreeArea, start: u32, end: u32) {
    for index in start..end {
        area.frame(index).set_state(FrameState::Tail);
    }
    area.add_free_run(start, end);
}

impl Sim {
    /// Zones over `spans` (start and end pfn, lowest first), each free but for the pfns inside
    /// `reserved` (start and end pfn), with min watermark `mark` each.
    pub fn new(spans: &[(u64, u64)], reserved: &[(u64, u64)], mark: u64) -> Sim {
        let mut zones = Vec::new();
        for &(start_pfn, end_pfn) in spans {
            let frames = FrameTable::leak(start_pfn, (end_pfn - start_pfn) as usize);
            let mut area = FreeArea::new(start_pfn, frames);
            // The free runs between reserved ranges.
            let mut cursor = start_pfn;
            let mut holes: Vec<(u64, u64)> = reserved.to_vec();
            holes.sort_unstable();
            holes.push((end_pfn, end_pfn));
            for (hole_start, hole_end) in holes {
                let run_end = hole_start.clamp(cursor, end_pfn);
                if run_end > cursor {
                    add_free_range(
                        &mut area,
                        (cursor - start_pfn) as u32,
                        (run_end - start_pfn) as u32,
                    );
                }
                cursor = cursor.max(hole_end.min(end_pfn));
            }
            zones.push(SimZone {
                start_pfn,
                end_pfn,
                area,
                mark,
                lock: CostLock::default(),
            });
        }
        let pcp = (0..zones.len())
            .map(|_| [PcpLists::new(), PcpLists::new(), PcpLists::new()])
            .collect();
        Sim {
            zones,
            pcp,
            pcp_lock: CostLocalLock::default(),
        }
    }

    pub fn zones(&self) -> &[SimZone] {
        &self.zones
    }

    pub fn zone_mut(&mut self, zone: usize) -> &mut SimZone {
        &mut self.zones[zone]
    }

    /// The zone holding `pfn`.
    pub fn zone_of(&self, pfn: u64) -> Option<usize> {
        self.zones
            .iter()
            .position(|zone| (zone.start_pfn..zone.end_pfn).contains(&pfn))
    }

    /// The record of `pfn`.
    pub fn frame(&self, pfn: u64) -> Option<&'static Frame> {
        let zone = &self.zones[self.zone_of(pfn)?];
        Some(zone.area.frame((pfn - zone.start_pfn) as FrameIndex))
    }

    /// Allocates `2^order` pages of `kind` from zones `0..zones` (the highest first), as the
    /// kernel's `page_alloc::alloc`: orders 0..=9 through the per-CPU cache; before
    /// failing an order above 0, the caches are drained and the zones tried once more.
    pub fn alloc(&mut self, order: u8, kind: MigrateType, zones: usize) -> Option<u64> {
        let zones = zones.min(self.zones.len());
        let found = (0..zones)
            .rev()
            .find_map(|zone| self.alloc_from(zone, order, kind));
        found.or_else(|| {
            if order > 0 && self.drain() > 0 {
                (0..zones)
                    .rev()
                    .find_map(|zone| self.alloc_from(zone, order, kind))
            } else {
                None
            }
        })
    }

    fn alloc_from(&mut self, zone: usize, order: u8, kind: MigrateType) -> Option<u64> {
        if let Some(order_slot) = pcp_order_slot(order)
            && let Some(slot) = pcp_slot(kind)
        {
            self.pcp_lock.take();
            let mut list = self.pcp[zone][slot].list(order_slot);
            if list.is_empty() && !list.passes_through() {
                let zone = &mut self.zones[zone];
                zone.lock.take();
                list.refill(&mut zone.area, kind, zone.mark);
                zone.lock.give();
            }
            let pfn = list.pop();
            if let Some(pfn) = pfn {
                let zone = &self.zones[zone];
                label_allocated(zone.area.frame((pfn - zone.start_pfn) as FrameIndex), order);
            }
            self.pcp_lock.give();
            if pfn.is_some() {
                return pfn;
            }
        }
        let zone = &mut self.zones[zone];
        zone.lock.take();
        let index = if zone.area.free_pages >= zone.mark + (1 << order) {
            zone.area.allocate(order, kind)
        } else {
            None
        };
        if let Some(index) = index {
            label_allocated(zone.area.frame(index), order);
        }
        zone.lock.give();
        Some(zone.area.pfn(index?))
    }

    /// Frees a block [`Sim::alloc`] gave, as the kernel's `page_alloc::free`: refused (nothing
    /// changes) with the state found if `pfn` is not the head of an allocated block of `order`.
    /// Claimed ([`Frame::claim_for_free`]) under the lock of the list it goes to.
    pub fn free(&mut self, pfn: u64, order: u8) -> Result<(), FrameState> {
        let zone_index = self.zone_of(pfn).ok_or(FrameState::Reserved)?;
        let zone = &mut self.zones[zone_index];
        let index = (pfn - zone.start_pfn) as u32;
        let head = zone.area.frame(index);
        let kind = zone.area.pageblock_type(index);
        if let Some(order_slot) = pcp_order_slot(order)
            && let Some(slot) = pcp_slot(kind)
            && !completes_large_block(zone.area.frames(), zone.start_pfn, pfn, order)
        {
            self.pcp_lock.take();
            // The claim is one store, as the kernel's: a cached block's links are never read.
            let claimed = head.claim_for_free(
                order,
                HeadWord::new(FrameState::Cached, order, kind as u8, FrameFlags::empty()),
            );
            if claimed.is_ok() {
                head.clear_owner_counts();
                let mut list = self.pcp[zone_index][slot].list(order_slot);
                let pushed = list.push_or_pass(pfn);
                if pushed != Pushed::Kept {
                    zone.lock.take();
                    if pushed == Pushed::PassOn {
                        // Claimed under the cache's lock (still held): ours to relabel.
                        head.relabel(HeadWord::in_transit(order));
                        zone.area.free(index, order);
                    } else {
                        list.drain_batch(&mut zone.area);
                    }
                    zone.lock.give();
                }
            }
            self.pcp_lock.give();
            return claimed;
        }
        zone.lock.take();
        let claimed = head.claim_for_free(order, HeadWord::in_transit(order));
        if claimed.is_ok() {
            head.clear_owner_counts();
            zone.area.free(index, order);
        }
        zone.lock.give();
        claimed
    }

    /// Allocates `count` blocks as [`Sim::alloc`] would, appending them to `out`: each zone's
    /// lock once, whole free blocks cut in place ([`FreeArea::allocate_batch`]), the per-CPU
    /// cache bypassed; what the zones cannot give at once is tried one by one. Returns how many
    /// it got.
    pub fn alloc_bulk(
        &mut self,
        order: u8,
        kind: MigrateType,
        zones: usize,
        count: usize,
        out: &mut Vec<(u64, u8)>,
    ) -> usize {
        out.reserve(count);
        let mut got = 0;
        let allowed = zones.min(self.zones.len());
        for zone in self.zones[..allowed].iter_mut().rev() {
            if got == count {
                break;
            }
            zone.lock.take();
            let base = zone.start_pfn;
            got += zone
                .area
                .allocate_batch(order, kind, count - got, zone.mark, |index, head| {
                    label_allocated(head, order);
                    out.push((base + index as u64, order));
                });
            zone.lock.give();
        }
        while got < count {
            let Some(pfn) = self.alloc(order, kind, zones) else {
                break;
            };
            out.push((pfn, order));
            got += 1;
        }
        got
    }

    /// Frees `blocks` as [`Sim::free`] would each, but each zone's lock once per run of blocks
    /// in one zone, and adjacent blocks together ([`FreeArea::free_batch`]), bypassing the
    /// per-CPU cache. A block `free` would refuse is skipped; the first refusal is returned.
    pub fn free_bulk(&mut self, blocks: &[(u64, u8)]) -> Result<(), FrameState> {
        let mut refused = Ok(());
        let mut rest = blocks;
        while let Some(&(first, _)) = rest.first() {
            let Some(zone) = self.zone_of(first) else {
                refused = refused.and(Err(FrameState::Reserved));
                rest = &rest[1..];
                continue;
            };
            let zone = &mut self.zones[zone];
            let inside = rest
                .iter()
                .position(|&(pfn, _)| !(zone.start_pfn..zone.end_pfn).contains(&pfn))
                .unwrap_or(rest.len());
            let (frames, base) = (zone.area.frames(), zone.start_pfn);
            zone.lock.take();
            zone.area
                .free_batch(rest[..inside].iter().filter_map(|&(pfn, order)| {
                    let index = (pfn - base) as FrameIndex;
                    let head = &frames[index as usize];
                    if let Err(state) = head.claim_for_free(order, HeadWord::in_transit(order)) {
                        refused = refused.and(Err(state));
                        return None;
                    }
                    head.clear_owner_counts();
                    Some((index, order))
                }));
            zone.lock.give();
            rest = &rest[inside..];
        }
        refused
    }

    /// Gives every cached block back to its zone; returns how many pages.
    pub fn drain(&mut self) -> u64 {
        self.drain_from(0)
    }

    /// Gives every cached block of `min_order` and up back to its zone (what the reporting
    /// worker does before a pass); returns how many pages.
    pub fn drain_from(&mut self, min_order: u8) -> u64 {
        let mut drained = 0;
        self.pcp_lock.take();
        for (zone, lists) in self.zones.iter_mut().zip(self.pcp.iter_mut()) {
            zone.lock.take();
            for lists in lists.iter_mut() {
                drained += lists.drain_from(min_order, &mut zone.area);
            }
            zone.lock.give();
        }
        self.pcp_lock.give();
        drained
    }

    /// Free pages: on the lists and in the caches.
    pub fn free_pages(&self) -> u64 {
        self.zones
            .iter()
            .map(|zone| zone.area.free_pages)
            .sum::<u64>()
            + self.cached_pages()
    }

    /// Free pages in the per-CPU caches.
    pub fn cached_pages(&self) -> u64 {
        self.pcp.iter().flatten().map(PcpLists::pages).sum()
    }

    /// Checks every zone ([`FreeArea::check`]) and that the caches hold exactly the cached
    /// frames; returns the census of all zones.
    pub fn check(&self) -> Result<AreaCensus, CheckError> {
        let mut total = AreaCensus::default();
        for (zone, lists) in self.zones.iter().zip(&self.pcp) {
            let census = zone.area.check()?;
            let mut cached = 0;
            for (slot, order, pfns) in lists.iter().enumerate().flat_map(|(slot, lists)| {
                lists.cached().map(move |(order, pfns)| (slot, order, pfns))
            }) {
                for &pfn in pfns {
                    let frame = self
                        .frame(pfn)
                        .filter(|_| (zone.start_pfn..zone.end_pfn).contains(&pfn));
                    match frame {
                        Some(frame)
                            if frame.state() == FrameState::Cached
                                && frame.list() == slot as u8
                                && frame.order() == order => {}
                        _ => {
                            return Err(CheckError {
                                what: "a cached pfn is not a cached frame of its zone and list",
                                at: pfn,
                            });
                        }
                    }
                    cached += 1u64 << order;
                }
            }
            if cached != census.cached {
                return Err(CheckError {
                    what: "cached frames and the caches' pages differ",
                    at: zone.start_pfn,
                });
            }
            total.reserved += census.reserved;
            total.free += census.free;
            total.cached += census.cached;
            total.isolated += census.isolated;
            total.allocated += census.allocated;
            total.free_blocks += census.free_blocks;
            total.reported += census.reported;
        }
        Ok(total)
    }
}

/// Makes a block just taken off a list the head of an allocated block, as the kernel does.
fn label_allocated(head: &Frame, order: u8) {
    // One store, as the kernel's: an allocated block's links are never read.
    head.relabel(HeadWord::new(
        FrameState::Allocated,
        order,
        Owner::Kernel as u8,
        FrameFlags::empty(),
    ));
    head.refcount.store(1, Ordering::Relaxed);
}
