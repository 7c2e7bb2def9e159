//! The frame-state checker: walks every zone's frame records and free lists and proves that
//! each frame is in exactly one consistent state.
//!
//! Checks: every listed block is a free head of the list's order and migratetype, naturally
//! aligned, inside the zone, with consistent links, on exactly one list; list counts and the
//! zone's free count match the lists; every frame of the zone is reserved, or covered by
//! exactly one block (free, cached, isolated or allocated) whose other frames are all tails;
//! every cached frame is in a per-CPU cache and vice versa; and every managed page is free,
//! cached, isolated, allocated or deferred (its record not yet initialised), exactly. Only the
//! initialised records are walked (up to each zone's boundary: see `mm::deferred_init`).
//!
//! Reads only. It takes the allocator's locks so the picture is consistent, and allocates
//! nothing while holding them (the heap may need pages, which would take the same locks): its
//! buffers are made before, and its report is written after.

use super::buddy::{MAX_ORDER, MigrateType};
use super::frame::{FrameFlags, FrameState, NONE, Owner};
use super::page_alloc;
use super::zones::ZoneKind;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// What the checker counted, in pages (all zones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCensus {
    pub reserved: u64,
    pub free: u64,
    pub cached: u64,
    pub isolated: u64,
    pub allocated: u64,
    pub free_blocks: u64,
    /// Free pages in reported blocks.
    pub reported: u64,
    /// Allocated pages per [`Owner`].
    pub allocated_by_owner: [u64; Owner::ALL.len()],
    /// User pages being moved by compaction whose mappings already went to the new frame (the
    /// mover frees them next).
    pub migrated_unmapped: u64,
    /// Managed pages whose records are not initialised yet (deferred, free).
    pub deferred: u64,
    /// Records not initialised yet (deferred pages and the holes among them).
    pub uninitialised: u64,
}

/// An inconsistency, described without allocating (formatted once the locks are released).
#[derive(Clone, Copy, Debug)]
struct Problem {
    zone: ZoneKind,
    pfn: u64,
    what: &'static str,
    /// Up to two figures that explain it (meaning given by `what`).
    figures: [u64; 2],
}

struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(bits: usize) -> Bitmap {
        Bitmap(alloc::vec![0; bits.div_ceil(64)])
    }
    fn clear(&mut self) {
        self.0.fill(0);
    }
    /// Sets a bit; false if it was already set.
    fn set(&mut self, bit: usize) -> bool {
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        let was = self.0[word] & mask != 0;
        self.0[word] |= mask;
        !was
    }
    fn get(&self, bit: usize) -> bool {
        self.0[bit / 64] & (1u64 << (bit % 64)) != 0
    }
}

/// Checks every zone, then the reverse map of every user address space, and that every user
/// page allocated is mapped by some space; the first inconsistency found is the error.
///
/// Runs with interrupts off so that no thread changes a mapping between the two walks (one CPU;
/// with several, the spaces' locks would have to be taken together).
pub fn check() -> Result<FrameCensus, String> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let census = check_zones()?;
        // Skipped while a space is being torn down (preempted halfway: a consistent picture
        // does not exist until it finishes).
        let Some(mapped) = super::space::check_reverse_map()? else {
            return Ok(census);
        };
        // KSM pages count as user pages (the zero page only while mapped: KSM holds it).
        super::ksm::check()?;
        let user_pages = census.allocated_by_owner[Owner::UserAnon as usize]
            + census.allocated_by_owner[Owner::KsmShared as usize]
            - census.migrated_unmapped
            - super::ksm::unmapped_zero_page();
        if user_pages != mapped as u64 {
            return Err(format!(
                "{user_pages} user pages allocated but {mapped} mapped by address spaces"
            ));
        }
        Ok(census)
    })
}

