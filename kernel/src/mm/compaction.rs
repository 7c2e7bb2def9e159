//! Compaction: moves movable pages out of the way so that free memory forms whole 2 MiB blocks
//! again (which the allocator can hand out as huge blocks and free page reporting can give to
//! the host), the fragmentation score that says when that is needed, and the proactive thread.
//!
//! Owns the scanners' state, the per-pageblock skip hints, the deferral state per zone, the
//! proactive thread and the counters (Linux's names). Reaches the free lists only through the
//! zone's interface (`claim_free_block`, list counts), pages only through [`super::migrate`].
//!
//! A pass over a zone (Linux's shape): a migrate scanner climbs from the zone's start through
//! movable pageblocks and isolates up to 32 user pages at a time; a free scanner descends from
//! the zone's end (its initialised boundary while `mm::deferred_init` has records left to
//! write) and claims free blocks smaller than a pageblock (never whole free 2 MiB blocks:
//! filling one to empty another gains nothing) from movable pageblocks as targets, unreported
//! ones first (a reported target is memory the host must fault back in: counted as
//! `compact_reported_targets`). Each isolated page moves to a target; the pass ends when the
//! scanners meet. Blocks isolated for reporting are never taken (only free heads on the lists
//! are claimed), and claimed targets are off the lists, so reporting never sees them.
//!
//! Modes: `Async` (a failed allocation's first try: stops as soon as a block of the wanted
//! order exists, honours skip hints), `SyncLight` (the proactive thread: whole zone, ignores
//! skip hints as Linux's proactive compaction does), `Full` (console `compact`: whole zone,
//! ignores and clears skip hints). Every pass sets the hints it learns.

use super::buddy::{MAX_ORDER, MigrateType, PAGEBLOCK_ORDER};
use super::frame::{FrameFlags, FrameState, Owner};
use super::migrate;
use super::page_alloc::{self, Pages};
use super::zone::Zone;
use crate::task::{self, WaitQueue};
use crate::time::Instant;
use crate::tunables;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use core::time::Duration;

/// How hard a pass tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Async,
    SyncLight,
    Full,
}

/// Pages isolated by the migrate scanner at a time (Linux's COMPACT_CLUSTER_MAX).
const CLUSTER: usize = 32;

/// How long a background pass works before it yields to other ready threads (it yields only
/// between pageblocks): against a task that keeps the CPU busy, about 2 ms of every 12.
const WORK_BETWEEN_YIELDS: Duration = Duration::from_millis(2);

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Compaction counters since boot, with Linux's names.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[allow(non_snake_case)]
        pub struct CompactionStats { $(pub $name: u64,)* }
        #[allow(non_upper_case_globals)]
        mod counter { use core::sync::atomic::AtomicU64; $(pub static $name: AtomicU64 = AtomicU64::new(0);)* }
        pub fn stats() -> CompactionStats {
            CompactionStats { $($name: counter::$name.load(Relaxed),)* }
        }
    };
}

counters!(
    compact_migrate_scanned,
    compact_free_scanned,
    compact_isolated,
    compact_stall,
    compact_fail,
    compact_success,
    compact_daemon_wake,
    compact_passes,
    compact_deferred,
    compact_reported_targets,
    pgmigrate_success,
    pgmigrate_fail,
);

fn count(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Relaxed);
}

// ---- Fragmentation figures -----------------------------------------------------------------

/// Free blocks per order in a zone (all migratetypes; per-CPU pages not included).
fn free_blocks(zone: &Zone) -> [u64; MAX_ORDER as usize + 1] {
    let mut blocks = [0u64; MAX_ORDER as usize + 1];
    let area = zone.lock();
    for (order, slot) in blocks.iter_mut().enumerate() {
        *slot = MigrateType::ALL
            .iter()
            .map(|&kind| u64::from(area.list_count(order as u8, kind)))
            .sum();
    }
    blocks
}

/// Linux's `extfrag_for_order`: the share (0..=100) of free memory that is not in blocks of
/// at least `order`.
pub fn extfrag(zone: &Zone, order: u8) -> u64 {
    let blocks = free_blocks(zone);
    let free: u64 = blocks.iter().enumerate().map(|(k, n)| n << k).sum();
    if free == 0 {
        return 0;
    }
    let suitable: u64 = blocks
        .iter()
        .enumerate()
        .skip(order as usize)
        .map(|(k, n)| n << (k - order as usize))
        .sum();
    (free - (suitable << order)) * 100 / free
}

