//! Named scenarios (`scenario=NAME` on the command line): workloads whose effect is seen from the
//! host. Each marks its steps with `EVENT {...}` lines (name and guest time `t_ns`, plus the
//! figures of that step) so that a host tool, or a person watching, can line them up with what
//! the host measures.
//!
//! - `reclaim`: touch `scenario.reclaim_mib` of memory, free it, then idle for
//!   `scenario.idle_ms` (events `touched` with how much of it lay above 4 GiB, `freed`,
//!   `idle`, `done`).
//! - `balloon`: follow the host's balloon through three targets and check deflate-on-OOM
//!   (events `ready`, `inflated`, `stats`, `deflated`, `inflated_max`, `oom`, `done`).
//! - `balloon_race`: allocate past free memory again and again for 5 s (deflate-on-OOM fires)
//!   while the host moves the balloon's target, then settle on the host's last target (events
//!   `ready`, `stressed`, `done`; fails if the balloon's count and its pages disagree).
//! - `no_device`: run without a balloon device and show everything else works.
//! - `phased`: the footprint benchmark's phases in a ring-3 task ([`crate::footprint`]).
//!
//! Owns nothing: it uses the public interfaces of the allocator, the balloon and the tasks.

use crate::drivers::balloon;
use crate::mm::buddy::MigrateType;
use crate::mm::frame::Owner;
use crate::mm::page_alloc::{self, AllocRequest, Pages};
use crate::mm::{PAGE_SIZE, checker, reporting};
use crate::time::Instant;
use crate::{ExitCode, println, task, tunables};
use alloc::vec::Vec;
use core::fmt::Write;
use core::time::Duration;

pub const NAMES: &[&str] = &["reclaim", "balloon", "balloon_race", "no_device", "phased"];

/// Runs the scenario `name`; `None` if there is no such scenario.
pub fn run(name: &str) -> Option<ExitCode> {
    let outcome = match name {
        "reclaim" => reclaim(),
        "balloon" => follow_balloon(),
        "balloon_race" => balloon_race(),
        "no_device" => no_device(),
        "phased" => crate::footprint::phased(),
        _ => return None,
    };
    Some(match outcome {
        Ok(()) => ExitCode::Success,
        Err(problem) => {
            log::error!("scenario {name} failed: {problem}");
            ExitCode::Failure
        }
    })
}

/// Prints `EVENT {"name":NAME,"t_ns":T,KEY:VALUE...}`.
fn event(name: &str, figures: &[(&str, u64)]) {
    let mut line = alloc::string::String::new();
    let t_ns = crate::time::uptime_ns().unwrap_or(0);
    let _ = write!(line, "EVENT {{\"name\":\"{name}\",\"t_ns\":{t_ns}");
    for (key, value) in figures {
        let _ = write!(line, ",\"{key}\":{value}");
    }
    println!("{line}}}");
}

fn reclaim() -> Result<(), alloc::string::String> {
    let want = tunables::SCENARIO_RECLAIM_MIB.get() * 256;
    event("start", &[("free_pages", page_alloc::free_pages())]);
    // A moment for a host tool to read the process's size before anything is touched (a busy
    // host may read it late).
    crate::task::sleep(core::time::Duration::from_millis(300));
    let mut blocks: Vec<Pages> = Vec::new();
    let (mut got, mut above_4gib) = (0, 0);
    while got < want {
        let order = if want - got >= 512 { 9 } else { 0 };
        let request = AllocRequest::new(order).kind(MigrateType::Movable);
        let Some(block) = page_alloc::alloc(request)
            .or_else(|| page_alloc::alloc(AllocRequest::new(0).kind(MigrateType::Movable)))
        else {
            log::warn!("reclaim: memory ran out after {} MiB", got / 256);
            break;
        };
        // Touch every page so the host has to back it.
        for page in 0..block.page_count() {
            let word = (block.virt() + page * PAGE_SIZE) as *mut u64;
            // SAFETY: our block, direct-mapped RAM.
            unsafe { word.write_volatile(0x7e57_0000 + page) };
        }
        got += block.page_count();
        if block.phys() >= 4 << 30 {
            above_4gib += block.page_count();
        }
        blocks.push(block);
    }
    event(
        "touched",
        &[("mib", got / 256), ("above_4gib_mib", above_4gib / 256)],
    );
    for block in blocks {
        page_alloc::free(block).map_err(|error| alloc::format!("free: {error:?}"))?;
    }
    event("freed", &[("mib", got / 256)]);
    event("idle", &[]);
    task::sleep(Duration::from_millis(tunables::SCENARIO_IDLE_MS.get()));
    let stats = reporting::stats();
    event(
        "done",
        &[
            ("reports", stats.reports),
            ("bytes_reported", stats.bytes_reported),
            ("reported_pages_now", stats.reported_pages_now.iter().sum()),
        ],
    );
    Ok(())
}

