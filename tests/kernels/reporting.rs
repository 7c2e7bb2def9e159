//! Free page reporting with the real device: QEMU's virtio-balloon with free-page-reporting=on
//! (run-qemu.sh attaches it). Boundary invariants under a randomized workload with the worker
//! running, warm blocks allocated before reported ones, memory the host really discarded, and
//! the reporting counters.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;
use kernel::mm::buddy::{MAX_ORDER, MigrateType};
use kernel::mm::frame::{FrameFlags, FrameState, Owner};
use kernel::mm::page_alloc::{self, AllocRequest, Pages};
use kernel::mm::{PAGE_SIZE, checker, reporting};
use kernel::time::Instant;
use kernel::{BootInfo, ExitCode, task, tunables};
use scenarios::Rng;

kernel::entry_point!(main);

fn main(_info: &'static BootInfo) -> ExitCode {
    scenarios::with_balloon_device("reporting", test_main)
}

/// Waits (at most 10 s) until the reporting worker has nothing requested and nothing running.
fn wait_for_worker() {
    let start = Instant::now();
    while !reporting::is_idle() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reporting worker did not settle"
        );
        task::sleep(Duration::from_millis(5));
    }
}

fn check() -> checker::FrameCensus {
    checker::check().unwrap_or_else(|problem| panic!("frame state: {problem}"))
}

fn set(tunable: &tunables::Tunable, value: u64) {
    tunable.set(value).expect("in range");
}

#[test_case]
fn free_memory_is_reported_behind_the_boundaries_at_boot() {
    wait_for_worker();
    let stats = reporting::stats();
    assert!(stats.reports > 0, "no report sent: {stats:?}");
    let census = check();
    let reported_now: u64 = stats.reported_pages_now.iter().sum();
    assert_eq!(census.reported, reported_now, "counters match the lists");
    // Nearly all free memory is in blocks of the minimum order and up, and reported.
    assert!(
        census.reported * 10 >= census.free * 9,
        "only {} of {} free pages reported",
        census.reported,
        census.free
    );
    assert!(
        stats.reported_pages_now[..9]
            .iter()
            .all(|pages| *pages == 0)
    );
}

#[test_case]
fn memory_the_host_was_told_about_reads_back_as_zero() {
    // A 4 MiB block full of a pattern, freed: once reported, the host has dropped its pages.
    let block = page_alloc::alloc(AllocRequest::new(MAX_ORDER).kind(MigrateType::Movable))
        .expect("a 4 MiB block");
    let words = block.bytes() as usize / 8;
    let base = block.virt() as *mut u64;
    for word in 0..words {
        // SAFETY: our block, direct-mapped, `words` long.
        unsafe { base.add(word).write_volatile(0xabab_abab_abab_abab) };
    }
    let pfn = block.pfn();
    page_alloc::free(block).expect("free");
    reporting::request();
    let frame = page_alloc::zone_of(pfn).expect("zone").frame(pfn);
    let start = Instant::now();
    while !(frame.state() == FrameState::Free && frame.flags().contains(FrameFlags::REPORTED)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the freed block was not reported within 10 s (state {:?}, flags {:?})",
            frame.state(),
            frame.flags()
        );
        task::sleep(Duration::from_millis(5));
    }
    // Read the free block in place (nothing else allocates in this test kernel now): QEMU
    // discarded it, so every page reads as fresh zeros.
    let nonzero = (0..words)
        // SAFETY: direct-mapped RAM; reading a free block changes nothing.
        .filter(|word| unsafe { base.add(*word).read_volatile() } != 0)
        .count();
    assert_eq!(
        nonzero, 0,
        "words of the reported block still hold the pattern"
    );
}

