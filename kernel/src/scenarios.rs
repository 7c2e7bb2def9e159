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
//! - `fragment`: ring-3 tasks fill `scenario.fragment_mib` of memory and free 3 of every 4
//!   pages of each 2 MiB block (with the proactive compaction task paused), then the guest
//!   idles for `scenario.fragment_idle_ms` while compaction and reporting work, and the tasks
//!   check their pages (events `start`, `filled`, `fragmented` with the score reached,
//!   `compacted` and `reported` when they happen, `verified`, `done`).
//! - `soak`: ring-3 tasks churn memory while the host moves the balloon; checkers after every
//!   phase and a final accounting of every page (see [`soak`]).
//! - `ksm`: four address spaces each fill `scenario.ksm_mib` with the same content (page *i*
//!   identical across spaces, all pages distinct within one) in mergeable regions and idle while
//!   ksmd merges them (`ksm.run=1` unless the command line sets it); then each writes one word
//!   in every page and checks all its data (events `filled`, `merged` with the time, passes and
//!   the scanner's CPU share, `reported` once free page reporting is idle, then
//!   `scenario.idle_ms` of idling, `written`, `done`). With `ksm.run=0` on the command line it
//!   is the control: nothing may merge.
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

mod soak;

pub const NAMES: &[&str] = &[
    "reclaim",
    "balloon",
    "balloon_race",
    "no_device",
    "fragment",
    "soak",
    "ksm",
    "phased",
];

