//! `scenario=soak`: ring-3 tasks churn memory for `soak.seconds` while the host moves the
//! balloon and free page reporting runs; every page must be where it should be at the end.
//!
//! Phases follow one another until the time is up. A phase starts 1..=`soak.tasks` tasks of the
//! `churn` program (seeded from `soak.seed`: region sizes, rounds, clone depth; one phase in 8
//! has a big task whose regions reach 1/64 of memory), each of which maps, writes, verifies,
//! unmaps, clones (copy-on-write) and waits in ring 3; meanwhile the soak runs the frame-state
//! checker (which proves the reverse map too) at random moments and may kill one of the tasks.
//! A phase ends when its tasks and all their children are gone (a phase still running 5 s after
//! `soak.seconds` has its tasks killed, so the soak's length stays bounded); then the checker
//! and the reverse-map checker must pass, with no user page and no address
//! space left. A task may end with 0, or be killed by the soak or the OOM killer; anything else
//! (a data mismatch in ring 3, a fault) fails the soak.
//!
//! At the end the soak waits for the balloon to be empty (the host deflates it; without a host
//! it never inflated) and takes its final accounting against the one taken at the start: no
//! user, KSM or balloon page, the same stacks, kernel and device pages, page tables and heap
//! grown by at most a bound (stack-slot tables are kept for reuse), free memory short by
//! exactly what those grew, no space, task or thread left, and the heap's used bytes back
//! within the capacity its containers keep. A last phase, with the balloon empty, must then
//! leave every page and every heap byte exactly where it found them.
//!
//! EVENT lines: `soak_start`, `heartbeat` (every 250 ms from a thread of its own, so the host
//! sees the guest respond), `phase` (after each phase's checks), `churn_done`, `accounting`,
//! `soak_summary`, `soak_done`; figures are in pages unless the key says otherwise.
//!
//! Owns its counters and the heartbeat thread; everything else through public interfaces.

use super::event;
use crate::drivers::balloon;
use crate::mm::checker::{self, FrameCensus};
use crate::mm::frame::{FrameState, Owner};
use crate::mm::space::{self, LIVE_SPACES};
use crate::mm::{PAGE_SIZE, heap, page_alloc, paging, reporting};
use crate::time::Instant;
use crate::user::{self, TaskExit, TaskHandle, programs};
use crate::{task, tunables};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use core::time::Duration;

/// Name of the soak's tasks (their children are named `soak-child`, `soak-child-child`).
const TASK_NAME: &str = "soak";
/// Longest a phase may take before the soak counts it as a hang.
const PHASE_LIMIT: Duration = Duration::from_secs(120);
/// Seconds past `soak.seconds` after which a phase still running has its tasks killed.
const CUT_GRACE_S: u64 = 5;
/// Longest the soak waits for the host to empty the balloon at the end.
const DEFLATE_LIMIT: Duration = Duration::from_secs(120);
/// Largest region a task maps, in pages.
const MAX_REGION_PAGES: u64 = 256;
/// Heap bytes in use that may stay after the soak: containers keep their capacity (the
/// balloon's list of blocks up to 16 bytes a page, twice over while it grows), plus this.
const HEAP_SLACK_BYTES: u64 = 64 * 1024;
/// Heap bytes a last phase without the balloon may leave behind (none are expected).
const QUIET_HEAP_SLACK_BYTES: u64 = 4096;

static STOP_HEARTBEAT: AtomicBool = AtomicBool::new(false);
static PHASE: AtomicU64 = AtomicU64::new(0);
/// The most pages the balloon held at once during the soak (sampled).
static PEAK_BALLOON: AtomicU64 = AtomicU64::new(0);
/// The most kernel threads alive at once during the soak (sampled): each has a stack slot.
static PEAK_THREADS: AtomicU64 = AtomicU64::new(0);

/// The most bytes of grown heap mapped at once during the soak (sampled): the kernel page
/// tables that mapped them stay.
static PEAK_HEAP_GROWN: AtomicU64 = AtomicU64::new(0);

