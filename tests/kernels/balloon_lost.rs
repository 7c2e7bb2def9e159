//! A balloon device that stops answering (fault injection: the driver does not notify it of a
//! free page report, and QEMU only looks at a queue when notified). One boot of its own: the
//! device is not used again after it. After `balloon.timeout_ms` the driver resets the device,
//! the report's blocks go back unreported, reporting and the balloon worker stop, the ballooned
//! pages come back to the guest, and the kernel goes on.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;
use kernel::drivers::balloon::{self, ReportingState};
use kernel::mm::buddy::{MAX_ORDER, MigrateType};
use kernel::mm::frame::{FrameFlags, FrameState, Owner};
use kernel::mm::page_alloc::{self, AllocRequest, Pages};
use kernel::mm::{checker, reporting};
use kernel::time::Instant;
use kernel::{BootInfo, ExitCode, task, tunables};

kernel::entry_point!(main);

fn main(_info: &'static BootInfo) -> ExitCode {
    scenarios::with_balloon_device("balloon_lost", test_main)
}

/// Waits (at most 10 s) until `done`.
use scenarios::wait_for;

fn alloc_4mib_blocks(count: usize) -> Vec<Pages> {
    (0..count)
        .map(|_| {
            page_alloc::alloc(AllocRequest::new(MAX_ORDER).kind(MigrateType::Movable))
                .expect("4 MiB block")
        })
        .collect()
}

#[test_case]
fn a_device_that_stops_answering_is_reset_and_the_kernel_goes_on_without_it() {
    const TIMEOUT_MS: u64 = 300;
    const BALLOONED: u64 = 4096;
    tunables::BALLOON_TIMEOUT_MS
        .set(TIMEOUT_MS)
        .expect("in range");
    balloon::set_test_target(Some(BALLOONED));
    wait_for("inflating 16 MiB", || {
        balloon::stats().actual_pages == BALLOONED
    });
    wait_for("reporting idle", reporting::is_idle);
    // 64 MiB freed: the report that names them is never seen by the device.
    let blocks = alloc_4mib_blocks(16);
    let freed: Vec<u64> = blocks.iter().map(|block| block.pfn()).collect();
    balloon::inject_lost_notification();
    let start = Instant::now();
    for block in blocks {
        page_alloc::free(block).expect("free");
    }
    reporting::request();
    wait_for("the device declared lost", || balloon::stats().device_lost);
    let lost_after = start.elapsed();
    wait_for("reporting and the balloon worker stopped", || {
        !reporting::is_registered() && balloon::stats().actual_pages == 0
    });
    let census = checker::check().unwrap_or_else(|problem| panic!("frame state: {problem}"));
    assert_eq!(census.isolated, 0, "every reported block came back");
    assert_eq!(
        census.allocated_by_owner[Owner::Balloon as usize],
        0,
        "the ballooned pages came back"
    );
    for &pfn in &freed {
        let frame = page_alloc::zone_of(pfn).expect("zone").frame(pfn);
        assert_eq!(frame.state(), FrameState::Free, "block {pfn:#x}");
        assert!(
            !frame.flags().contains(FrameFlags::REPORTED),
            "block {pfn:#x} is flagged reported, but the host was never told"
        );
    }
    assert!(
        lost_after >= Duration::from_millis(TIMEOUT_MS),
        "declared lost after {lost_after:?}, before the {TIMEOUT_MS} ms timeout"
    );
    assert_eq!(balloon::reporting_state(), ReportingState::Stopped);
    kernel::println!(
        "  device declared lost {} ms after the unnotified report (timeout {TIMEOUT_MS} ms); {} pages free",
        lost_after.as_millis(),
        census.free
    );
    // The kernel goes on: memory comes and goes, frees trigger no report, a new target is
    // ignored (nothing talks to the device).
    let again = alloc_4mib_blocks(16);
    for block in again {
        page_alloc::free(block).expect("free");
    }
    balloon::set_test_target(Some(BALLOONED));
    task::sleep(Duration::from_millis(200));
    assert_eq!(balloon::stats().actual_pages, 0);
    assert!(reporting::is_idle());
    let census = checker::check().unwrap_or_else(|problem| panic!("frame state: {problem}"));
    assert_eq!(
        census.reported,
        reporting::stats().reported_pages_now.iter().sum::<u64>()
    );
}
