//! `scenario=phased`: the footprint benchmark's workload (issue 12). A ring-3 task
//! ([`crate::user::programs::phased`]) runs six phases whose needs rise and fall, marking each
//! with an `EVENT` line (`grow`, `fragment`, `regrow`, `shrink`, `churn`, `idle`, `done`); this
//! side prints what the task holds every 200 ms as
//! `HELD {"t_ns":T,"held_kib":K,"free_kib":F,"reported_kib":R,"stranded_kib":S,...}` (its
//! resident pages, the allocator's free memory, how much of it the host was told it may discard,
//! how much lies in pieces below the reporting order in movable pageblocks, which only
//! compaction can give back, and the running totals of reports, memory reported, pages migrated
//! and kcompactd's wakes and CPU time, with whether it is backing off), so that a host tool
//! (`tests/host/footprint_bench.py`) can set the QEMU process's resident memory against it.
//!
//! Sizes: `scenario.phased_mib` is the grow (the fragmenting shrink keeps a quarter of it, the
//! regrow adds half of it, the churn touches a third of it per round); `scenario.phased_unit_ms`
//! is the time unit (holds of 5, 20, 5, 20 units, churn rounds 2 units apart, idle 20 units, and
//! 3 units of quiet before the first phase for the host's idle baseline).
//!
//! Owns nothing: it spawns the task and reads its address space's counters.

use crate::mm::{PAGE_SIZE, checker, page_alloc};
use crate::user::{Capabilities, TaskExit, programs};
use crate::{println, task, tunables};
use alloc::string::String;
use core::time::Duration;

/// How often the held memory is printed.
const HELD_PERIOD: Duration = Duration::from_millis(200);
/// Units of quiet before the first phase.
const BASELINE_UNITS: u64 = 3;

fn now_ns() -> u64 {
    crate::time::uptime_ns().unwrap_or(0)
}

fn held_line(held_pages: u64) {
    let free_kib = page_alloc::free_pages() * PAGE_SIZE / 1024;
    let reporting = crate::mm::reporting::stats();
    let reported: u64 = reporting.reported_pages_now.iter().sum();
    let stranded = crate::mm::compaction::stranded_pages();
    let compaction = crate::mm::compaction::stats();
    println!(
        "HELD {{\"t_ns\":{},\"held_kib\":{},\"free_kib\":{free_kib},\"reported_kib\":{},\"stranded_kib\":{},\"reports\":{},\"reported_total_kib\":{},\"migrated\":{},\"compact_wakes\":{},\"compact_backoff\":{},\"kcompactd_cpu_us\":{}}}",
        now_ns(),
        held_pages * PAGE_SIZE / 1024,
        reported * PAGE_SIZE / 1024,
        stranded * PAGE_SIZE / 1024,
        reporting.reports,
        reporting.bytes_reported / 1024,
        compaction.pgmigrate_success,
        compaction.compact_daemon_wake,
        u8::from(crate::mm::compaction::backing_off()),
        crate::mm::compaction::daemon_cpu_ns() / 1000,
    );
}

/// Runs the phases; an error if the task fails or the memory checker finds a problem after.
pub fn phased() -> Result<(), String> {
    let mib = tunables::SCENARIO_PHASED_MIB.get();
    let unit_ms = tunables::SCENARIO_PHASED_UNIT_MS.get();
    let grow_pages = mib * (1 << 20) / PAGE_SIZE;
    let managed = page_alloc::managed_pages().max(1);
    // The task holds the whole grow at its peak: let one address space hold that much.
    let needed_pct = (grow_pages * 100).div_ceil(managed) + 5;
    if needed_pct > 95 {
        return Err(alloc::format!(
            "scenario.phased_mib={mib} does not fit: {} MiB managed",
            (managed * PAGE_SIZE) >> 20
        ));
    }
    if tunables::USER_MAX_RESIDENT_PCT.get() < needed_pct {
        tunables::USER_MAX_RESIDENT_PCT
            .set(needed_pct)
            .map_err(|error| alloc::format!("user.max_resident_pct: {error}"))?;
        log::info!("phased: user.max_resident_pct raised to {needed_pct} for a {mib} MiB grow");
    }
    println!(
        "EVENT {{\"name\":\"ready\",\"t_ns\":{},\"grow_mib\":{mib},\"unit_ms\":{unit_ms},\"free_kib\":{}}}",
        now_ns(),
        page_alloc::free_pages() * PAGE_SIZE / 1024
    );
    let quiet_end = now_ns() + BASELINE_UNITS * unit_ms * 1_000_000;
    while now_ns() < quiet_end {
        held_line(0);
        task::sleep(HELD_PERIOD);
    }
    let mut handle = crate::user::spawn_with(
        "phased",
        &programs::phased(),
        grow_pages | unit_ms << 32,
        Capabilities::DIAGNOSTICS,
    )
    .map_err(|error| alloc::format!("spawn: {error:?}"))?;
    let report = loop {
        let held = handle
            .task()
            .space()
            .map_or(0, |space| space.lock().counters.resident);
        held_line(held);
        match handle.join_timeout(HELD_PERIOD) {
            Ok(report) => break report,
            Err(still_running) => handle = still_running,
        }
    };
    held_line(0);
    if report.exit != TaskExit::Exited(0) {
        return Err(alloc::format!("the phased task ended {:?}", report.exit));
    }
    checker::check()?;
    let stats = crate::mm::reporting::stats();
    println!(
        "EVENT {{\"name\":\"finished\",\"t_ns\":{},\"bytes_reported\":{},\"free_kib\":{}}}",
        now_ns(),
        stats.bytes_reported,
        page_alloc::free_pages() * PAGE_SIZE / 1024
    );
    Ok(())
}
