//! As `balloon_lost`, for the balloon worker's side: the device is not notified of an
//! inflation (fault injection). After `balloon.timeout_ms` it is reset; the pages of the lost
//! request and those already ballooned come back to the guest, reporting stops, the kernel
//! goes on. One boot of its own: the device is not used again after it.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

use core::time::Duration;
use kernel::drivers::balloon::{self, ReportingState};
use kernel::mm::checker;
use kernel::mm::frame::Owner;
use kernel::mm::page_alloc::{self, AllocRequest};
use kernel::mm::reporting;
use kernel::time::Instant;
use kernel::{BootInfo, ExitCode, task, tunables};

kernel::entry_point!(main);

fn main(_info: &'static BootInfo) -> ExitCode {
    scenarios::with_balloon_device("balloon_lost_inflate", test_main)
}

use scenarios::wait_for;

#[test_case]
fn a_device_that_stops_answering_an_inflation_is_reset_and_the_pages_come_back() {
    const TIMEOUT_MS: u64 = 300;
    const BALLOONED: u64 = 4096;
    tunables::BALLOON_TIMEOUT_MS
        .set(TIMEOUT_MS)
        .expect("in range");
    balloon::set_test_target(Some(BALLOONED));
    wait_for("inflating 16 MiB", || {
        balloon::stats().actual_pages == BALLOONED
    });
    let free_before = page_alloc::free_pages();
    balloon::inject_lost_notification();
    let start = Instant::now();
    balloon::set_test_target(Some(2 * BALLOONED));
    wait_for("the device declared lost", || balloon::stats().device_lost);
    let lost_after = start.elapsed();
    wait_for("the balloon worker stopped", || {
        balloon::stats().actual_pages == 0 && !reporting::is_registered()
    });
    assert!(lost_after >= Duration::from_millis(TIMEOUT_MS));
    let census = checker::check().unwrap_or_else(|problem| panic!("frame state: {problem}"));
    assert_eq!(census.isolated, 0);
    assert_eq!(
        census.allocated_by_owner[Owner::Balloon as usize],
        0,
        "the lost request's pages and the ballooned ones came back"
    );
    let free_after = page_alloc::free_pages();
    assert!(
        free_after >= free_before + BALLOONED - 64,
        "free pages {free_before} before, {free_after} after"
    );
    assert_eq!(balloon::reporting_state(), ReportingState::Stopped);
    kernel::println!(
        "  device declared lost {} ms after the unnotified inflation; {} pages came back",
        lost_after.as_millis(),
        free_after - free_before
    );
    // The kernel goes on without the device.
    let block = page_alloc::alloc(AllocRequest::new(9)).expect("2 MiB");
    page_alloc::free(block).expect("free");
    balloon::set_test_target(Some(BALLOONED));
    task::sleep(Duration::from_millis(200));
    assert_eq!(balloon::stats().actual_pages, 0);
    checker::check().unwrap_or_else(|problem| panic!("frame state: {problem}"));
}