/// Samples what kernel page tables follow: threads (stack slots) and the grown heap.
fn sample_threads() {
    PEAK_THREADS.fetch_max(task::scheduler::stats().live_threads as u64, Relaxed);
    PEAK_HEAP_GROWN.fetch_max(heap::stats().grown as u64, Relaxed);
}

/// xorshift64*: the soak's choices, reproducible from `soak.seed`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x2545_f491_4f6c_dd1d) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the soak did, for the summary.
#[derive(Default)]
struct Totals {
    phases: u64,
    roots: u64,
    spawn_refused: u64,
    tasks: u64,
    clones: u64,
    pages_churned: u64,
    kills: u64,
    killed_roots: u64,
    checker_runs: u64,
    /// Findings of the checker while tasks ran that were gone when it looked again.
    checker_transient: u64,
    /// Kernel and device pages at the start: no phase may change them.
    fixed_pages: [u64; 2],
    rmap_runs: u64,
    rmap_skipped: u64,
}

/// Where every page is, once things have settled.
#[derive(Clone, Copy)]
struct Accounting {
    census: FrameCensus,
    heap_used: u64,
    live_threads: usize,
}

impl Accounting {
    fn owner(&self, owner: Owner) -> u64 {
        self.census.allocated_by_owner[owner as usize]
    }
    /// Free pages, in the buddy lists and the per-CPU caches.
    fn free(&self) -> u64 {
        self.census.free + self.census.cached
    }
    fn total(&self) -> u64 {
        let census = &self.census;
        census.reserved
            + census.free
            + census.cached
            + census.isolated
            + census.allocated
            + census.uninitialised
    }
}

