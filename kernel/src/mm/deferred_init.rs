//! Deferred initialisation of the page-frame database (Linux's deferred struct page init), so
//! that boot does not grow with memory: at boot each zone gets its records written only until
//! it has enough free memory to run on ([`EAGER_FREE_PAGES`] above its high watermark); a
//! background thread, `pgdatinit`, writes the rest chunk by chunk and gives each chunk's free
//! pages to the buddy allocator. An allocation that would fail in a zone with deferred memory
//! first initialises more of it on the spot ([`grow_zone`], Linux's `deferred_grow_zone`).
//!
//! Owns: the free RAM ranges the memory map gave (which pages beyond a boundary are free), the
//! worker thread, its hold switch and the counters. Touches: the records at and beyond a
//! zone's initialised boundary (nobody else reads them), the zone's lists only through
//! `add_initial_block`, and the boundary and deferred count through
//! [`Zone::advance_initialised`], all under the zone's lock. So a chunk appears whole or not at
//! all to every walker (the frame-state checker, compaction's scanners, reporting, the
//! balloon), and `page_alloc::free_pages` (lists + caches + deferred) does not move while
//! memory is initialised.
//!
//! A chunk is a max-order block of absolute pfns (4 MiB, clipped to the zone), so the buddy of
//! any initialised block is initialised: merging never reads a record beyond the boundary.
//! `mm.deferred_init=0` initialises everything at boot (the old way).

use super::PAGE_SIZE;
use super::buddy::MAX_ORDER;
use super::frame::{self, FrameState};
use super::page_alloc;
use super::zone::Zone;
use crate::task::{self, WaitQueue};
use crate::time::Instant;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};
use core::time::Duration;
use spin::Once;

/// Pages initialised at a time under the zone's lock: one max-order block (4 MiB; about 150 us
/// of record writes under TCG).
pub const CHUNK_PAGES: u64 = 1 << MAX_ORDER;
/// Free pages each zone gets at boot beyond its high watermark (32 MiB): what the kernel needs
/// to reach its main thread, with room to spare.
pub const EAGER_FREE_PAGES: u64 = (32 << 20) / PAGE_SIZE;
/// Least free memory an allocation that found a zone short initialises (32 MiB, as Linux
/// grows by whole sections): fewer, larger stalls.
pub const GROW_PAGES: u64 = (32 << 20) / PAGE_SIZE;
/// The worker gives the CPU away after this much work, so that it takes a small share while
/// other threads run and all of it while they sleep.
const WORKER_SLICE: Duration = Duration::from_millis(2);

/// Free RAM (pfn ranges, sorted, disjoint) from the memory map, without what boot reserved.
static FREE_RANGES: Once<Vec<(u64, u64)>> = Once::new();

static HELD: AtomicBool = AtomicBool::new(false);
static HOLD_QUEUE: WaitQueue = WaitQueue::new();
static DONE: AtomicBool = AtomicBool::new(false);
static DONE_QUEUE: WaitQueue = WaitQueue::new();

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// What deferred initialisation did (pages are 4 KiB frames).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct DeferredStats { $($(#[$doc])* pub $name: u64,)* }
        #[allow(non_upper_case_globals)]
        mod counter { use core::sync::atomic::AtomicU64; $(pub static $name: AtomicU64 = AtomicU64::new(0);)* }
        fn load() -> DeferredStats {
            DeferredStats { $($name: counter::$name.load(Relaxed),)* }
        }
    };
}

counters!(
    /// Records written at boot (frames, free or reserved).
    boot_frames,
    /// Time spent writing them at boot (ns).
    boot_ns,
    /// Managed pages left deferred at boot.
    deferred_at_boot,
    /// Records written by the worker, and the free pages they gave the allocator.
    worker_frames,
    worker_pages,
    /// Time the worker spent writing them (ns, its work only, not its waits).
    worker_ns,
    /// Records written for allocations that found a zone short, their free pages, and how
    /// many times that happened.
    on_demand_frames,
    on_demand_pages,
    on_demand_grows,
    /// Time spent on demand (ns).
    on_demand_ns,
    /// Uptime when the last record was written (ns; 0 until then).
    done_at_ns,
);

/// The counters, with the pages still deferred.
pub fn stats() -> DeferredStats {
    load()
}

/// Managed pages not yet initialised, all zones.
pub fn deferred_pages() -> u64 {
    page_alloc::all_zones()
        .iter()
        .map(Zone::deferred_pages)
        .sum()
}

/// Whether every record of every zone is initialised.
pub fn is_done() -> bool {
    DONE.load(Relaxed) || all_initialised()
}

fn all_initialised() -> bool {
    page_alloc::all_zones()
        .iter()
        .all(|zone| zone.initialised_end_pfn() >= zone.end_pfn)
}

/// The free pfn ranges of the memory map (called once, by `page_alloc::init`).
pub(super) fn set_free_ranges(ranges: Vec<(u64, u64)>) {
    FREE_RANGES.call_once(|| ranges);
}