/// Runs the scenario `name`; `None` if there is no such scenario.
pub fn run(name: &str) -> Option<ExitCode> {
    if !NAMES.contains(&name) {
        return None;
    }
    // Scenarios start from a settled kernel: every frame record written.
    crate::mm::deferred_init::wait_until_done(core::time::Duration::from_secs(600));
    let outcome = match name {
        "reclaim" => reclaim(),
        "balloon" => follow_balloon(),
        "balloon_race" => balloon_race(),
        "no_device" => no_device(),
        "fragment" => fragment(),
        "soak" => soak::run(),
        "ksm" => ksm(),
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

/// Free pages in blocks of `reporting.min_order` and up that the host has not been told about.
fn unreported_huge_pages() -> u64 {
    let min_order = tunables::REPORTING_MIN_ORDER.get() as u8;
    let free: u64 = page_alloc::all_zones()
        .iter()
        .map(|zone| {
            let area = zone.lock();
            (min_order..=crate::mm::buddy::MAX_ORDER)
                .map(|order| {
                    MigrateType::ALL
                        .iter()
                        .map(|&kind| u64::from(area.list_count(order, kind)) << order)
                        .sum::<u64>()
                })
                .sum::<u64>()
        })
        .sum();
    let reported: u64 = reporting::stats().reported_pages_now[min_order as usize..]
        .iter()
        .sum();
    free.saturating_sub(reported)
}

fn fragment() -> Result<(), alloc::string::String> {
    use crate::fragment::{self, Workload};
    use crate::mm::compaction;
    let plan = fragment::plan(tunables::SCENARIO_FRAGMENT_MIB.get());
    event(
        "start",
        &[
            ("free_pages", plan.free_pages),
            ("tasks", plan.tasks),
            ("pages", plan.total_pages()),
        ],
    );
    // The proactive task is paused while the tasks fill and fragment (otherwise it would
    // compact while they free, and the score reached would say nothing); it gets the
    // configured proactiveness back right after.
    let (workload, totals) = fragment::with_compaction_paused(|| {
        let workload = Workload::start(plan, 0x5167_0000_f7a9_0000)?;
        let filled = workload.fill()?;
        event("filled", &[("mib", filled / 256), ("tasks", plan.tasks)]);
        let totals = workload.fragment()?;
        let score = compaction::node_score();
        let stranded = compaction::stranded_pages();
        event(
            "fragmented",
            &[
                ("score", score),
                ("stranded_mib", stranded / 256),
                ("freed_mib", totals.freed / 256),
                ("kept_mib", totals.kept / 256),
                ("free_mib", page_alloc::free_pages() / 256),
            ],
        );
        if score < 90 {
            log::warn!(
                "fragment: score {score} after the free (below 90: the tasks filled too little of free memory)"
            );
        }
        Ok::<_, alloc::string::String>((workload, totals))
    })?;
    let freed_at = Instant::now();
    let daemon_cpu_before = compaction::daemon_cpu_ns();
    let idle = Duration::from_millis(tunables::SCENARIO_FRAGMENT_IDLE_MS.get());
    let reports_before = reporting::stats().pages_reported;
    let (low, _) = compaction::score_marks();
    let stranded_low = tunables::COMPACTION_STRANDED_LOW_MIB.get() * 256;
    let mut compacted = false;
    let mut reported = !reporting::is_registered();
    if reported {
        log::info!("fragment: free page reporting is off: no reported event");
    }
    while freed_at.elapsed() < idle {
        if !compacted
            && compaction::node_score() <= low
            && compaction::stranded_pages() <= stranded_low
        {
            compacted = true;
            let stats = compaction::stats();
            event(
                "compacted",
                &[
                    ("score", compaction::node_score()),
                    ("stranded_mib", compaction::stranded_pages() / 256),
                    ("ms", freed_at.elapsed().as_millis() as u64),
                    ("pgmigrate_success", stats.pgmigrate_success),
                    // The background task's CPU time over the time it took, in per mille.
                    (
                        "kcompactd_cpu_ms",
                        (compaction::daemon_cpu_ns() - daemon_cpu_before) / 1_000_000,
                    ),
                    (
                        "kcompactd_cpu_permille",
                        (compaction::daemon_cpu_ns() - daemon_cpu_before) * 1000
                            / (freed_at.elapsed().as_nanos() as u64).max(1),
                    ),
                ],
            );
        }
        let reported_since = reporting::stats().pages_reported - reports_before;
        if compacted
            && !reported
            && reporting::is_idle()
            && reported_since > 0
            && unreported_huge_pages() < tunables::REPORTING_HIGH_WATER_MIB.get() * 256 + 2 * 512
        {
            reported = true;
            event(
                "reported",
                &[
                    ("mib", reported_since / 256),
                    ("ms", freed_at.elapsed().as_millis() as u64),
                ],
            );
        }
        task::sleep(Duration::from_millis(10));
    }
    if !compacted {
        log::info!(
            "fragment: not compacted after {} ms (score {}, {} MiB stranded; proactiveness {})",
            idle.as_millis(),
            compaction::node_score(),
            compaction::stranded_pages() / 256,
            tunables::COMPACTION_PROACTIVENESS.get()
        );
    }
    let verified = workload.verify()?;
    event(
        "verified",
        &[
            ("pages", verified.verified),
            ("bad", verified.bad),
            ("kept", totals.kept),
        ],
    );
    let stats = compaction::stats();
    event(
        "done",
        &[
            ("pgmigrate_success", stats.pgmigrate_success),
            ("pgmigrate_fail", stats.pgmigrate_fail),
            ("compact_daemon_wake", stats.compact_daemon_wake),
            ("compact_stall", stats.compact_stall),
            ("bytes_reported", reporting::stats().bytes_reported),
        ],
    );
    checker::check()?;
    Ok(())
}

/// The content of page `page` in every space of `scenario=ksm` (distinct per page).
fn ksm_signature(page: u64) -> u64 {
    page.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

fn ksm() -> Result<(), alloc::string::String> {
    use crate::mm::ksm;
    use crate::mm::space::{AddressSpace, RegionFlags};
    const START: u64 = 0x3000_0000_0000;
    const SPACES: u64 = 4;
    let pages = tunables::SCENARIO_KSM_MIB.get() * 256;
    let flags = RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MERGEABLE;
    let mut spaces = Vec::new();
    for _ in 0..SPACES {
        let shared = AddressSpace::new().map_err(|error| alloc::format!("space: {error:?}"))?;
        shared
            .lock()
            .map_anonymous(Some(START), pages * PAGE_SIZE, flags)
            .map_err(|error| alloc::format!("region: {error:?}"))?;
        spaces.push(shared);
    }
    let fill = |shared: &crate::mm::space::SharedSpace, page: u64| {
        let mut space = shared.lock();
        let at = START + page * PAGE_SIZE;
        space
            .write_user(at, &ksm_signature(page).to_le_bytes())
            .and_then(|()| space.write_user(at + 4088, &page.to_le_bytes()))
            .map_err(|error| alloc::format!("fill: {error:?}"))
    };
    if tunables::SCENARIO_KSM_INTERLEAVE.get() == 1 {
        // Page by page in turn: consecutive frames belong to different spaces.
        for page in 0..pages {
            for shared in &spaces {
                fill(shared, page)?;
            }
        }
    } else {
        for shared in &spaces {
            for page in 0..pages {
                fill(shared, page)?;
            }
        }
    }
    let before = ksm::stats();
    let (checksum_ns, compare_ns) = ksm::measure_page_costs(200);
    event(
        "filled",
        &[
            ("pages_per_space", pages),
            ("spaces", SPACES),
            ("ns_per_checksum", checksum_ns),
            ("ns_per_page_compare", compare_ns),
        ],
    );
    let filled = Instant::now();
    ksm::run_unless_set_on_command_line();
    // `ksm.run=0` on the command line: the control (nothing may merge).
    let running = tunables::KSM_RUN.get() == 1;
    let merged = |stats: &ksm::KsmStats| {
        stats.pages_shared >= pages && stats.pages_sharing >= (SPACES - 1) * pages
    };
    while running && !merged(&ksm::stats()) && filled.elapsed() < Duration::from_secs(300) {
        task::sleep(Duration::from_millis(10));
    }
    let elapsed_ns = filled.elapsed().as_nanos() as u64;
    let after = ksm::stats();
    if running && !merged(&after) {
        return Err(alloc::format!(
            "not merged after {} ms: {after:?}",
            elapsed_ns / 1_000_000
        ));
    }
    if !running && after.pages_sharing != before.pages_sharing {
        return Err(alloc::format!("merged with ksm.run=0: {after:?}"));
    }
    let scan_ns = after.scan_ns - before.scan_ns;
    event(
        "merged",
        &[
            ("ms_since_filled", elapsed_ns / 1_000_000),
            ("full_scans", after.full_scans - before.full_scans),
            ("pages_shared", after.pages_shared),
            ("pages_sharing", after.pages_sharing),
            ("scan_ms", scan_ns / 1_000_000),
            ("scanner_cpu_pct", scan_ns * 100 / elapsed_ns.max(1)),
            (
                "ns_per_page_scanned",
                scan_ns / (after.pages_scanned - before.pages_scanned).max(1),
            ),
        ],
    );
    // The freed duplicates go to the host through free page reporting (whole 2 MiB blocks:
    // the spaces filled one after the other, so each one's duplicates lie together); the host
    // watches the QEMU process meanwhile.
    reporting::request();
    let idle = Instant::now();
    task::sleep(Duration::from_millis(100));
    while !reporting::is_idle() && idle.elapsed() < Duration::from_secs(10) {
        task::sleep(Duration::from_millis(10));
    }
    event(
        "reported",
        &[
            ("ms_since_merged", idle.elapsed().as_millis() as u64),
            ("free_pages", page_alloc::free_pages()),
            ("idle_ms", tunables::SCENARIO_IDLE_MS.get()),
        ],
    );
    task::sleep(Duration::from_millis(tunables::SCENARIO_IDLE_MS.get()));
    // Each space writes one word in every page: every write to a merged page copies it
    // (cow_ksm), and nothing one space writes shows in another.
    let written = Instant::now();
    for (which, shared) in spaces.iter().enumerate() {
        let mut space = shared.lock();
        for page in 0..pages {
            let value = (which as u64) << 56 | page;
            space
                .write_user(START + page * PAGE_SIZE + 8, &value.to_le_bytes())
                .map_err(|error| alloc::format!("write: {error:?}"))?;
        }
    }
    let write_ns = written.elapsed().as_nanos() as u64;
    for (which, shared) in spaces.iter().enumerate() {
        let mut space = shared.lock();
        for page in 0..pages {
            let mut words = [0u8; 16];
            space
                .read_user(START + page * PAGE_SIZE, &mut words)
                .map_err(|error| alloc::format!("read: {error:?}"))?;
            let first = u64::from_le_bytes(words[..8].try_into().unwrap_or_default());
            let second = u64::from_le_bytes(words[8..].try_into().unwrap_or_default());
            if first != ksm_signature(page) || second != (which as u64) << 56 | page {
                return Err(alloc::format!(
                    "space {which} page {page}: read {first:#x} {second:#x}"
                ));
            }
        }
    }
    let end = ksm::stats();
    event(
        "written",
        &[
            ("cow_ksm", end.cow_ksm - after.cow_ksm),
            ("ns_per_cow_fault", write_ns / (SPACES * pages)),
            ("pages_shared", end.pages_shared),
        ],
    );
    let expected = if running { SPACES * pages } else { 0 };
    if end.cow_ksm - after.cow_ksm != expected {
        return Err(alloc::format!("expected {expected} KSM copies: {end:?}"));
    }
    tunables::KSM_RUN
        .set(0)
        .map_err(|error| alloc::format!("ksm.run: {error}"))?;
    ksm::wait_idle();
    checker::check()?;
    drop(spaces);
    checker::check()?;
    event("done", &[]);
    Ok(())
}