/// Runs the soak; `Err` says what went wrong.
pub fn run() -> Result<(), String> {
    let seconds = tunables::SOAK_SECONDS.get();
    let seed = tunables::SOAK_SEED.get();
    let tasks = tunables::SOAK_TASKS.get();
    let managed = page_alloc::managed_pages();
    let max_region = (managed / (tasks * 8 * 32)).clamp(4, MAX_REGION_PAGES);
    let mut totals = Totals::default();
    let start = settle(&mut totals)?;
    totals.fixed_pages = [start.owner(Owner::Kernel), start.owner(Owner::Device)];
    let balloon_before = balloon::stats();
    let reporting_before = reporting::stats();
    let tasks_before = user::stats();
    let faults_before = space::minor_faults_total();
    event(
        "soak_start",
        &[
            ("seed", seed),
            ("seconds", seconds),
            ("tasks", tasks),
            ("max_region_pages", max_region),
            ("managed_pages", managed),
            ("free_pages", start.free()),
            ("reserve_pages", balloon_reserve_pages()),
            ("balloon", u64::from(balloon::is_present())),
        ],
    );
    log::info!(
        "soak: {seconds} s, seed {seed}, up to {tasks} tasks a phase, regions of up to {max_region} pages"
    );
    STOP_HEARTBEAT.store(false, Relaxed);
    let heartbeat = task::spawn("soak-heartbeat", heartbeat)
        .map_err(|error| format!("no heartbeat thread: {error:?}"))?;
    let mut rng = Rng::new(seed);
    let began = Instant::now();
    let mut outcome = Ok(());
    let cut_at = Instant::from_nanos(began.as_nanos() + (seconds + CUT_GRACE_S) * 1_000_000_000);
    while began.elapsed() < Duration::from_secs(seconds) {
        if let Err(problem) = phase(&mut rng, tasks, max_region, &mut totals, Some(cut_at)) {
            outcome = Err(problem);
            break;
        }
    }
    let churn_ns = began.elapsed().as_nanos() as u64;
    let finish = outcome.and_then(|()| {
        event(
            "churn_done",
            &[("phases", totals.phases), ("churn_ns", churn_ns)],
        );
        wait_for_empty_balloon()
    });
    STOP_HEARTBEAT.store(true, Relaxed);
    heartbeat.join();
    finish?;
    let mut end = settle(&mut totals)?;
    // A last phase with the balloon empty: everything it took, heap bytes included, must be
    // back exactly (the whole soak's heap use is bounded only loosely: containers keep their
    // capacity).
    let quiet = phase(&mut rng, tasks, max_region, &mut totals, None).and_then(|()| {
        let after = settle(&mut totals)?;
        compare_quiet(&end, &after)?;
        Ok(after)
    });
    let quiet_ok = quiet.is_ok();
    match quiet {
        Ok(after) => end = after,
        Err(problem) => log::error!("soak: the last phase, without the balloon: {problem}"),
    }
    let tasks_after = user::stats();
    let balloon_after = balloon::stats();
    let reporting_after = reporting::stats();
    totals.tasks = tasks_after.started - tasks_before.started;
    totals.clones = totals.tasks - totals.roots;
    totals.pages_churned = space::minor_faults_total() - faults_before;
    let verdict = compare(&start, &end).and_then(|()| {
        if quiet_ok {
            Ok(())
        } else {
            Err("the last phase, without the balloon, left something behind".into())
        }
    });
    account_event(&start, &end, verdict.is_ok());
    event(
        "soak_summary",
        &[
            ("seed", seed),
            ("churn_ns", churn_ns),
            ("phases", totals.phases),
            ("root_tasks", totals.roots),
            ("spawns_refused", totals.spawn_refused),
            ("tasks", totals.tasks),
            ("clones", totals.clones),
            (
                "clones_refused",
                tasks_after.clones_refused - tasks_before.clones_refused,
            ),
            ("pages_churned", totals.pages_churned),
            ("soak_kills", totals.kills),
            ("killed_roots", totals.killed_roots),
            ("killed", tasks_after.killed - tasks_before.killed),
            ("oom_kills", tasks_after.oom_kill - tasks_before.oom_kill),
            ("checker_runs", totals.checker_runs),
            ("checker_transient", totals.checker_transient),
            ("rmap_runs", totals.rmap_runs),
            ("rmap_skipped", totals.rmap_skipped),
            ("peak_threads", PEAK_THREADS.load(Relaxed)),
            ("peak_heap_grown_bytes", PEAK_HEAP_GROWN.load(Relaxed)),
            (
                "balloon_target_changes",
                balloon_after.config_interrupts - balloon_before.config_interrupts,
            ),
            (
                "balloon_inflated_pages",
                balloon_after.inflated_pages - balloon_before.inflated_pages,
            ),
            (
                "balloon_deflated_pages",
                balloon_after.deflated_pages - balloon_before.deflated_pages,
            ),
            (
                "balloon_oom_deflated_pages",
                balloon_after.oom_deflated_pages - balloon_before.oom_deflated_pages,
            ),
            (
                "balloon_targets_refused",
                balloon_after.target_refused - balloon_before.target_refused,
            ),
            (
                "reports",
                reporting_after.reports - reporting_before.reports,
            ),
            (
                "pages_reported",
                reporting_after.pages_reported - reporting_before.pages_reported,
            ),
        ],
    );
    verdict?;
    event("soak_done", &[("phases", totals.phases)]);
    Ok(())
}

/// The balloon driver's reserve, as it computes it: the zones' high watermarks plus 1/64 of
/// memory (at least 16 MiB). The host checks that a target above what the guest can spare
/// leaves it at least this much.
fn balloon_reserve_pages() -> u64 {
    let watermarks: u64 = page_alloc::all_zones()
        .iter()
        .map(|zone| zone.watermarks.high)
        .sum();
    watermarks + (page_alloc::managed_pages() / 64).max(4096)
}