/// The zone's managed pages: free RAM of the map inside its span.
pub(super) fn managed_pages_in(start_pfn: u64, end_pfn: u64, free: &[(u64, u64)]) -> u64 {
    free.iter()
        .map(|&(start, end)| end.min(end_pfn).saturating_sub(start.max(start_pfn)))
        .sum()
}

/// Where the chunk that starts at `pfn` ends: the next max-order boundary, or the zone's end.
fn chunk_end(pfn: u64, zone_end: u64) -> u64 {
    ((pfn / CHUNK_PAGES + 1) * CHUNK_PAGES).min(zone_end)
}

/// Initialises the next chunk of `zone` (if any is left): writes its records, links its free
/// pages as blocks (largest aligned first) and moves the boundary. Returns (records written,
/// free pages added).
fn init_next_chunk(zone: &Zone) -> (u64, u64) {
    let free_ranges = FREE_RANGES.get().map_or(&[][..], Vec::as_slice);
    let mut area = zone.lock();
    let start = zone.initialised_end_pfn();
    if start >= zone.end_pfn {
        return (0, 0);
    }
    let end = chunk_end(start, zone.end_pfn);
    let records = zone.all_records();
    let slice = |from: u64, to: u64| {
        records.sub((from - zone.start_pfn) as usize..(to - zone.start_pfn) as usize)
    };
    let mut freed = 0;
    let mut at = start;
    for &(free_start, free_end) in free_ranges {
        let (free_start, free_end) = (free_start.max(start), free_end.min(end));
        if free_end <= free_start {
            continue;
        }
        // SAFETY: records at and beyond the boundary are read by nobody, and written only
        // here, under the zone's lock, which we hold.
        unsafe {
            frame::init_records(slice(at, free_start), FrameState::Reserved);
            frame::init_records(slice(free_start, free_end), FrameState::Tail);
        }
        area.add_free_run(
            (free_start - zone.start_pfn) as u32,
            (free_end - zone.start_pfn) as u32,
        );
        freed += free_end - free_start;
        at = free_end;
    }
    // SAFETY: as above.
    unsafe { frame::init_records(slice(at, end), FrameState::Reserved) };
    zone.advance_initialised(&area, end, freed);
    (end - start, freed)
}

/// Initialises `zone` at boot: all of it with `everything`, otherwise until it has
/// [`EAGER_FREE_PAGES`] free above its high watermark. Returns the records written.
pub(super) fn init_at_boot(zone: &Zone, everything: bool) -> u64 {
    let started = Instant::now();
    let wanted = zone.watermarks.high + EAGER_FREE_PAGES;
    let mut frames = 0;
    while zone.initialised_end_pfn() < zone.end_pfn && (everything || zone.free_pages() < wanted) {
        frames += init_next_chunk(zone).0;
    }
    counter::boot_frames.fetch_add(frames, Relaxed);
    counter::boot_ns.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
    counter::deferred_at_boot.fetch_add(zone.deferred_pages(), Relaxed);
    frames
}

/// Called when an allocation of `order` found `zone` without room above `mark`: initialises
/// at least [`GROW_PAGES`] of its deferred memory and on until the zone has `mark` + the
/// block free. False if the zone had nothing left to initialise.
pub fn grow_zone(zone: &Zone, order: u8, mark: u64) -> bool {
    if zone.initialised_end_pfn() >= zone.end_pfn {
        return false;
    }
    let started = Instant::now();
    let (mut frames, mut pages) = (0, 0);
    while pages < GROW_PAGES || zone.free_pages() < mark + (1 << order) {
        let (written, freed) = init_next_chunk(zone);
        if written == 0 {
            break;
        }
        frames += written;
        pages += freed;
    }
    if frames == 0 {
        return false;
    }
    counter::on_demand_frames.fetch_add(frames, Relaxed);
    counter::on_demand_pages.fetch_add(pages, Relaxed);
    counter::on_demand_grows.fetch_add(1, Relaxed);
    counter::on_demand_ns.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
    // No log here: the caller may hold locks a log line's formatting would need (the heap's).
    // The worker says when all is done; waiters learn now (a wake is safe under any lock).
    if all_initialised() {
        DONE_QUEUE.wake_all();
    }
    true
}

/// Stops the worker at its next chunk (`true`) or lets it go on (`false`). For tests that
/// need deferred memory to stay deferred, and for measurements.
pub fn hold(held: bool) {
    HELD.store(held, Relaxed);
    if !held {
        HOLD_QUEUE.wake_all();
    }
}

/// Whether the worker is held.
pub fn is_held() -> bool {
    HELD.load(Relaxed)
}

/// Waits until every record is initialised or `timeout` passes; true if done.
pub fn wait_until_done(timeout: Duration) -> bool {
    DONE_QUEUE.wait_until_timeout(is_done, timeout);
    is_done()
}