/// A zone's fragmentation score: extfrag at the pageblock order.
pub fn zone_score(zone: &Zone) -> u64 {
    extfrag(zone, PAGEBLOCK_ORDER)
}

/// The node's score: zone scores weighted by zone size (small zones count for little).
pub fn node_score() -> u64 {
    let zones = page_alloc::all_zones();
    let present: u64 = zones.iter().map(|zone| zone.present_pages).sum();
    zones
        .iter()
        .map(|zone| zone.present_pages * zone_score(zone) / (present + 1))
        .sum()
}

/// Linux's fragmentation index for `order`: -1000 when a block of that order is free, near 0
/// when an allocation would fail for lack of memory, near 1000 when it would fail because free
/// memory is in pieces.
pub fn fragmentation_index(zone: &Zone, order: u8) -> i64 {
    let blocks = free_blocks(zone);
    if blocks.iter().skip(order as usize).any(|&n| n > 0) {
        return -1000;
    }
    let free: u64 = blocks.iter().enumerate().map(|(k, n)| n << k).sum();
    let total: u64 = blocks.iter().sum();
    if total == 0 {
        return 0;
    }
    1000 - ((1000 + free * 1000 / (1 << order)) / total) as i64
}

/// Free memory in movable pageblocks in blocks below `reporting.min_order`: what free page
/// reporting cannot give to the host until compaction makes whole blocks of it (pages). Pieces
/// in unmovable pageblocks are left out: compaction cannot help them.
pub fn stranded_pages() -> u64 {
    let min_order = tunables::REPORTING_MIN_ORDER.get() as u8;
    page_alloc::all_zones()
        .iter()
        .map(|zone| {
            let area = zone.lock();
            (0..min_order)
                .map(|order| u64::from(area.list_count(order, MigrateType::Movable)) << order)
                .sum::<u64>()
        })
        .sum()
}

// ---- One pass ------------------------------------------------------------------------------

/// Per-pageblock "nothing to isolate here" hints, per zone (allocated on first use).
static SKIP: spin::Once<Vec<Vec<AtomicBool>>> = spin::Once::new();

fn skip_hints(zone_index: usize) -> &'static [AtomicBool] {
    let all = SKIP.call_once(|| {
        page_alloc::all_zones()
            .iter()
            .map(|zone| {
                let blocks = zone.lock().pageblock_count();
                (0..blocks).map(|_| AtomicBool::new(false)).collect()
            })
            .collect()
    });
    &all[zone_index]
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub migrated: u64,
    pub failed: u64,
    /// Free blocks of the pageblock order and up, before and after.
    pub huge_blocks_before: u64,
    pub huge_blocks_after: u64,
    /// Pageblocks the background task left because they were too full to empty cheaply
    /// (`compaction.max_used_pct`), and those it tried (cheap, not empty).
    pub too_full: u64,
    pub cheap_blocks: u64,
}

fn huge_blocks(zone: &Zone) -> u64 {
    free_blocks(zone)
        .iter()
        .enumerate()
        .skip(PAGEBLOCK_ORDER as usize)
        .map(|(k, n)| n << (k - PAGEBLOCK_ORDER as usize))
        .sum()
}

fn has_free_block(zone: &Zone, order: u8) -> bool {
    free_blocks(zone)
        .iter()
        .skip(order as usize)
        .any(|&n| n > 0)
}