fn heartbeat() {
    while !STOP_HEARTBEAT.load(Relaxed) {
        let balloon = balloon::stats();
        PEAK_BALLOON.fetch_max(balloon.actual_pages, Relaxed);
        sample_threads();
        let tasks = user::stats();
        event(
            "heartbeat",
            &[
                ("phase", PHASE.load(Relaxed)),
                ("free_pages", page_alloc::free_pages()),
                ("target_pages", balloon.target_pages),
                ("actual_pages", balloon.actual_pages),
                ("targets_refused", balloon.target_refused),
                ("oom_deflated_pages", balloon.oom_deflated_pages),
                ("live_tasks", tasks.live),
                ("oom_kills", tasks.oom_kill),
            ],
        );
        task::sleep(Duration::from_millis(250));
    }
}

/// One phase: start tasks, check and kill while they run, wait for all of them, check.
fn phase(
    rng: &mut Rng,
    tasks: u64,
    max_region: u64,
    totals: &mut Totals,
    cut_at: Option<Instant>,
) -> Result<(), String> {
    let number = PHASE.fetch_add(1, Relaxed) + 1;
    let program = programs::churn();
    let before = user::stats();
    let faults_before = space::minor_faults_total();
    let roots = 1 + rng.below(tasks);
    let mut running: Vec<TaskHandle> = Vec::new();
    // One phase in 8 has a big task: regions of up to 1/64 of memory, so that with its clones
    // and a large balloon memory runs short (deflate-on-OOM, the OOM killer).
    let big = rng.below(8) == 0;
    for root in 0..roots {
        let most = if big && root == 0 {
            (page_alloc::managed_pages() / 64).clamp(max_region, 0xffff)
        } else {
            max_region
        };
        let packed = (rng.next() & 0xffff_ffff)
            | (1 + rng.below(most)) << 32
            | (32 + rng.below(160)) << 48
            | rng.below(3) << 56;
        match user::spawn(TASK_NAME, &program, packed) {
            Ok(handle) => running.push(handle),
            // Memory may be short while the balloon is large: the phase goes on with fewer.
            Err(error) => {
                totals.spawn_refused += 1;
                log::info!(
                    "soak: phase {number}: a task did not start: {}",
                    error.reason()
                );
            }
        }
    }
    totals.roots += running.len() as u64;
    sample_threads();
    let started = Instant::now();
    let mut killed = false;
    let mut cut = false;
    while !running.is_empty() {
        // Time is up: the phase's tasks are killed (a big task can take a minute under TCG).
        if !cut && cut_at.is_some_and(|at| Instant::now().as_nanos() > at.as_nanos()) {
            cut = true;
            for (pid, _) in user::running_tasks()
                .into_iter()
                .filter(|(_, name)| name.starts_with(TASK_NAME))
            {
                if user::kill(pid, "soak: time is up").is_ok() {
                    totals.kills += 1;
                }
            }
            log::info!("soak: phase {number}: time is up, its tasks are killed");
        }
        if started.elapsed() > PHASE_LIMIT {
            let left: Vec<_> = user::running_tasks();
            return Err(format!(
                "phase {number}: tasks still run after {} s (hang?): {left:?}",
                PHASE_LIMIT.as_secs()
            ));
        }
        sample_threads();
        task::sleep(Duration::from_millis(10 + rng.below(100)));
        match rng.below(8) {
            0 | 1 => {
                check(&format!("phase {number}, tasks running"), totals)?;
            }
            2 | 3 if !killed => {
                let soak_tasks: Vec<_> = user::running_tasks()
                    .into_iter()
                    .filter(|(_, name)| name.starts_with(TASK_NAME))
                    .collect();
                if !soak_tasks.is_empty() {
                    let (pid, name) = &soak_tasks[rng.below(soak_tasks.len() as u64) as usize];
                    if user::kill(*pid, "soak: killed at random").is_ok() {
                        log::info!("soak: phase {number}: killed task {pid} '{name}'");
                        totals.kills += 1;
                        killed = true;
                    }
                }
            }
            _ => {}
        }
        let mut still = Vec::new();
        for handle in running {
            match handle.join_timeout(Duration::from_millis(1)) {
                Ok(report) => match &report.exit {
                    TaskExit::Exited(0) => {}
                    TaskExit::Killed(reason)
                        if reason.contains("soak") || reason.contains("out of memory") =>
                    {
                        totals.killed_roots += 1;
                    }
                    other => {
                        return Err(format!(
                            "phase {number}: task {} ended {other:?} (seed {}, statuses 100.. are \
                             the churn program's findings)",
                            report.pid,
                            tunables::SOAK_SEED.get()
                        ));
                    }
                },
                Err(handle) => still.push(handle),
            }
        }
        running = still;
    }
    // Children let go by a killed parent end on their own.
    while user::stats().live > 0 {
        if started.elapsed() > PHASE_LIMIT {
            return Err(format!(
                "phase {number}: {} tasks still run after {} s: {:?}",
                user::stats().live,
                PHASE_LIMIT.as_secs(),
                user::running_tasks()
            ));
        }
        task::sleep(Duration::from_millis(5));
    }
    let census = check_after_phase(number, totals)?;
    let after = user::stats();
    totals.phases += 1;
    let balloon = balloon::stats();
    event(
        "phase",
        &[
            ("phase", number),
            ("roots", roots),
            ("big", u64::from(big)),
            ("tasks", after.started - before.started),
            ("killed", after.killed - before.killed),
            ("oom_kills", after.oom_kill - before.oom_kill),
            ("pages_churned", space::minor_faults_total() - faults_before),
            ("ms", started.elapsed().as_millis() as u64),
            ("free_pages", census.free + census.cached),
            (
                "balloon_pages",
                census.allocated_by_owner[Owner::Balloon as usize],
            ),
            (
                "page_tables",
                census.allocated_by_owner[Owner::PageTable as usize],
            ),
            (
                "heap_pages",
                census.allocated_by_owner[Owner::Heap as usize],
            ),
            ("target_pages", balloon.target_pages),
            ("actual_pages", balloon.actual_pages),
        ],
    );
    Ok(())
}