#[test_case]
fn allocation_takes_warm_unreported_blocks_before_reported_ones() {
    wait_for_worker();
    // A 2 MiB block split from a 4 MiB one, so that its buddy is a free 2 MiB block; once
    // reported, every free 2 MiB block is reported.
    let request = AllocRequest::new(9).kind(MigrateType::Movable);
    let mut others = Vec::new();
    let half = loop {
        let candidate = page_alloc::alloc(request).expect("2 MiB block");
        let buddy = candidate.pfn() ^ 512;
        let frame = page_alloc::zone_of(buddy).expect("zone").frame(buddy);
        if frame.state() == FrameState::Free && frame.order() == 9 {
            break candidate;
        }
        others.push(candidate);
        assert!(others.len() < 256, "no 2 MiB block with a free buddy");
    };
    for other in others {
        page_alloc::free(other).expect("free");
    }
    reporting::request();
    task::sleep(Duration::from_millis(100));
    wait_for_worker();
    let buddy = half.pfn() ^ 512;
    let buddy_frame = page_alloc::zone_of(buddy).expect("zone").frame(buddy);
    assert!(
        buddy_frame.state() == FrameState::Free
            && buddy_frame.order() == 9
            && buddy_frame.flags().contains(FrameFlags::REPORTED),
        "the buddy is a reported free 2 MiB block"
    );
    // A warm 4 MiB block, with reporting paused so it stays unreported.
    set(&tunables::REPORTING_ENABLED, 0);
    reporting::refresh_triggers();
    let warm = page_alloc::alloc(AllocRequest::new(MAX_ORDER).kind(MigrateType::Movable))
        .expect("4 MiB block")
        .pfn();
    // A 2 MiB request: the warm 4 MiB block is split rather than a reported 2 MiB block taken.
    let got =
        page_alloc::alloc(AllocRequest::new(9).kind(MigrateType::Movable)).expect("2 MiB block");
    assert!(
        (warm..warm + 1024).contains(&got.pfn()),
        "got {got:?}, a reported block, while the warm block at {warm:#x} was free"
    );
    page_alloc::free(got).expect("free");
    page_alloc::free(half).expect("free");
    set(&tunables::REPORTING_ENABLED, 1);
    reporting::refresh_triggers();
    reporting::request();
    wait_for_worker();
    check();
}

#[test_case]
fn the_tail_of_a_burst_of_frees_below_the_trigger_is_reported_a_moment_later() {
    wait_for_worker();
    // The trigger at 64 MiB: a 64 MiB burst of frees wakes the worker; 8 MiB freed after its
    // pass raise no trigger, and would stay with the host without the sweep that follows.
    set(&tunables::REPORTING_HIGH_WATER_MIB, 64);
    let request = AllocRequest::new(MAX_ORDER).kind(MigrateType::Movable);
    let mut blocks: Vec<Pages> = (0..18)
        .map(|_| page_alloc::alloc(request).expect("a 4 MiB block"))
        .collect();
    let tail = blocks.split_off(16);
    for block in blocks {
        page_alloc::free(block).expect("free");
    }
    task::sleep(Duration::from_millis(100));
    wait_for_worker();
    let reports = reporting::stats().reports;
    let tail_pfns: Vec<u64> = tail.iter().map(Pages::pfn).collect();
    for block in tail {
        page_alloc::free(block).expect("free");
    }
    let start = Instant::now();
    while !tail_pfns.iter().all(|&pfn| is_reported(pfn)) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the tail of the burst was not reported within 3 s"
        );
        task::sleep(Duration::from_millis(10));
    }
    assert!(reporting::stats().reports > reports);
    set(
        &tunables::REPORTING_HIGH_WATER_MIB,
        tunables::REPORTING_HIGH_WATER_MIB.default,
    );
    check();
}