/// The free scanner: claims targets from pageblock `slot` (free blocks below the pageblock
/// order in a movable pageblock), unreported blocks first, until `targets` holds `wanted`.
fn claim_targets(zone: &Zone, slot: usize, wanted: usize, targets: &mut Vec<Pages>) {
    let mut area = zone.lock();
    let (start, end) = area.pageblock_range(slot);
    if area.pageblock_type(start) != MigrateType::Movable {
        return;
    }
    for take_reported in [false, true] {
        let mut index = start;
        while index < end && targets.len() < wanted {
            let frame = area.frame(index);
            let order = frame.order();
            if frame.state() == FrameState::Free && order < PAGEBLOCK_ORDER {
                count(&counter::compact_free_scanned, 1);
                let reported = frame.flags().contains(FrameFlags::REPORTED);
                // Room for the whole block (the target list never grows under the lock).
                if reported == take_reported
                    && targets.len() + (1 << order) <= targets.capacity()
                    && let Some((order, reported)) =
                        page_alloc::claim_free_block(&mut area, index, Owner::Kernel, targets)
                    && reported
                {
                    count(&counter::compact_reported_targets, 1 << order);
                }
                index += 1 << order;
            } else if frame.state() == FrameState::Free {
                index += 1 << order;
            } else {
                index += 1;
            }
        }
    }
}

/// Whether pageblock `slot` lies inside a free block larger than a pageblock (its first frame
/// is then a tail, which the scanners would otherwise step over one frame at a time: 512 reads
/// for nothing in every second pageblock of free memory).
fn in_larger_free_block(zone: &Zone, slot: usize) -> bool {
    let (start, _) = zone.lock().pageblock_range(slot);
    let head = start & !((1u32 << MAX_ORDER) - 1);
    if head == start {
        return false;
    }
    let frame = zone.frame(zone.start_pfn + u64::from(head));
    matches!(frame.state(), FrameState::Free | FrameState::Isolated)
        && head + (1u32 << frame.order()) > start
}

/// Pages of pageblock `slot` in allocated or reserved blocks, counted up to `limit + 1` (a
/// glance without the zone's lock: a hint; a block whose head lies in an earlier pageblock is
/// not counted). Stops past `limit`: a full block costs a third of a walk.
fn used_pages_up_to(zone: &Zone, slot: usize, limit: u64) -> u64 {
    let (start, end) = zone.lock().pageblock_range(slot);
    let mut index = start;
    let mut used = 0;
    while index < end && used <= limit {
        let frame = zone.frame(zone.start_pfn + u64::from(index));
        let step = match frame.state() {
            FrameState::Free | FrameState::Isolated => 1 << frame.order(),
            FrameState::Allocated => {
                let pages = (1u32 << frame.order()).min(end - index);
                used += u64::from(pages);
                pages
            }
            FrameState::Reserved => {
                used += 1;
                1
            }
            FrameState::Tail | FrameState::Cached => 1,
        };
        index += step;
    }
    used
}

/// The migrate scanner: isolates up to [`CLUSTER`] user pages of pageblock `slot`, from frame
/// index `from` (and, with `balloon`, lists single ballooned pages, which the balloon worker
/// moves); returns where it stopped.
fn isolate_from(
    zone: &Zone,
    slot: usize,
    from: u32,
    pages: &mut Vec<u64>,
    balloon: Option<&mut Vec<u64>>,
) -> u32 {
    let mut balloon = balloon;
    let (start, end) = zone.lock().pageblock_range(slot);
    let mut index = from.max(start);
    while index < end && pages.len() < CLUSTER {
        let pfn = zone.start_pfn + u64::from(index);
        let frame = zone.frame(pfn);
        count(&counter::compact_migrate_scanned, 1);
        match frame.state() {
            FrameState::Free | FrameState::Isolated => index += 1 << frame.order(),
            FrameState::Allocated
                if matches!(frame.owner(), Owner::UserAnon | Owner::KsmShared)
                    && migrate::isolate_user_page(pfn) =>
            {
                pages.push(pfn);
                count(&counter::compact_isolated, 1);
                index += 1;
            }
            FrameState::Allocated
                if frame.owner() == Owner::Balloon
                    && frame.order() == 0
                    && balloon.as_ref().is_some_and(|list| list.len() < CLUSTER) =>
            {
                if let Some(list) = balloon.as_deref_mut() {
                    list.push(pfn);
                }
                index += 1;
            }
            FrameState::Allocated => index += 1 << frame.order(),
            _ => index += 1,
        }
    }
    index
}