/// The frame-state checker (with the reverse map, skipped while a space is being torn down).
/// A thread preempted inside the page allocator (a task's fault, the balloon worker inflating
/// page by page) holds a page in transit: taken off a per-CPU list or a buddy list but not yet
/// labelled allocated (`page_alloc::alloc` labels it after dropping the lock), which the
/// checker reports. With dozens of tasks ready to run, that thread may wait a while for the
/// CPU. So a finding is counted as transient and looked at again; the soak fails only when the
/// same finding stays for [`PERSISTENT`], or when no check passes within [`UNSETTLED`].
fn check(what: &str, totals: &mut Totals) -> Result<FrameCensus, String> {
    const PERSISTENT: Duration = Duration::from_secs(5);
    const UNSETTLED: Duration = Duration::from_secs(60);
    let started = Instant::now();
    let mut first: Option<(String, Instant)> = None;
    loop {
        totals.checker_runs += 1;
        let problem = match checker::check() {
            Ok(census) => return Ok(census),
            Err(problem) => problem,
        };
        let since = match &first {
            Some((seen, since)) if *seen == problem => *since,
            _ => {
                totals.checker_transient += 1;
                log::warn!("soak: {what}: checker: {problem}; looking again");
                first = Some((problem.clone(), Instant::now()));
                Instant::now()
            }
        };
        if since.elapsed() >= PERSISTENT {
            return Err(format!(
                "{what}: checker, the same finding for {} s: {problem}",
                PERSISTENT.as_secs()
            ));
        }
        if started.elapsed() >= UNSETTLED {
            return Err(format!(
                "{what}: checker, no consistent picture for {} s: {problem}",
                UNSETTLED.as_secs()
            ));
        }
        task::sleep(Duration::from_millis(20));
    }
}