/// Waits (at most `limit`) until `done` holds, checking every 10 ms.
fn wait_for(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Result<(), alloc::string::String> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return Err(alloc::format!("timed out waiting for {what}"));
        }
        task::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn balloon_figures() -> [(&'static str, u64); 4] {
    let stats = balloon::stats();
    [
        ("target_pages", stats.target_pages),
        ("actual_pages", stats.actual_pages),
        ("free_pages", page_alloc::free_pages()),
        ("oom_deflated_pages", stats.oom_deflated_pages),
    ]
}

fn follow_balloon() -> Result<(), alloc::string::String> {
    if !balloon::is_present() {
        return Err("no balloon device".into());
    }
    let minute = Duration::from_secs(60);
    event(
        "ready",
        &[
            ("free_pages", page_alloc::free_pages()),
            ("managed_pages", page_alloc::managed_pages()),
        ],
    );
    // 1. The host asks for a target; the balloon reaches it exactly.
    wait_for(minute, "a balloon target", || {
        let stats = balloon::stats();
        stats.target_pages > 0 && stats.actual_pages == stats.target_pages
    })?;
    event("inflated", &balloon_figures());
    // Statistics: the figures the driver sends, once the host has asked twice more.
    let answered = balloon::stats().stats_answered;
    wait_for(minute, "statistics requests", || {
        balloon::stats().stats_answered >= answered + 2
    })?;
    let sent = balloon::last_statistics();
    let figures: Vec<(&str, u64)> = sent.iter().map(|(name, value)| (*name, *value)).collect();
    event("stats", &figures);
    // 2. The host lets go: the balloon empties.
    wait_for(minute, "the balloon to empty", || {
        let stats = balloon::stats();
        stats.target_pages == 0 && stats.actual_pages == 0
    })?;
    event("deflated", &balloon_figures());
    // 3. The host asks for more than the guest can give: the balloon stops at the guest's
    // reserve, and the guest still gets memory when it needs it (deflate-on-OOM).
    wait_for(minute, "a target above what the guest can spare", || {
        balloon::stats().target_refused > 0
    })?;
    event("inflated_max", &balloon_figures());
    let free = page_alloc::free_pages();
    let deflated_before = balloon::stats().oom_deflated_pages;
    let want = free + 2048;
    let mut taken: Vec<Pages> = Vec::with_capacity(want as usize);
    let request = AllocRequest::new(0)
        .kind(MigrateType::Movable)
        .owner(Owner::Kernel);
    while (taken.len() as u64) < want {
        match page_alloc::alloc(request) {
            Some(page) => taken.push(page),
            None => break,
        }
    }
    let allocated = taken.len() as u64;
    // The heap grows through the same path: with every free page taken, 8 MiB of heap still
    // come (from the balloon), and go back to the allocator when freed.
    let heap_bytes = 8 << 20;
    let heap_deflated_before = balloon::stats().oom_deflated_pages;
    let mut heap_block: Vec<u8> = Vec::new();
    let heap_grew = heap_block.try_reserve_exact(heap_bytes).is_ok();
    drop(heap_block);
    let heap_deflated = balloon::stats().oom_deflated_pages - heap_deflated_before;
    let oom_deflated = balloon::stats().oom_deflated_pages - deflated_before;
    for page in taken {
        page_alloc::free(page).map_err(|error| alloc::format!("free: {error:?}"))?;
    }
    event(
        "oom",
        &[
            ("free_before", free),
            ("wanted", want),
            ("allocated", allocated),
            ("oom_deflated_pages", oom_deflated),
            ("heap_grew", heap_grew as u64),
            ("heap_deflated_pages", heap_deflated),
        ],
    );
    if allocated < want || oom_deflated == 0 {
        return Err(alloc::format!(
            "deflate-on-OOM: {allocated} of {want} pages allocated, {oom_deflated} deflated"
        ));
    }
    if !heap_grew || heap_deflated == 0 {
        return Err(alloc::format!(
            "deflate-on-OOM for the heap: grew {heap_grew}, {heap_deflated} pages deflated"
        ));
    }
    checker::check()?;
    event("done", &balloon_figures());
    Ok(())
}

/// Deflate-on-OOM against the worker's own inflating and deflating while the host moves the
/// target: every round takes 1024 pages more than are free, then frees them.
fn balloon_race() -> Result<(), alloc::string::String> {
    if !balloon::is_present() {
        return Err("no balloon device".into());
    }
    event("ready", &balloon_figures());
    let request = AllocRequest::new(0)
        .kind(MigrateType::Movable)
        .owner(Owner::Kernel);
    let start = Instant::now();
    let mut rounds = 0;
    let mut taken: Vec<Pages> = Vec::new();
    while start.elapsed() < Duration::from_secs(5) {
        let want = page_alloc::free_pages() + 1024;
        taken.clear();
        taken.reserve(want as usize);
        while (taken.len() as u64) < want {
            match page_alloc::alloc(request) {
                Some(page) => taken.push(page),
                None => break,
            }
        }
        for page in taken.drain(..) {
            page_alloc::free(page).map_err(|error| alloc::format!("free: {error:?}"))?;
        }
        rounds += 1;
    }
    let stats = balloon::stats();
    event(
        "stressed",
        &[
            ("rounds", rounds),
            ("oom_deflated_pages", stats.oom_deflated_pages),
            ("inflated_pages", stats.inflated_pages),
            ("deflated_pages", stats.deflated_pages),
        ],
    );
    // The host's last target: met, and held for 2 s.
    let mut held = Instant::now();
    wait_for(Duration::from_secs(60), "the balloon to settle", || {
        let stats = balloon::stats();
        if stats.actual_pages != stats.target_pages {
            held = Instant::now();
        }
        held.elapsed() > Duration::from_secs(2)
    })?;
    let census = checker::check()?;
    let stats = balloon::stats();
    let owned = census.allocated_by_owner[Owner::Balloon as usize];
    if owned != stats.actual_pages {
        return Err(alloc::format!(
            "the balloon counts {} pages and owns {owned}",
            stats.actual_pages
        ));
    }
    event("done", &balloon_figures());
    Ok(())
}

fn no_device() -> Result<(), alloc::string::String> {
    if balloon::is_present() || reporting::is_registered() {
        return Err("a balloon device is present".into());
    }
    let block = page_alloc::alloc(AllocRequest::new(9).kind(MigrateType::Movable))
        .ok_or("no 2 MiB block")?;
    page_alloc::free(block).map_err(|error| alloc::format!("free: {error:?}"))?;
    let program = crate::user::programs::memory_walk();
    let report = crate::user::spawn("memory_walk", &program, 8)
        .map_err(|error| alloc::format!("spawn: {error:?}"))?
        .join();
    if report.exit != crate::user::TaskExit::Exited(8) {
        return Err(alloc::format!("task ended {:?}", report.exit));
    }
    checker::check()?;
    event("no_device_ok", &[("free_pages", page_alloc::free_pages())]);
    Ok(())
}
