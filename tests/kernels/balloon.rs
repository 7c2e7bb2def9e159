//! The balloon with the real device (QEMU's virtio-balloon, attached by run-qemu.sh), driven by
//! a test target in place of the host's: exact deflation (a 2 MiB block gives back only the
//! pages asked for) and deflate-on-OOM racing the worker's deflation.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use core::time::Duration;
use kernel::drivers::balloon::{self, BalloonStats};
use kernel::mm::checker;
use kernel::mm::frame::Owner;
use kernel::time::Instant;
use kernel::{BootInfo, ExitCode, task};

kernel::entry_point!(main);

fn main(_info: &'static BootInfo) -> ExitCode {
    scenarios::with_balloon_device("balloon", test_main)
}

/// 16 MiB: eight 2 MiB blocks.
const PAGES: u64 = 8 * 512;

/// Sets the balloon's target and waits (at most 30 s) until it is met; returns the smallest
/// and largest `actual` seen meanwhile.
fn balloon_to(pages: u64) -> (u64, u64) {
    balloon::set_test_target(Some(pages));
    let start = Instant::now();
    let (mut low, mut high) = (u64::MAX, 0);
    loop {
        let stats = balloon::stats();
        low = low.min(stats.actual_pages);
        high = high.max(stats.actual_pages);
        if stats.actual_pages == pages && stats.target_pages == pages {
            return (low, high);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the balloon did not reach {pages} pages in 30 s: {stats:?}"
        );
        task::sleep(Duration::from_millis(1));
    }
}

/// The checker passes and the balloon owns exactly `actual` pages.
fn check_balloon() {
    let census = checker::check().unwrap_or_else(|problem| panic!("frame state: {problem}"));
    let stats = balloon::stats();
    assert_eq!(
        census.allocated_by_owner[Owner::Balloon as usize],
        stats.actual_pages,
        "pages owned by the balloon and its count"
    );
}

fn delta(before: BalloonStats, after: BalloonStats) -> (u64, u64, u64) {
    (
        after.inflated_pages - before.inflated_pages,
        after.deflated_pages - before.deflated_pages,
        after.oom_deflated_pages - before.oom_deflated_pages,
    )
}

fn settle() {
    // Longer than the worker's poll: had it gone below the target, it would inflate again.
    task::sleep(Duration::from_millis(1200));
}

#[test_case]
fn deflating_by_one_page_gives_back_one_page_not_a_2_mib_block() {
    balloon_to(PAGES);
    check_balloon();
    let before = balloon::stats();
    let (low, _) = balloon_to(PAGES - 1);
    settle();
    let after = balloon::stats();
    assert_eq!(after.actual_pages, PAGES - 1);
    assert!(low >= PAGES - 1, "actual went down to {low}");
    assert_eq!(
        delta(before, after),
        (0, 1, 0),
        "(inflated, deflated, deflated on OOM) for a target one page lower"
    );
    check_balloon();
    // An uneven amount from what is left (blocks of 256, 128, ..., 1 and whole 2 MiB blocks).
    let (low, _) = balloon_to(PAGES - 1 - 1300);
    settle();
    let last = balloon::stats();
    assert!(low >= PAGES - 1 - 1300, "actual went down to {low}");
    assert_eq!(delta(after, last), (0, 1300, 0));
    check_balloon();
    kernel::println!(
        "  deflated 1 page, then 1300 pages, exactly; the balloon holds {} pages",
        last.actual_pages
    );
    balloon_to(0);
    check_balloon();
    balloon::set_test_target(None);
}

#[test_case]
fn deflate_on_oom_inside_a_deflate_neither_wraps_nor_stops_the_worker() {
    balloon_to(PAGES);
    check_balloon();
    let before = balloon::stats();
    // The OOM deflation takes a whole 2 MiB block, below the new target: the worker must see
    // that (not compute `actual - target` from its earlier look, which underflows) and
    // inflate back to the target.
    balloon::inject_oom_deflate_during_next_deflate();
    let (_, high) = balloon_to(PAGES - 1);
    settle();
    let after = balloon::stats();
    assert!(high <= PAGES, "actual read {high}");
    let (inflated, deflated, oom) = delta(before, after);
    assert!(
        oom >= 256,
        "the fault injection ran: {oom} pages deflated on OOM"
    );
    assert_eq!(deflated, 0, "the worker deflated {deflated} pages more");
    assert_eq!(inflated, oom - 1, "inflated back to the target");
    check_balloon();
    kernel::println!(
        "  a deflate-on-OOM of {oom} pages inside a deflate to {}: inflated {inflated} back",
        PAGES - 1
    );
    balloon_to(0);
    check_balloon();
    balloon::set_test_target(None);
}

/// Single pages the balloon holds now (order-0 blocks owned by the balloon).
fn ballooned_single_pages() -> alloc::vec::Vec<u64> {
    use kernel::mm::frame::FrameState;
    let mut found = alloc::vec::Vec::new();
    for zone in kernel::mm::page_alloc::all_zones() {
        for (index, frame) in zone.frames().iter().enumerate() {
            if frame.state() == FrameState::Allocated
                && frame.owner() == Owner::Balloon
                && frame.order() == 0
            {
                found.push(zone.start_pfn + index as u64);
            }
        }
    }
    found
}

#[test_case]
fn a_ballooned_page_moves_with_the_host_told_and_the_balloon_never_shrinks() {
    use kernel::mm::page_alloc::{self, AllocRequest};
    // Below 512 pages the balloon takes single pages: those compaction can move.
    balloon_to(300);
    check_balloon();
    let before = balloon::stats();
    let pages = ballooned_single_pages();
    assert_eq!(pages.len(), 300);
    let old = pages[pages.len() / 2];
    let new = page_alloc::alloc(AllocRequest::new(0)).expect("a page");
    let new_pfn = new.pfn();
    assert!(balloon::migrate_page(old, new).is_ok(), "not moved");
    let after = balloon::stats();
    assert_eq!(after.actual_pages, before.actual_pages, "actual changed");
    let now = ballooned_single_pages();
    assert!(now.contains(&new_pfn) && !now.contains(&old), "not swapped");
    let old_frame = page_alloc::zone_of(old).expect("zone").frame(old);
    assert_ne!(
        old_frame.owner(),
        Owner::Balloon,
        "the old page stayed ballooned"
    );
    check_balloon();
    // A page the balloon does not hold is refused, and the caller keeps its page.
    let stranger = page_alloc::alloc(AllocRequest::new(0)).expect("a page");
    let spare = page_alloc::alloc(AllocRequest::new(0)).expect("a page");
    let spare_pfn = spare.pfn();
    let Err((balloon::MoveError::NotMoved, spare)) = balloon::migrate_page(stranger.pfn(), spare)
    else {
        panic!("a page the balloon does not hold was moved");
    };
    assert_eq!(
        spare.pfn(),
        spare_pfn,
        "the refused move handed the page back"
    );
    page_alloc::free(stranger).expect("freed");
    page_alloc::free(spare).expect("still the caller's");
    // Compaction moves ballooned pages through the same path; the count stays exact.
    let moved_before = balloon::pages_moved();
    let _ = kernel::mm::compaction::compact_all();
    assert_eq!(balloon::stats().actual_pages, before.actual_pages);
    check_balloon();
    kernel::println!(
        "  moved a ballooned page with actual at {}; compaction moved {} more",
        after.actual_pages,
        balloon::pages_moved() - moved_before
    );
    balloon_to(0);
    check_balloon();
    balloon::set_test_target(None);
}