/// After a phase: the frame-state checker and the reverse-map checker (not skipped: no space
/// is being torn down once every task is gone), no user page or space left, and the kernel's
/// and devices' pages as they were at the start.
fn check_after_phase(number: u64, totals: &mut Totals) -> Result<FrameCensus, String> {
    let started = Instant::now();
    loop {
        // A compaction pass in flight holds its target pages as the kernel's: wait it out.
        if !crate::mm::compaction::is_idle() && started.elapsed() < Duration::from_secs(10) {
            task::sleep(Duration::from_millis(5));
            continue;
        }
        let census = check(&format!("phase {number}, after"), totals)?;
        let mapped = space::check_reverse_map()
            .map_err(|problem| format!("phase {number}: reverse map: {problem}"))?;
        let Some(mapped) = mapped else {
            totals.rmap_skipped += 1;
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "phase {number}: a space is still being torn down 10 s after the tasks ended"
                ));
            }
            task::sleep(Duration::from_millis(5));
            continue;
        };
        totals.rmap_runs += 1;
        for (owner, at_start) in [Owner::Kernel, Owner::Device]
            .into_iter()
            .zip(totals.fixed_pages)
        {
            let now = census.allocated_by_owner[owner as usize];
            if now != at_start {
                return Err(format!(
                    "phase {number}: {now} {owner:?} pages after the phase, {at_start} at the \
                     start ({})",
                    allocated_heads(owner)
                ));
            }
        }
        let user_pages = census.allocated_by_owner[Owner::UserAnon as usize];
        let spaces = LIVE_SPACES.load(Relaxed);
        if user_pages != 0 || mapped != 0 || spaces != 0 {
            return Err(format!(
                "phase {number}: every task is gone but {user_pages} user pages, {mapped} \
                 mappings and {spaces} address spaces are left"
            ));
        }
        return Ok(census);
    }
}

/// Waits until the balloon's target and size are 0 and stay so for a second (the host empties
/// it once it sees `churn_done`; a change it sent just before lands within that second).
fn wait_for_empty_balloon() -> Result<(), String> {
    let started = Instant::now();
    let mut empty_since: Option<Instant> = None;
    loop {
        let stats = balloon::stats();
        if stats.target_pages == 0 && stats.actual_pages == 0 {
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(1) {
                return Ok(());
            }
        } else {
            empty_since = None;
        }
        if started.elapsed() > DEFLATE_LIMIT {
            return Err(format!(
                "the balloon is not empty {} s after the churn: target {} pages, actual {}",
                DEFLATE_LIMIT.as_secs(),
                stats.target_pages,
                stats.actual_pages
            ));
        }
        task::sleep(Duration::from_millis(20));
    }
}

/// Waits for tasks and their threads to be gone, drains the per-CPU caches, lets a reporting
/// pass in flight finish (no page isolated), and takes the accounting.
fn settle(totals: &mut Totals) -> Result<Accounting, String> {
    let started = Instant::now();
    loop {
        // A compaction pass in flight holds target pages (owned by the kernel until it ends).
        let quiet =
            user::stats().live == 0 && reporting::is_idle() && crate::mm::compaction::is_idle();
        if quiet {
            // Dead threads' stacks are freed once they have run out.
            task::sleep(Duration::from_millis(20));
            page_alloc::drain_per_cpu_caches();
            let census = check("settled", totals)?;
            if census.isolated == 0 && user::stats().live == 0 {
                return Ok(Accounting {
                    census,
                    heap_used: heap::stats().used as u64,
                    live_threads: task::scheduler::stats().live_threads,
                });
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "memory did not settle within 30 s: {} tasks live, reporting idle: {}",
                user::stats().live,
                reporting::is_idle()
            ));
        }
        task::sleep(Duration::from_millis(10));
    }
}

/// The last phase, run with the balloon empty: it leaves every page and heap byte where it was.
fn compare_quiet(before: &Accounting, after: &Accounting) -> Result<(), String> {
    let same_pages = Owner::ALL
        .iter()
        .all(|&owner| before.owner(owner) == after.owner(owner))
        && before.free() == after.free();
    if !same_pages {
        return Err(format!(
            "pages by owner {:?} and {} free before, {:?} and {} after",
            before.census.allocated_by_owner,
            before.free(),
            after.census.allocated_by_owner,
            after.free()
        ));
    }
    if after.heap_used > before.heap_used + QUIET_HEAP_SLACK_BYTES {
        return Err(format!(
            "heap use grew from {} to {} bytes",
            before.heap_used, after.heap_used
        ));
    }
    Ok(())
}