/// One compaction pass over `zone` in `mode`; with `goal`, stops once a free block of that
/// order exists. Never holds a zone's lock while it moves pages.
pub fn compact_zone(zone: &'static Zone, mode: Mode, goal: Option<u8>) -> PassReport {
    let zone_index = page_alloc::all_zones()
        .iter()
        .position(|z| core::ptr::eq(z, zone))
        .unwrap_or(0);
    let hints = skip_hints(zone_index);
    if mode == Mode::Full {
        hints.iter().for_each(|hint| hint.store(false, Relaxed));
    }
    count(&counter::compact_passes, 1);
    let mut report = PassReport {
        huge_blocks_before: huge_blocks(zone),
        ..PassReport::default()
    };
    let blocks = hints.len();
    let mut pages: Vec<u64> = Vec::with_capacity(CLUSTER);
    // Ballooned pages move through the balloon worker, which a pass may wait for: not in a
    // failed allocation's pass (that may be the worker's own).
    let mut ballooned: Vec<u64> = Vec::with_capacity(CLUSTER);
    let move_balloon = mode != Mode::Async && crate::drivers::balloon::is_present();
    let mut targets: Vec<Pages> = Vec::with_capacity(CLUSTER + (1 << PAGEBLOCK_ORDER));
    // The free scanner starts at the initialised boundary (records beyond it are not written
    // yet: see `mm::deferred_init`); memory initialised during the pass waits for the next one.
    let mut free_slot = zone.initialised_pageblocks().min(blocks);
    let mut migrate_slot = 0;
    let mut since_yield = Instant::now();
    // The background task empties only blocks cheap to empty (`compaction.max_used_pct`).
    let max_used = (tunables::COMPACTION_MAX_USED_PCT.get() << PAGEBLOCK_ORDER) / 100;
    'pass: while migrate_slot < free_slot {
        let movable = {
            let area = zone.lock();
            let (start, _) = area.pageblock_range(migrate_slot);
            area.pageblock_type(start) == MigrateType::Movable
        };
        if !movable || (mode == Mode::Async && hints[migrate_slot].load(Relaxed)) {
            migrate_slot += 1;
            continue;
        }
        if in_larger_free_block(zone, migrate_slot) {
            migrate_slot += 1;
            continue;
        }
        if mode == Mode::SyncLight {
            match used_pages_up_to(zone, migrate_slot, max_used) {
                0 => {}
                used if used > max_used => {
                    report.too_full += 1;
                    migrate_slot += 1;
                    continue;
                }
                _ => report.cheap_blocks += 1,
            }
        }
        let mut from = 0;
        let mut isolated_any = false;
        loop {
            pages.clear();
            ballooned.clear();
            let (_, end) = zone.lock().pageblock_range(migrate_slot);
            from = isolate_from(
                zone,
                migrate_slot,
                from,
                &mut pages,
                move_balloon.then_some(&mut ballooned),
            );
            if pages.is_empty() && ballooned.is_empty() {
                break;
            }
            isolated_any = true;
            let wanted = pages.len() + ballooned.len();
            // Targets from the top, never from the block being emptied or below it.
            while targets.len() < wanted && free_slot > migrate_slot + 1 {
                claim_targets(zone, free_slot - 1, wanted, &mut targets);
                if targets.len() < wanted {
                    free_slot -= 1;
                }
            }
            // Each page to its target; a target not used goes back for the next page.
            for (pfn, user) in ballooned
                .iter()
                .map(|&pfn| (pfn, false))
                .chain(pages.iter().map(|&pfn| (pfn, true)))
            {
                let moved = match targets.pop() {
                    Some(target) => {
                        let unused = if user {
                            migrate::migrate_user_page(pfn, target)
                                .err()
                                .map(|(_, t)| t)
                        } else {
                            crate::drivers::balloon::migrate_page(pfn, target)
                                .err()
                                .map(|(_, t)| t)
                        };
                        let moved = unused.is_none();
                        targets.extend(unused);
                        moved
                    }
                    None => false,
                };
                if user {
                    migrate::release_user_page(pfn);
                }
                if moved {
                    report.migrated += 1;
                    count(&counter::pgmigrate_success, 1);
                } else {
                    report.failed += 1;
                    count(&counter::pgmigrate_fail, 1);
                }
            }
            if targets.is_empty() && free_slot <= migrate_slot + 1 {
                break 'pass;
            }
            if from >= end {
                break;
            }
        }
        if !isolated_any {
            hints[migrate_slot].store(true, Relaxed);
        }
        migrate_slot += 1;
        if let Some(order) = goal
            && (report.migrated > 0 || mode == Mode::Async)
        {
            page_alloc::drain_per_cpu_caches();
            if has_free_block(zone, order) {
                break;
            }
        }
        // Let others run between pageblocks once the pass has worked for a while (the
        // proactive thread must not hog the CPU); a pageblock with nothing to move costs a few
        // microseconds and yields nothing: yielding after each gave a busy task a whole time
        // slice per pageblock, and a pass that had to walk 800 MiB of free pageblocks reached
        // the freed pieces only after the task had stopped freeing.
        if mode != Mode::Async && since_yield.elapsed() >= WORK_BETWEEN_YIELDS {
            task::yield_now();
            since_yield = Instant::now();
        }
    }
    // Targets not used go back.
    drop(targets);
    page_alloc::drain_per_cpu_caches();
    report.huge_blocks_after = huge_blocks(zone);
    if report.huge_blocks_after > report.huge_blocks_before {
        count(&counter::compact_success, 1);
        // Whole 2 MiB blocks are new: the reporting worker gives them to the host (if there
        // is one: a request nobody takes would keep reporting from ever looking idle).
        if super::reporting::is_registered() {
            super::reporting::request();
        }
    } else {
        count(&counter::compact_fail, 1);
    }
    report
}