fn check_zones() -> Result<FrameCensus, String> {
    let largest = page_alloc::all_zones()
        .iter()
        .map(|zone| zone.frames().len())
        .max()
        .unwrap_or(0);
    let mut listed = Bitmap::new(largest);
    let mut cached = Bitmap::new(largest);
    let mut cached_pfns = Vec::with_capacity(page_alloc::PCP_CAPACITY_PER_ZONE);
    let result = page_alloc::with_caches_locked(|cached_of| {
        let mut census = FrameCensus::default();
        for zone in page_alloc::all_zones() {
            listed.clear();
            cached.clear();
            cached_pfns.clear();
            cached_of(zone, &mut cached_pfns);
            check_zone(zone, &mut listed, &mut cached, &cached_pfns, &mut census)?;
        }
        Ok(census)
    });
    result.map_err(|problem: Problem| {
        format!(
            "{} pfn {:#x}: {} ({}, {})",
            problem.zone.name(),
            problem.pfn,
            problem.what,
            problem.figures[0],
            problem.figures[1]
        )
    })
}

fn check_zone(
    zone: &super::zone::Zone,
    listed: &mut Bitmap,
    cached: &mut Bitmap,
    cached_pfns: &[(u64, u8)],
    census: &mut FrameCensus,
) -> Result<(), Problem> {
    let area = zone.lock();
    // The boundary moves only under the zone's lock: this picture is consistent.
    let frames = zone.frames();
    let in_buddy_before = census.free + census.cached + census.isolated + census.allocated;
    let problem = |pfn: u64, what: &'static str, figures: [u64; 2]| Problem {
        zone: zone.kind,
        pfn,
        what,
        figures,
    };
    let mut listed_pages = 0;
    for order in 0..=MAX_ORDER {
        let mut reported_pages = 0;
        for kind in MigrateType::ALL {
            let mut count = 0;
            let mut previous = NONE;
            let (reported_count, boundary) = area.reported_run(order, kind);
            let mut reported_seen = 0u32;
            for index in area.list_iter(order, kind) {
                let frame = area.frame(index);
                let pfn = area.pfn(index);
                let list = [order as u64, kind as u64];
                if frame.state() != FrameState::Free {
                    return Err(problem(
                        pfn,
                        "listed block is not Free (list order, type)",
                        list,
                    ));
                }
                if frame.order() != order || frame.list() != kind as u8 {
                    return Err(problem(
                        pfn,
                        "listed block records another list (order, type)",
                        list,
                    ));
                }
                if !pfn.is_multiple_of(1 << order) || index as usize + (1 << order) > frames.len() {
                    return Err(problem(
                        pfn,
                        "listed block misaligned or past the zone (order, type)",
                        list,
                    ));
                }
                if frame.prev() != previous {
                    return Err(problem(
                        pfn,
                        "broken prev link (prev, expected)",
                        [frame.prev() as u64, previous as u64],
                    ));
                }
                if !listed.set(index as usize) {
                    return Err(problem(
                        pfn,
                        "block on more than one list (order, type)",
                        list,
                    ));
                }
                // The reported run: one stretch at the tail, starting at the boundary.
                let reported = frame.flags().contains(FrameFlags::REPORTED);
                if reported && reported_seen == 0 && boundary != Some(index) {
                    return Err(problem(
                        pfn,
                        "first reported block is not the boundary (order, type)",
                        list,
                    ));
                }
                if !reported && reported_seen > 0 {
                    return Err(problem(
                        pfn,
                        "unreported block behind the boundary (order, type)",
                        list,
                    ));
                }
                if reported {
                    reported_seen += 1;
                    reported_pages += 1u64 << order;
                }
                previous = index;
                count += 1;
                listed_pages += 1u64 << order;
            }
            if reported_seen != reported_count || (reported_seen == 0) != boundary.is_none() {
                let pfn = (order as u64) << 8 | kind as u64;
                return Err(problem(
                    pfn,
                    "reported run differs from its count (linked, count)",
                    [reported_seen as u64, reported_count as u64],
                ));
            }
            if area.list_end(order, kind, super::buddy::End::Tail)
                != (previous != NONE).then_some(previous)
            {
                let pfn = (order as u64) << 8 | kind as u64;
                return Err(problem(
                    pfn,
                    "list tail is not the last block linked (linked, tail)",
                    [
                        previous as u64,
                        area.list_end(order, kind, super::buddy::End::Tail)
                            .map_or(NONE as u64, u64::from),
                    ],
                ));
            }
            if count != area.list_count(order, kind) {
                let pfn = (order as u64) << 8 | kind as u64;
                return Err(problem(
                    pfn,
                    "list count differs (linked, count)",
                    [count as u64, area.list_count(order, kind) as u64],
                ));
            }
        }
        if reported_pages != area.reported_pages(order) {
            return Err(problem(
                order as u64,
                "reported pages of an order differ (linked, count)",
                [reported_pages, area.reported_pages(order)],
            ));
        }
    }
    if listed_pages != area.free_pages {
        return Err(problem(
            0,
            "free count differs from the lists (listed, count)",
            [listed_pages, area.free_pages],
        ));
    }
    for &(pfn, list_order) in cached_pfns {
        let Some(index) = area.index_of(pfn) else {
            return Err(problem(pfn, "cached block outside the zone", [0, 0]));
        };
        if !cached.set(index as usize) {
            return Err(problem(pfn, "block cached twice", [0, 0]));
        }
        let order = area.frame(index).order();
        if order != list_order {
            return Err(problem(
                pfn,
                "cached block's order is not its list's (order, list order)",
                [order as u64, list_order as u64],
            ));
        }
    }
    let mut index = 0usize;
    let mut marked_cached = 0u64;
    while index < frames.len() {
        let frame = &frames[index];
        let pfn = area.pfn(index as u32);
        let order = frame.order();
        let span = 1usize << order;
        match frame.state() {
            FrameState::Reserved => {
                census.reserved += 1;
                index += 1;
                continue;
            }
            FrameState::Tail => {
                return Err(problem(pfn, "tail frame that no block covers", [0, 0]));
            }
            FrameState::Free => {
                if !listed.get(index) {
                    return Err(problem(
                        pfn,
                        "free block on no list (order, -)",
                        [order as u64, 0],
                    ));
                }
                census.free += span as u64;
                census.free_blocks += 1;
            }
            FrameState::Cached => {
                if !cached.get(index) {
                    return Err(problem(
                        pfn,
                        "marked cached but in no per-CPU cache (order, -)",
                        [order as u64, 0],
                    ));
                }
                census.cached += span as u64;
                marked_cached += 1;
            }
            FrameState::Isolated => census.isolated += span as u64,
            FrameState::Allocated => {
                census.allocated += span as u64;
                census.allocated_by_owner[frame.owner() as usize] += span as u64;
                if frame.flags().contains(FrameFlags::MIGRATING)
                    && frame.mapcount.load(core::sync::atomic::Ordering::Relaxed) == 0
                {
                    census.migrated_unmapped += 1;
                }
            }
        }
        if frame.flags().contains(FrameFlags::REPORTED) {
            if frame.state() != FrameState::Free {
                return Err(problem(
                    pfn,
                    "reported flag on a block that is not free (state, -)",
                    [frame.state() as u64, 0],
                ));
            }
            census.reported += span as u64;
        }
        if !pfn.is_multiple_of(span as u64) || index + span > frames.len() {
            return Err(problem(
                pfn,
                "block misaligned or past the zone (order, -)",
                [order as u64, 0],
            ));
        }
        if let Some(offset) = frames
            .sub(index + 1..index + span)
            .iter()
            .position(|tail| tail.state() != FrameState::Tail)
        {
            return Err(problem(
                pfn + 1 + offset as u64,
                "frame inside a block is not a tail (block pfn, order)",
                [pfn, order as u64],
            ));
        }
        index += span;
    }
    if marked_cached != cached_pfns.len() as u64 {
        return Err(problem(
            0,
            "cached blocks differ (in caches, marked)",
            [cached_pfns.len() as u64, marked_cached],
        ));
    }
    let in_buddy =
        census.free + census.cached + census.isolated + census.allocated - in_buddy_before;
    let deferred = zone.deferred_pages();
    if in_buddy + deferred != zone.managed_pages {
        return Err(problem(
            0,
            "managed pages are not the allocator's plus the deferred (allocator's + deferred, managed)",
            [in_buddy + deferred, zone.managed_pages],
        ));
    }
    census.deferred += deferred;
    census.uninitialised += zone.end_pfn - zone.start_pfn - frames.len() as u64;
    Ok(())
}