/// The final accounting: everything the tasks and the balloon held is back.
fn compare(start: &Accounting, end: &Accounting) -> Result<(), String> {
    let mut problems: Vec<String> = Vec::new();
    for owner in [Owner::UserAnon, Owner::KsmShared, Owner::Balloon] {
        if end.owner(owner) != 0 {
            problems.push(format!("{} {owner:?} pages left", end.owner(owner)));
        }
    }
    for owner in [Owner::Stack, Owner::Kernel, Owner::Device] {
        if end.owner(owner) != start.owner(owner) {
            problems.push(format!(
                "{owner:?} pages {} at the end, {} at the start ({})",
                end.owner(owner),
                start.owner(owner),
                allocated_heads(owner)
            ));
        }
    }
    // Kernel page tables stay once made: for stack slots (one per 32 slots, kept for reuse)
    // and for the grown heap's range (one per 2 MiB), up to the most threads and the largest
    // heap at once. Those are sampled (a heap that grew for a moment is missed), so more is
    // said, not failed: the exact check is below, every page-table page must be reachable from
    // the kernel's tables. A leak per task shows in the last phase too, which must leave the
    // page tables exactly as they were.
    let heap = end.owner(Owner::Heap) as i64 - start.owner(Owner::Heap) as i64;
    let (threads, heap_bytes) = (PEAK_THREADS.load(Relaxed), PEAK_HEAP_GROWN.load(Relaxed));
    let table_slack = 2 * (threads / 32 + heap_bytes / (2 << 20)) + 8;
    let tables = end.owner(Owner::PageTable) as i64 - start.owner(Owner::PageTable) as i64;
    if tables < 0 {
        problems.push(format!("page-table pages fell by {}", -tables));
    } else if tables as u64 > table_slack {
        log::warn!(
            "soak: the kernel's page tables grew by {tables} pages, more than the {table_slack} \
             that {threads} threads alive at once and {} KiB of grown heap (sampled) explain",
            heap_bytes / 1024
        );
    }
    // Every page no longer free is one of those.
    let lost = start.free() as i64 - end.free() as i64;
    if lost != tables + heap {
        problems.push(format!(
            "free pages {} at the end, {} at the start: {lost} fewer, but page tables grew by \
             {tables} and the heap by {heap}",
            end.free(),
            start.free()
        ));
    }
    if end.total() != start.total() {
        problems.push(format!(
            "the census counts {} pages at the end, {} at the start",
            end.total(),
            start.total()
        ));
    }
    let heap_slack = HEAP_SLACK_BYTES + 32 * PEAK_BALLOON.load(Relaxed);
    if end.heap_used > start.heap_used + heap_slack {
        problems.push(format!(
            "heap use grew from {} to {} bytes (at most {heap_slack} more expected)",
            start.heap_used, end.heap_used
        ));
    }
    if end.live_threads != start.live_threads {
        problems.push(format!(
            "{} threads at the end, {} at the start",
            end.live_threads, start.live_threads
        ));
    }
    let spaces = LIVE_SPACES.load(Relaxed);
    if spaces != 0 {
        problems.push(format!("{spaces} address spaces left"));
    } else {
        // With no address space alive, every page-table page is one of the kernel's tables.
        let reachable = kernel_table_pages();
        let owned = end.owner(Owner::PageTable);
        if owned != reachable {
            problems.push(format!(
                "{owned} page-table pages allocated but {reachable} reachable from the kernel's \
                 page tables, and no address space is alive: {} page-table pages leaked",
                owned as i64 - reachable as i64
            ));
        }
    }
    let left = user::running_tasks();
    if user::stats().live != 0 || !left.is_empty() {
        problems.push(format!("tasks left: {left:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("final accounting: {}", problems.join("; ")))
    }
}

/// Page-table pages (owned as such) reachable from the kernel's PML4: the PML4 itself and every
/// table below it that is not a large page. Reads only, through the direct map.
fn kernel_table_pages() -> u64 {
    const PRESENT: u64 = 1;
    const HUGE: u64 = 1 << 7;
    const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
    let is_table_page = |phys: u64| {
        page_alloc::zone_of(phys / PAGE_SIZE).is_some_and(|zone| {
            let frame = zone.frame(phys / PAGE_SIZE);
            frame.state() == FrameState::Allocated && frame.owner() == Owner::PageTable
        })
    };
    let entries = |phys: u64| -> &'static [u64] {
        // SAFETY: a page-table page of the kernel's tables, direct-mapped; read only, and
        // nothing changes the kernel's tables while the soak has settled.
        unsafe { core::slice::from_raw_parts(crate::mm::phys_to_virt(phys) as *const u64, 512) }
    };
    let mut count = 0;
    // An explicit stack instead of recursion: (table, level), level 4 = PML4.
    let root = paging::kernel_pml4_phys();
    let mut stack: Vec<(u64, u32)> = alloc::vec![(root, 4)];
    while let Some((table, level)) = stack.pop() {
        if is_table_page(table) {
            count += 1;
        }
        if level == 1 {
            continue;
        }
        for &entry in entries(table) {
            if entry & PRESENT == 0 || (level < 4 && entry & HUGE != 0) {
                continue;
            }
            stack.push((entry & ADDRESS, level - 1));
        }
    }
    count
}

/// The first allocated blocks labelled `owner`, with their records, for a report (no lock:
/// nothing changes them once the soak has settled).
fn allocated_heads(owner: Owner) -> String {
    const SHOWN: usize = 8;
    let mut found: Vec<String> = Vec::new();
    for zone in page_alloc::all_zones() {
        for (index, frame) in zone.frames().iter().enumerate() {
            if frame.state() != FrameState::Allocated || frame.owner() != owner {
                continue;
            }
            if found.len() < SHOWN {
                let pfn = zone.start_pfn + index as u64;
                found.push(format!(
                    "pfn {pfn:#x} order {} refcount {} mapcount {} rmap {:#x} flags {:?} \
                     pageblock {:?}",
                    frame.order(),
                    frame.refcount.load(Relaxed),
                    frame.mapcount.load(Relaxed),
                    frame.rmap.load(Relaxed),
                    frame.flags(),
                    zone.pageblock_type(pfn)
                ));
            }
        }
    }
    if found.is_empty() {
        "none found".into()
    } else {
        found.join(", ")
    }
}

fn account_event(start: &Accounting, end: &Accounting, ok: bool) {
    const START: [&str; 9] = [
        "start_free",
        "start_balloon",
        "start_kernel",
        "start_heap",
        "start_page_tables",
        "start_stacks",
        "start_device",
        "start_user",
        "start_heap_used_bytes",
    ];
    const END: [&str; 9] = [
        "end_free",
        "end_balloon",
        "end_kernel",
        "end_heap",
        "end_page_tables",
        "end_stacks",
        "end_device",
        "end_user",
        "end_heap_used_bytes",
    ];
    let figures = |at: &Accounting| {
        [
            at.free(),
            at.owner(Owner::Balloon),
            at.owner(Owner::Kernel),
            at.owner(Owner::Heap),
            at.owner(Owner::PageTable),
            at.owner(Owner::Stack),
            at.owner(Owner::Device),
            at.owner(Owner::UserAnon),
            at.heap_used,
        ]
    };
    let mut all: Vec<(&str, u64)> = Vec::new();
    all.extend(START.into_iter().zip(figures(start)));
    all.extend(END.into_iter().zip(figures(end)));
    all.push(("total_pages", end.total()));
    all.push(("live_spaces", LIVE_SPACES.load(Relaxed)));
    all.push(("live_tasks", user::stats().live));
    all.push(("ok", u64::from(ok)));
    event("accounting", &all);
}