/// Starts the worker (once, after the scheduler is up). With nothing deferred it only marks
/// the work done.
pub fn start() {
    if finish_if_done() {
        return;
    }
    if let Err(error) = task::spawn("pgdatinit", worker) {
        log::error!(
            "deferred init: the worker did not start ({error:?}); memory is initialised as allocations need it"
        );
    }
}

fn worker() {
    // Highest zone first: allocations try it first.
    for zone in page_alloc::all_zones().iter().rev() {
        while zone.initialised_end_pfn() < zone.end_pfn {
            HOLD_QUEUE.wait_until(|| !HELD.load(Relaxed));
            let started = Instant::now();
            let (mut frames, mut pages) = (0, 0);
            while started.elapsed() < WORKER_SLICE {
                let (written, freed) = init_next_chunk(zone);
                if written == 0 {
                    break;
                }
                frames += written;
                pages += freed;
            }
            counter::worker_frames.fetch_add(frames, Relaxed);
            counter::worker_pages.fetch_add(pages, Relaxed);
            counter::worker_ns.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
            task::yield_now();
        }
    }
    finish_if_done();
}

/// Marks the work done (once) when no zone has records left to write: logs it, wakes the
/// waiters and asks free page reporting to look at the new memory. True if done.
fn finish_if_done() -> bool {
    if DONE.load(Relaxed) {
        return true;
    }
    if !all_initialised() {
        return false;
    }
    if DONE.swap(true, Relaxed) {
        return true;
    }
    let now = crate::time::uptime_ns().unwrap_or(0);
    counter::done_at_ns.store(now, Relaxed);
    let stats = stats();
    let later = stats.worker_frames + stats.on_demand_frames;
    if later > 0 {
        let work_ns = stats.worker_ns + stats.on_demand_ns;
        log::info!(
            "deferred init: done {} ms after boot: {} MiB of frames initialised after boot in {} us of work ({} us per GiB), {} MiB of them on demand in {} allocations",
            now / 1_000_000,
            later >> 8,
            work_ns / 1000,
            per_gib_us(work_ns, later),
            stats.on_demand_frames >> 8,
            stats.on_demand_grows,
        );
        // New free memory for the host (only with a worker to take the request: without one
        // it would stay pending and the reporting worker would never look idle).
        if super::reporting::is_registered() {
            super::reporting::request();
        }
    }
    DONE_QUEUE.wake_all();
    true
}

/// Microseconds per GiB of frames for `ns` spent on `frames` records.
pub fn per_gib_us(ns: u64, frames: u64) -> u64 {
    (ns as u128 * 262_144 / 1000 / frames.max(1) as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test_case]
    fn chunks_end_at_max_order_boundaries_or_the_zone_end() {
        assert_eq!(chunk_end(0, 1 << 20), CHUNK_PAGES);
        assert_eq!(chunk_end(0x1000, 1 << 20), 0x1000 + CHUNK_PAGES);
        // A zone starting off a boundary: its first chunk is short, the next ones whole.
        assert_eq!(chunk_end(0x1001, 1 << 20), 0x1400);
        assert_eq!(chunk_end(0x1400, 0x1500), 0x1500);
    }

    #[test_case]
    fn managed_pages_are_the_free_ranges_inside_the_span() {
        let free = [
            (0x100, 0x9f),
            (0x100, 0x200),
            (0x300, 0x1000),
            (0x1000, 0x3000),
        ];
        assert_eq!(managed_pages_in(0, 0x1000, &free), 0x100 + 0xd00);
        assert_eq!(managed_pages_in(0x1000, 0x2000, &free), 0x1000);
        assert_eq!(managed_pages_in(0x4000, 0x5000, &free), 0);
    }

    #[test_case]
    fn every_zone_is_initialised_and_the_checker_agrees() {
        // The test kernel waits for the worker before its tests (see `testing::run_tests`).
        assert!(is_done(), "deferred init not done: {:?}", stats());
        for zone in page_alloc::all_zones() {
            assert_eq!(zone.initialised_end_pfn(), zone.end_pfn, "{:?}", zone.kind);
            assert_eq!(zone.deferred_pages(), 0, "{:?}", zone.kind);
            assert_eq!(zone.frames().len() as u64, zone.end_pfn - zone.start_pfn);
        }
        let stats = stats();
        assert_eq!(
            stats.boot_frames + stats.worker_frames + stats.on_demand_frames,
            page_alloc::all_zones()
                .iter()
                .map(|zone| zone.end_pfn - zone.start_pfn)
                .sum::<u64>(),
            "every record written exactly once: {stats:?}"
        );
        assert_eq!(
            stats.deferred_at_boot,
            stats.worker_pages + stats.on_demand_pages,
            "{stats:?}"
        );
        let census = super::super::checker::check().expect("frame-state check");
        assert_eq!(census.deferred, 0);
    }
}