/// Compacts every zone fully (console `compact`, like `/proc/sys/vm/compact_memory`).
pub fn compact_all() -> PassReport {
    let mut total = PassReport::default();
    for zone in page_alloc::all_zones() {
        let report = counted_pass(zone, Mode::Full, None);
        total.migrated += report.migrated;
        total.failed += report.failed;
        total.huge_blocks_before += report.huge_blocks_before;
        total.huge_blocks_after += report.huge_blocks_after;
    }
    total
}

// ---- Direct compaction: a failed allocation of order >= 1 ----------------------------------

/// Linux's deferral, per zone: after a failed pass, skip the next 2^shift attempts (shift up
/// to 6) for orders at or above the one that failed.
struct Deferral {
    considered: AtomicU64,
    shift: AtomicU64,
    order_failed: AtomicU64,
}

const MAX_DEFER_SHIFT: u64 = 6;
static DEFERRAL: [Deferral; 3] = [const {
    Deferral {
        considered: AtomicU64::new(0),
        shift: AtomicU64::new(0),
        order_failed: AtomicU64::new(MAX_ORDER as u64 + 1),
    }
}; 3];
/// Passes running now, of any kind: direct compaction never nests in one (the pass's own
/// allocations) and does not pile onto one running in the background. A count, so one pass
/// ending does not clear another's mark.
static PASSES_RUNNING: AtomicU64 = AtomicU64::new(0);

/// Runs one pass with [`PASSES_RUNNING`] counting it.
fn counted_pass(zone: &'static Zone, mode: Mode, goal: Option<u8>) -> PassReport {
    PASSES_RUNNING.fetch_add(1, Relaxed);
    let report = compact_zone(zone, mode, goal);
    PASSES_RUNNING.fetch_sub(1, Relaxed);
    report
}

/// Forgets a zone's skip hints (they go stale as memory is used again: Linux resets them when
/// a pass fails or the proactive task starts).
fn clear_skip_hints(zone: &Zone) {
    if let Some(index) = page_alloc::all_zones()
        .iter()
        .position(|z| core::ptr::eq(z, zone))
    {
        skip_hints(index)
            .iter()
            .for_each(|hint| hint.store(false, Relaxed));
    }
}

fn deferred(zone: &Zone, order: u8) -> bool {
    let state = &DEFERRAL[zone.kind as usize];
    if u64::from(order) < state.order_failed.load(Relaxed) {
        return false;
    }
    let considered = state.considered.fetch_add(1, Relaxed) + 1;
    let limit = 1 << state.shift.load(Relaxed);
    if considered >= limit {
        state.considered.store(0, Relaxed);
        return false;
    }
    true
}