fn signature(pages: &Pages, page: u64) -> u64 {
    (pages.pfn() + page).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// Writes a signature into the first word of every page of the block.
fn sign(pages: &Pages) {
    for page in 0..pages.page_count() {
        let word = (pages.virt() + page * PAGE_SIZE) as *mut u64;
        // SAFETY: our block, direct-mapped.
        unsafe { word.write_volatile(signature(pages, page)) };
    }
}

/// A block handed out while the host could discard it would read back zero here.
fn verify(pages: &Pages) {
    for page in 0..pages.page_count() {
        let word = (pages.virt() + page * PAGE_SIZE) as *const u64;
        // SAFETY: our block, direct-mapped.
        let value = unsafe { word.read_volatile() };
        assert_eq!(
            value,
            signature(pages, page),
            "page {page} of {pages:?} lost its contents"
        );
    }
}

#[test_case]
fn boundaries_hold_under_a_random_workload_with_the_worker_running() {
    // Report eagerly: every large free wakes the worker, which runs at once.
    set(&tunables::REPORTING_DELAY_MS, 0);
    set(&tunables::REPORTING_HIGH_WATER_MIB, 2);
    let reports_before = reporting::stats().reports;
    let failures_before = reporting::stats().failures;
    let mut rng = Rng(0x5eed_0f12_3456);
    let mut live: Vec<Pages> = Vec::with_capacity(4096);
    let mut live_pages = 0u64;
    let budget = page_alloc::free_pages() / 2;
    for step in 0..60_000u32 {
        if rng.below(100) < 55 && live.len() < 4000 {
            let order = match rng.below(10) {
                0..=5 => rng.below(3) as u8,
                6..=7 => 3 + rng.below(6) as u8,
                _ => 9 + rng.below(2) as u8,
            };
            if live_pages + (1 << order) > budget {
                continue;
            }
            let kind = MigrateType::ALLOCATABLE[rng.below(3) as usize];
            let request = AllocRequest::new(order).kind(kind).owner(Owner::Kernel);
            if let Some(pages) = page_alloc::alloc(request) {
                sign(&pages);
                live_pages += pages.page_count();
                live.push(pages);
            }
        } else if !live.is_empty() {
            let pages = live.swap_remove(rng.below(live.len() as u64) as usize);
            verify(&pages);
            live_pages -= pages.page_count();
            page_alloc::free(pages).expect("free");
        }
        if step % 2_000 == 0 {
            // Let the worker run in the middle of the workload, then prove every list.
            task::sleep(Duration::from_millis(2));
            let census = check();
            assert_eq!(
                census.allocated_by_owner[Owner::Kernel as usize],
                live_pages,
                "step {step}"
            );
        }
    }
    for pages in live.drain(..) {
        verify(&pages);
        page_alloc::free(pages).expect("free");
    }
    reporting::request();
    wait_for_worker();
    let census = check();
    let stats = reporting::stats();
    assert_eq!(
        census.reported,
        stats.reported_pages_now.iter().sum::<u64>()
    );
    assert_eq!(census.isolated, 0, "every isolated block came back");
    assert!(
        stats.reports > reports_before + 10,
        "the worker ran during the workload: {} reports",
        stats.reports - reports_before
    );
    assert_eq!(stats.failures, failures_before);
    set(
        &tunables::REPORTING_DELAY_MS,
        tunables::REPORTING_DELAY_MS.default,
    );
    set(
        &tunables::REPORTING_HIGH_WATER_MIB,
        tunables::REPORTING_HIGH_WATER_MIB.default,
    );
}

/// A host that fails: every report fails with `error`, and counts its calls.
struct FailingSink {
    error: reporting::ReportError,
    calls: alloc::sync::Arc<core::sync::atomic::AtomicU64>,
}

impl reporting::ReportSink for FailingSink {
    fn report(&mut self, _blocks: &[(u64, u64)]) -> Result<(), reporting::ReportError> {
        self.calls
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        Err(self.error)
    }
}

/// Frees a fresh 4 MiB block (unreported memory), waits for the worker, and says whether the
/// block is reported now.
fn free_something_and_wait() -> bool {
    let block = page_alloc::alloc(AllocRequest::new(MAX_ORDER).kind(MigrateType::Movable))
        .expect("4 MiB block");
    let pfn = block.pfn();
    page_alloc::free(block).expect("free");
    reporting::request();
    task::sleep(Duration::from_millis(100));
    wait_for_worker();
    let frame = page_alloc::zone_of(pfn).expect("zone").frame(pfn);
    frame.state() == FrameState::Free && frame.flags().contains(FrameFlags::REPORTED)
}

#[test_case]
fn failed_reports_put_blocks_back_unreported_and_a_lost_device_stops_reporting() {
    use core::sync::atomic::Ordering::Relaxed;
    wait_for_worker();
    let device = reporting::unregister().expect("the balloon's sink");
    let calls = alloc::sync::Arc::new(core::sync::atomic::AtomicU64::new(0));
    let before = reporting::stats();
    // A report that fails: its blocks go back unreported, counted as a failure.
    reporting::register(alloc::boxed::Box::new(FailingSink {
        error: reporting::ReportError::Failed,
        calls: calls.clone(),
    }));
    assert!(
        !free_something_and_wait(),
        "a block whose report failed is not flagged"
    );
    let failed = reporting::stats();
    assert!(calls.load(Relaxed) > 0, "the sink was called");
    assert!(failed.failures > before.failures);
    assert_eq!(
        failed.reports, before.reports,
        "nothing counted as reported"
    );
    let census = check();
    assert_eq!(census.isolated, 0, "every block came back");
    assert_eq!(
        census.reported,
        failed.reported_pages_now.iter().sum::<u64>()
    );
    reporting::unregister();
    // A device that is gone: reporting stops by itself, the kernel goes on.
    reporting::register(alloc::boxed::Box::new(FailingSink {
        error: reporting::ReportError::DeviceGone,
        calls: calls.clone(),
    }));
    assert!(!free_something_and_wait());
    assert!(!reporting::is_registered(), "reporting stopped");
    assert_eq!(check().isolated, 0);
    // The real device again.
    reporting::register(device);
    assert!(free_something_and_wait(), "the real device reports again");
    assert!(reporting::stats().reports > failed.reports);
}

/// Whether the free block headed at `pfn` is reported.
fn is_reported(pfn: u64) -> bool {
    let frame = page_alloc::zone_of(pfn).expect("zone").frame(pfn);
    frame.state() == FrameState::Free && frame.flags().contains(FrameFlags::REPORTED)
}

#[test_case]
fn reporting_turned_off_and_on_at_run_time_takes_effect_at_once() {
    // As the console's `set` does it: through the tunables' parser, nothing else.
    let console_set = |value: &str| {
        let (out, _) = kernel::console::execute(&alloc::format!("set reporting.enabled={value}"));
        kernel::println!("  {}", out.trim());
    };
    wait_for_worker();
    console_set("0");
    wait_for_worker();
    // 64 MiB freed while reporting is off (far above the 32 MiB trigger): it stays unreported.
    let blocks: Vec<Pages> = (0..16)
        .map(|_| {
            page_alloc::alloc(AllocRequest::new(MAX_ORDER).kind(MigrateType::Movable))
                .expect("4 MiB block")
        })
        .collect();
    // A pattern in the first block: once reported, the host has dropped it (reads as zeros).
    let words = blocks[0].bytes() as usize / 8;
    let base = blocks[0].virt() as *mut u64;
    for word in 0..words {
        // SAFETY: our block, direct-mapped, `words` long.
        unsafe { base.add(word).write_volatile(0xabab_abab_abab_abab) };
    }
    // From here the test watches the freed blocks by their frame numbers.
    let blocks: Vec<u64> = blocks
        .into_iter()
        .map(|block| {
            let pfn = block.pfn();
            page_alloc::free(block).expect("free");
            pfn
        })
        .collect();
    task::sleep(Duration::from_millis(
        2 * tunables::REPORTING_DELAY_MS.get() + 100,
    ));
    wait_for_worker();
    let off = blocks.iter().filter(|block| is_reported(**block)).count();
    assert_eq!(off, 0, "{off} blocks reported while reporting was off");
    // On again: the memory freed meanwhile goes to the host without another free.
    let before = reporting::stats();
    console_set("1");
    let start = Instant::now();
    while blocks.iter().any(|block| !is_reported(*block)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} of {} blocks freed while reporting was off were not reported within 10 s of turning it on",
            blocks.iter().filter(|block| !is_reported(**block)).count(),
            blocks.len()
        );
        task::sleep(Duration::from_millis(5));
    }
    let after = reporting::stats();
    // Nothing allocates in this test kernel meanwhile: the free block is as the host left it.
    let nonzero = (0..words)
        // SAFETY: direct-mapped RAM; reading a free block changes nothing.
        .filter(|word| unsafe { base.add(*word).read_volatile() } != 0)
        .count();
    assert_eq!(
        nonzero, 0,
        "the host did not discard the block reported after re-enabling"
    );
    kernel::println!(
        "  reported after turning it on: {} MiB in {} ms",
        (after.pages_reported - before.pages_reported) / 256,
        start.elapsed().as_millis()
    );
    wait_for_worker();
    assert_eq!(check().isolated, 0);
    // Off again: the triggers are off too, so a large free wakes nobody.
    console_set("0");
    wait_for_worker();
    let block = page_alloc::alloc(AllocRequest::new(MAX_ORDER).kind(MigrateType::Movable))
        .expect("4 MiB block");
    page_alloc::free(block).expect("free");
    assert!(
        reporting::is_idle(),
        "a free woke the worker while reporting was off"
    );
    console_set("1");
    wait_for_worker();
    check();
}

