//! `bench=ksm`: KSM's figures, printed as `BENCH` lines (`crate::bench::report`). Builds its
//! own address spaces in the kernel (no ring-3 tasks) and restores the tunables it changes.
//!
//! - `ksm_scan_unique`: ns per page of a full pass over pages that never merge;
//! - `ksm_merge_max_rate`: Linux's `ksm_tests -P` setting (no sleep, the page count per
//!   wake): time and full passes to merge two spaces, MiB/s, and the ratio to a plain 4 KiB
//!   compare measured in the same boot;
//! - `ksm_merge_defaults`: time and passes to merge with ksmd at its defaults, and its CPU share;
//! - `ksm_write_fault`: a write fault on a merged page (copy) against a first-touch fault;
//! - `ksm_unmerge`: madvise UNMERGEABLE, ns per page;
//! - `ksm_idle`: ksmd's CPU share once everything is merged (it keeps scanning, as Linux's).

use super::*;
use crate::bench::report;
use crate::mm::space::{AddressSpace, RegionFlags, SharedSpace};

const START: u64 = 0x4000_0000_0000;

fn filled(spaces: usize, pages: u64, distinct: bool) -> Vec<SharedSpace> {
    let flags = RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MERGEABLE;
    let mut all = Vec::new();
    for which in 0..spaces {
        let Ok(shared) = AddressSpace::new() else {
            break;
        };
        {
            let mut space = shared.lock();
            if space
                .map_anonymous(Some(START), pages * PAGE_SIZE, flags)
                .is_err()
            {
                break;
            }
            for page in 0..pages {
                let value = if distinct {
                    page | (which as u64) << 40
                } else {
                    page
                };
                let _ = space.write_user(START + page * PAGE_SIZE, &(value + 1).to_le_bytes());
            }
        }
        all.push(shared);
    }
    all
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Finishes a pass left half done, so that the next measurement starts at a pass boundary.
fn finish_pass() {
    if CURSOR_SPACE.load(Relaxed) != 0 || CURSOR_ADDRESS.load(Relaxed) != 0 {
        scan_pages(u64::MAX, true, None);
    }
}

/// Runs every KSM benchmark with `pages` pages per space.
pub fn run(pages: u64) {
    let saved_run = tunables::KSM_RUN.get();
    let _ = tunables::KSM_RUN.set(0);
    wait_idle();
    finish_pass();
    let (checksum_ns, compare_ns) = measure_page_costs(500);

    // Unique pages: two passes (checksums, then unstable-tree inserts).
    let spaces = filled(1, pages, true);
    let started = Instant::now();
    scan_full_passes(2);
    let unique_ns = started.elapsed().as_nanos() as u64;
    report(
        "ksm_scan_unique",
        &[
            ("pages", pages as f64),
            ("ns_per_page", unique_ns as f64 / (2 * pages) as f64),
            ("checksum_ns", checksum_ns as f64),
            ("compare_ns", compare_ns as f64),
        ],
    );
    drop(spaces);

    // Linux's -P: sleep 0, pages_to_scan = the page count (here: the scanner called directly).
    let spaces = filled(2, pages, false);
    let heap_before = crate::mm::heap::stats().allocations;
    let before = stats();
    let started = Instant::now();
    let mut passes = 0;
    while stats().pages_sharing < before.pages_sharing + pages && passes < 4 {
        scan_full_passes(1);
        passes += 1;
    }
    let merge_ns = started.elapsed().as_nanos() as u64;
    let allocations = crate::mm::heap::stats().allocations - heap_before;
    let merges = (stats().merges - before.merges).max(1);
    let mib = (2 * pages * PAGE_SIZE) as f64 / (1 << 20) as f64;
    let compare_mib_s = PAGE_SIZE as f64 / (1 << 20) as f64 / (compare_ns.max(1) as f64 / 1e9);
    let merge_mib_s = mib / (merge_ns as f64 / 1e9);
    report(
        "ksm_merge_max_rate",
        &[
            ("mib", mib),
            ("ms", ms(merge_ns)),
            ("full_scans", passes as f64),
            ("mib_per_s", merge_mib_s),
            ("compare_mib_per_s", compare_mib_s),
            ("ratio_to_compare", merge_mib_s / compare_mib_s),
            (
                "heap_allocations_per_merge",
                allocations as f64 / merges as f64,
            ),
            ("linux_bare_metal_mib_per_s", 500.0),
        ],
    );

    // Write faults: a merged page (copy) against a first touch (a zeroed page).
    let started = Instant::now();
    {
        let mut space = spaces[0].lock();
        for page in 0..pages {
            let _ = space.write_user(START + page * PAGE_SIZE + 8, &1u64.to_le_bytes());
        }
    }
    let cow_ns = started.elapsed().as_nanos() as u64 / pages;
    let flags = RegionFlags::READ | RegionFlags::WRITE;
    let mut touch_ns = 0;
    if let Ok(shared) = AddressSpace::new() {
        let mut space = shared.lock();
        if space
            .map_anonymous(Some(START), pages * PAGE_SIZE, flags)
            .is_ok()
        {
            let started = Instant::now();
            for page in 0..pages {
                let _ = space.write_user(START + page * PAGE_SIZE, &1u64.to_le_bytes());
            }
            touch_ns = started.elapsed().as_nanos() as u64 / pages;
        }
    }
    report(
        "ksm_write_fault",
        &[
            ("merged_page_ns", cow_ns as f64),
            ("first_touch_ns", touch_ns as f64),
        ],
    );

    // Unmerge: space 1 still maps every KSM page.
    let started = Instant::now();
    let unmerged = spaces[1]
        .lock()
        .advise_mergeable(START, pages * PAGE_SIZE, false)
        .is_ok();
    let unmerge_ns = started.elapsed().as_nanos() as u64;
    report(
        "ksm_unmerge",
        &[
            ("ok", f64::from(u8::from(unmerged))),
            ("ns_per_page", unmerge_ns as f64 / pages as f64),
        ],
    );
    drop(spaces);

    // ksmd at its defaults: time to merge a quarter of the pages, then its idle cost.
    let quarter = (pages / 4).max(1);
    let spaces = filled(2, quarter, false);
    let before = stats();
    let started = Instant::now();
    let _ = tunables::KSM_RUN.set(1);
    while stats().pages_sharing < before.pages_sharing + quarter
        && started.elapsed() < Duration::from_secs(120)
    {
        task::sleep(Duration::from_millis(5));
    }
    let merged = stats();
    let elapsed = started.elapsed().as_nanos() as u64;
    report(
        "ksm_merge_defaults",
        &[
            ("mib", (2 * quarter * PAGE_SIZE) as f64 / (1 << 20) as f64),
            ("ms", ms(elapsed)),
            ("full_scans", (merged.full_scans - before.full_scans) as f64),
            (
                "cpu_pct",
                (merged.scan_ns - before.scan_ns) as f64 * 100.0 / elapsed.max(1) as f64,
            ),
            ("pages_to_scan", tunables::KSM_PAGES_TO_SCAN.get() as f64),
            ("sleep_ms", tunables::KSM_SLEEP_MILLISECS.get() as f64),
        ],
    );
    let idle_start = Instant::now();
    task::sleep(Duration::from_secs(1));
    let idle = stats();
    let idle_ns = idle_start.elapsed().as_nanos() as u64;
    report(
        "ksm_idle",
        &[
            ("pages_merged", (2 * quarter) as f64),
            (
                "cpu_pct",
                (idle.scan_ns - merged.scan_ns) as f64 * 100.0 / idle_ns.max(1) as f64,
            ),
        ],
    );
    let _ = tunables::KSM_RUN.set(saved_run);
    wait_idle();
    drop(spaces);
}