fn defer(zone: &Zone, order: u8) {
    let state = &DEFERRAL[zone.kind as usize];
    state.considered.store(0, Relaxed);
    let shift = (state.shift.load(Relaxed) + 1).min(MAX_DEFER_SHIFT);
    state.shift.store(shift, Relaxed);
    state.order_failed.fetch_min(u64::from(order), Relaxed);
}

fn success(zone: &Zone, order: u8) {
    let state = &DEFERRAL[zone.kind as usize];
    state.considered.store(0, Relaxed);
    state.shift.store(0, Relaxed);
    state.order_failed.store(u64::from(order) + 1, Relaxed);
}

/// Called by the allocator when an allocation of `order` found no block in `zone`: compacts
/// the zone (asynchronously, until a block of that order exists) if that can help, and says
/// whether to retry. Only where moving pages is allowed: no lock held (pages are moved under
/// address-space locks, which come first in the lock order), interrupts on, not inside a pass.
pub fn compact_for_allocation(zone: &'static Zone, order: u8) -> bool {
    if order == 0
        || crate::sync::held_classes() != 0
        || !crate::sync::preemptible()
        || !x86_64::instructions::interrupts::are_enabled()
        || PASSES_RUNNING.load(Relaxed) != 0
    {
        return false;
    }
    // Suitability: enough free memory above the watermark, and (above order 3) the
    // fragmentation index says pieces, not shortage.
    if zone.free_pages() < zone.watermarks.min + (2 << order) {
        return false;
    }
    if order > 3 {
        let index = fragmentation_index(zone, order);
        if index <= tunables::COMPACTION_EXTFRAG_THRESHOLD.get() as i64 {
            return false;
        }
    }
    if deferred(zone, order) {
        count(&counter::compact_deferred, 1);
        return false;
    }
    count(&counter::compact_stall, 1);
    counted_pass(zone, Mode::Async, Some(order));
    let found = has_free_block(zone, order);
    if found {
        success(zone, order);
    } else {
        // The hints this pass followed may be stale: the next try (after the deferral)
        // scans everything again.
        clear_skip_hints(zone);
        defer(zone, order);
    }
    found
}

// ---- The proactive task --------------------------------------------------------------------

static WAKE: WaitQueue = WaitQueue::new();
static REQUESTED: AtomicBool = AtomicBool::new(false);
static STARTED: AtomicBool = AtomicBool::new(false);
/// Pages freed since the task last looked.
static FREED_SINCE_CHECK: AtomicU64 = AtomicU64::new(0);
/// Pages freed between two looks at the score (16 MiB): frees are the event that can
/// fragment memory, so an idle guest takes no timer for compaction.
const CHECK_EVERY_PAGES: u64 = 4096;
/// No-progress back-off (Linux: 500 ms << 6).
const BACKOFF: Duration = Duration::from_secs(32);
static BACKOFF_UNTIL_NS: AtomicU64 = AtomicU64::new(0);
/// Stranded memory (pages) below which a wake does not start a pass: after a pass that found
/// every piece in blocks too full to empty cheaply (0: none).
static WAIT_FOR_STRANDED: AtomicU64 = AtomicU64::new(0);

/// Asks the background task to look at the fragmentation now, ending a back-off (a changed
/// tunable, the console, tests: someone wants it to try again).
pub fn poke() {
    BACKOFF_UNTIL_NS.store(0, Relaxed);
    WAIT_FOR_STRANDED.store(0, Relaxed);
    wake();
}

fn wake() {
    REQUESTED.store(true, Relaxed);
    WAKE.wake_all();
}

/// Set by [`consolidate`]: the next look compacts down to the low marks even if memory is not
/// above the high ones.
static CONSOLIDATE: AtomicBool = AtomicBool::new(false);

/// KSM freed many single pages (duplicates merged) and is done for now: their memory lies in
/// 4 KiB holes between the pages that stay, and may be below the stranded memory that starts
/// the task (`compaction.stranded_high_mib`) yet far from what the host should get back. The
/// task looks now, ends a back-off, and compacts down to its low marks once.
pub fn consolidate() {
    CONSOLIDATE.store(true, Relaxed);
    poke();
}