#[test_case]
fn a_2mib_block_waiting_in_a_per_cpu_list_is_drained_and_reported() {
    wait_for_worker();
    // Two halves of a 4 MiB block: the lower one freed while the upper is allocated waits in
    // the pageblock order's per-CPU list, where no pass would see it.
    let block = page_alloc::alloc(AllocRequest::new(MAX_ORDER).kind(MigrateType::Movable))
        .expect("a 4 MiB block");
    let [low, high] = page_alloc::split_allocated(block)
        .unwrap_or_else(|(error, _)| panic!("split refused: {error:?}"));
    let (low_pfn, high_pfn) = (low.pfn(), high.pfn());
    page_alloc::free(low).expect("free");
    let zone = page_alloc::zone_of(low_pfn).expect("zone");
    let frame = zone.frame(low_pfn);
    assert_eq!(
        frame.state(),
        FrameState::Cached,
        "it waits in a per-CPU list"
    );
    assert_eq!(frame.order(), 9);
    check();
    // A pass drains the list first: the block is reported whole.
    reporting::request();
    let start = Instant::now();
    while !(frame.state() == FrameState::Free && frame.flags().contains(FrameFlags::REPORTED)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the cached block was not reported within 10 s (state {:?}, flags {:?})",
            frame.state(),
            frame.flags()
        );
        task::sleep(Duration::from_millis(5));
    }
    wait_for_worker();
    check();
    // Its buddy's free completes a 4 MiB block: it goes to the zone and merges, not to a list.
    page_alloc::free(high).expect("free");
    assert_ne!(zone.frame(high_pfn).state(), FrameState::Cached);
    assert_eq!(zone.frame(low_pfn).state(), FrameState::Free);
    assert_eq!(zone.frame(low_pfn).order(), MAX_ORDER);
    check();
}