/// The allocator tells of the pages its frees put on a zone's free lists (a free to the zone, a
/// per-CPU list's overflow; pages that stay cached fragment nothing): every 16 MiB, the
/// background task looks. Takes no lock but the scheduler's (allowed anywhere).
pub fn note_freed(pages: u64) {
    if FREED_SINCE_CHECK.fetch_add(pages, Relaxed) + pages >= CHECK_EVERY_PAGES {
        FREED_SINCE_CHECK.store(0, Relaxed);
        if STARTED.load(Relaxed) {
            wake();
        }
    }
}

/// Starts the background task (once).
pub fn start() {
    if STARTED.swap(true, Relaxed) {
        return;
    }
    match task::spawn("kcompactd", daemon) {
        Ok(handle) => DAEMON_THREAD.store(handle.id().as_u64() + 1, Relaxed),
        Err(error) => {
            log::error!("compaction: the background task did not start: {error:?}");
            STARTED.store(false, Relaxed);
        }
    }
}

/// The background task's thread id + 1 (0: not started).
static DAEMON_THREAD: AtomicU64 = AtomicU64::new(0);

/// CPU time the background task has used since boot (ns).
pub fn daemon_cpu_ns() -> u64 {
    match DAEMON_THREAD.load(Relaxed) {
        0 => 0,
        id => task::scheduler::cpu_time_ns(task::ThreadId::from_u64(id - 1)).unwrap_or(0),
    }
}

/// The marks the background task works between, from `compaction.proactiveness` (Linux's
/// rule: low = 100 - p, at least 5; high = low + 10).
pub fn score_marks() -> (u64, u64) {
    let proactiveness = tunables::COMPACTION_PROACTIVENESS.get();
    let low = 100u64.saturating_sub(proactiveness).max(5);
    (low, (low + 10).min(100))
}

fn mib_to_pages(mib: u64) -> u64 {
    mib * 256
}

/// Whether the background task should start: score above its high mark, or more stranded free
/// memory than the host can be left without.
pub fn should_compact() -> bool {
    if tunables::COMPACTION_PROACTIVENESS.get() == 0 {
        return false;
    }
    let (_, high) = score_marks();
    node_score() > high
        || stranded_pages() > mib_to_pages(tunables::COMPACTION_STRANDED_HIGH_MIB.get())
}

fn done_with(zone: &Zone) -> bool {
    let (low, _) = score_marks();
    zone_score(zone) <= low
        && stranded_pages() <= mib_to_pages(tunables::COMPACTION_STRANDED_LOW_MIB.get())
}

/// Memory is short (the allocator is near its low watermarks): compaction yields.
fn under_pressure() -> bool {
    let low: u64 = page_alloc::all_zones()
        .iter()
        .map(|zone| zone.watermarks.low)
        .sum();
    page_alloc::free_pages() < low
}

/// How long after a wake the background task looks once more, with no event: the frees of a
/// burst go on after the wake that the last 16 MiB raised.
const SETTLE: Duration = Duration::from_secs(1);

/// The pages freed last wait in the per-CPU cache, and a workload that frees in a random order
/// leaves each in a different 2 MiB block, which cannot merge while it is there (128 pages can
/// strand 256 MiB, and no later free raises the reporting trigger). When free memory is
/// stranded, they go back to the zones first: the merges that follow raise the reporting
/// trigger, and often nothing is left to migrate. Cheap: the cache holds a few hundred pages.
fn drain_if_stranded() {
    if stranded_pages() > mib_to_pages(tunables::COMPACTION_STRANDED_LOW_MIB.get())
        && page_alloc::drain_per_cpu_caches() > 0
        && super::reporting::is_registered()
    {
        // The merges may have made whole blocks, fewer than the reporting trigger counts and
        // after its last pass (the footprint benchmark kept 23 MiB so after its churn): the
        // reporting worker looks now.
        super::reporting::request();
    }
}

fn daemon() {
    let mut settle = false;
    loop {
        if settle {
            let _ = WAKE.wait_until_timeout(|| REQUESTED.load(Relaxed), SETTLE);
        } else {
            WAKE.wait_until(|| REQUESTED.load(Relaxed));
        }
        // Woken by an event: one more look SETTLE later; woken by that timeout: no more.
        settle = REQUESTED.swap(false, Relaxed);
        if tunables::COMPACTION_PROACTIVENESS.get() == 0 {
            continue;
        }
        drain_if_stranded();
        if !settle || stranded_pages() <= mib_to_pages(tunables::COMPACTION_STRANDED_LOW_MIB.get())
        {
            // A quiet second after the frees (this is the look SETTLE after the last event),
            // or what was waited for has merged or been allocated: start afresh. The frees
            // may have ended short of the stranded memory waited for, leaving blocks that are
            // cheap to empty now (KSM merging interleaved duplicates does).
            WAIT_FOR_STRANDED.store(0, Relaxed);
        }
        // The look a quiet second after the frees finishes the job down to the low mark: a
        // burst that ended with less than `compaction.stranded_high_mib` stranded, and passes
        // that lagged behind it, would otherwise leave that much with the host for as long as
        // the guest stays idle (29 MiB after the footprint benchmark's fragmenting shrink).
        let finish = !settle
            && tunables::COMPACTION_PROACTIVENESS.get() > 0
            && stranded_pages() > mib_to_pages(tunables::COMPACTION_STRANDED_LOW_MIB.get());
        // KSM asks for one consolidation down to the low marks when its pass ends
        // (`ksm::consolidate`); while it merges, the frees (its duplicates) start nothing.
        let asked = CONSOLIDATE.swap(false, Relaxed)
            && page_alloc::all_zones().iter().any(|zone| !done_with(zone));
        let by_frees = !super::ksm::consolidation_pending() && (should_compact() || finish);
        if Instant::now().as_nanos() < BACKOFF_UNTIL_NS.load(Relaxed)
            || !(asked || by_frees)
            || (!asked && stranded_pages() < WAIT_FOR_STRANDED.load(Relaxed))
        {
            continue;
        }
        WAIT_FOR_STRANDED.store(0, Relaxed);
        count(&counter::compact_daemon_wake, 1);
        let stranded_before = stranded_pages();
        let score_before = node_score();
        let mut migrated = 0;
        let mut made_blocks = false;
        let (mut too_full, mut cheap_blocks) = (0, 0);
        for zone in page_alloc::all_zones() {
            clear_skip_hints(zone);
            while !done_with(zone) && !under_pressure() {
                let report = counted_pass(zone, Mode::SyncLight, None);
                migrated += report.migrated;
                too_full += report.too_full;
                cheap_blocks += report.cheap_blocks;
                if report.migrated == 0 || report.huge_blocks_after <= report.huge_blocks_before {
                    break;
                }
                made_blocks = true;
            }
        }
        // Progress: whole blocks made, or less stranded (or a lower score) than before. While a
        // task is still freeing, stranded memory can grow during a pass that made blocks.
        let progress = migrated > 0
            && (made_blocks || stranded_pages() < stranded_before || node_score() < score_before);
        if progress {
            BACKOFF_UNTIL_NS.store(0, Relaxed);
        } else if too_full > cheap_blocks {
            // The pieces lie mostly in blocks still too full to empty cheaply (the few cheap
            // ones held little or nothing movable: a kernel page, a page pinned for a moment):
            // while a task frees in a random order, or KSM merges, they empty as it goes on. No
            // back-off; look again once another `compaction.stranded_high_mib` is stranded (a
            // pass walks every pageblock), or a quiet second after the frees.
            WAIT_FOR_STRANDED.store(
                stranded_pages() + mib_to_pages(tunables::COMPACTION_STRANDED_HIGH_MIB.get()),
                Relaxed,
            );
        } else {
            // Unmovable pages fragment memory: no point in trying again soon. The first event
            // after the back-off starts it again (no timer).
            BACKOFF_UNTIL_NS.store((Instant::now() + BACKOFF).as_nanos(), Relaxed);
        }
    }
}

/// Whether no compaction pass is running or asked for (for accounting that must not see the
/// target pages a pass holds).
pub fn is_idle() -> bool {
    PASSES_RUNNING.load(Relaxed) == 0 && !REQUESTED.load(Relaxed)
}

/// Whether the background task is backing off now (after a pass without progress).
pub fn backing_off() -> bool {
    Instant::now().as_nanos() < BACKOFF_UNTIL_NS.load(Relaxed)
}
