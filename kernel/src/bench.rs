//! Benchmarks, printed as `BENCH {...}` lines (see [`report`]). Run with `cargo run -- bench=NAME`.
//!
//! `alloc`: the page allocator against the `buddy_system_allocator` crate's `FrameAllocator`
//! (max order 10 like ours) on the same operation sequences in the same boot, alternating runs,
//! medians of [`RUNS`]. The sequences (order-0 pairs, batches of 10,000, mixed orders 0..9,
//! batches of 256 order-9 blocks) are `buddy_core::workload`'s, which the native benchmark
//! ([`NATIVE_COMMAND`]) runs on the host. The baseline runs behind the crate's own
//! `LockedFrameAllocator` (a spin lock); ours takes its per-CPU and zone locks. Each allocator
//! runs its own copy of the sequences (generic, inlined into `timed_ours` and
//! `timed_baseline`), calling it directly: no dynamic dispatch is timed on either side, and
//! each copy starts a page of its own (the `fast` and `baseline` hot text groups, see
//! `arch::hot_text`). Times come from the TSC.
//!
//! `fragmentation`: the fragmenting workload of `scenario=fragment` ([`crate::fragment`]: tasks
//! fill `scenario.fragment_mib` and free 3 of every 4 pages of each 2 MiB block) run once per
//! compaction setting in one boot: none at all, direct compaction only (proactiveness 0), and
//! proactiveness 20, the configured value (default 50) and 100. After each free it samples the
//! fragmentation score every 100 ms for `bench.fragmentation_watch_ms`, then allocates 2 MiB
//! blocks until one fails (latency percentiles, and how much of free memory they made), and
//! finally times page migration beside a plain 4 KiB copy. A 2 MiB allocation from unfragmented
//! memory, at the start of the same boot, is the baseline. `tests/host/fragmentation_bench.py`
//! makes the table and plots.
//! `ksm`: KSM's scan, merge, write-fault, unmerge and idle figures (`mm::ksm::bench`).

use crate::arch::rdtsc;
use crate::mm::PAGE_SIZE;
use crate::mm::buddy::MigrateType;
use crate::mm::page_alloc::{self, AllocRequest, Pages};
use crate::time::{self, Instant};
use alloc::vec::Vec;
use buddy_core::workload::{self, Frames};
use buddy_system_allocator::LockedFrameAllocator;

pub const RUNS: usize = 5;

/// The native benchmark of the same sequences (the buddy core on the host, against the same
/// baseline): `bench=alloc` prints it so that both can be compared.
pub const NATIVE_COMMAND: &str = "cargo bench -p buddy-core --bench native";

/// Names of the benchmarks `run` knows.
pub const NAMES: &[&str] = &[
    "boot",
    "alloc",
    "reporting",
    "compaction_overhead",
    "fragmentation",
    "ksm",
];

/// Runs benchmark `name`: `None` if there is no such benchmark, otherwise whether it ran to
/// its end (a benchmark whose workload fails says why and fails the run).
pub fn run(name: &str) -> Option<crate::ExitCode> {
    if name == "boot" {
        boot_benchmark();
        return Some(crate::ExitCode::Success);
    }
    if !NAMES.contains(&name) {
        return None;
    }
    // Benchmarks measure a settled kernel: every frame record written (and no pgdatinit
    // sharing the CPU).
    crate::mm::deferred_init::wait_until_done(core::time::Duration::from_secs(600));
    match name {
        "alloc" => alloc_benchmark(),
        "reporting" => reporting_benchmark(),
        "compaction_overhead" => compaction_overhead_benchmark(),
        "fragmentation" => {
            if let Err(problem) = fragmentation_benchmark() {
                log::error!("bench=fragmentation failed: {problem}");
                return Some(crate::ExitCode::Failure);
            }
        }
        "ksm" => {
            // scenario.ksm_mib per space (default 64 MiB).
            crate::mm::ksm::bench::run(crate::tunables::SCENARIO_KSM_MIB.get() * 256);
        }
        _ => return None,
    }
    Some(crate::ExitCode::Success)
}

/// `bench=boot`: how long boot took to reach the main thread (from the PVH entry), how much of
/// the frame database it wrote on the way and what that cost, then when deferred
/// initialisation finished (`mm::deferred_init`) and what the rest cost. One `BENCH` line:
/// `tests/host/boot_bench.py` boots it several times per memory size and takes medians.
fn boot_benchmark() {
    let main_ns = crate::main_entered_ns();
    let at_boot = crate::mm::deferred_init::stats();
    let done = crate::mm::deferred_init::wait_until_done(core::time::Duration::from_secs(600));
    let stats = crate::mm::deferred_init::stats();
    let later_frames = stats.worker_frames + stats.on_demand_frames;
    let later_ns = stats.worker_ns + stats.on_demand_ns;
    let per_gib = crate::mm::deferred_init::per_gib_us;
    report(
        "boot",
        &[
            ("managed_mib", (page_alloc::managed_pages() >> 8) as f64),
            (
                "deferred_init",
                crate::tunables::MM_DEFERRED_INIT.get() as f64,
            ),
            ("main_thread_ms", main_ns as f64 / 1e6),
            ("boot_frames_mib", (at_boot.boot_frames >> 8) as f64),
            ("boot_init_ms", at_boot.boot_ns as f64 / 1e6),
            (
                "boot_init_us_per_gib",
                per_gib(at_boot.boot_ns, at_boot.boot_frames) as f64,
            ),
            ("deferred_mib", (at_boot.deferred_at_boot >> 8) as f64),
            ("deferred_done", u8::from(done) as f64),
            ("deferred_done_ms", stats.done_at_ns as f64 / 1e6),
            ("deferred_work_ms", later_ns as f64 / 1e6),
            (
                "deferred_us_per_gib",
                per_gib(later_ns, later_frames) as f64,
            ),
            ("on_demand_mib", (stats.on_demand_pages >> 8) as f64),
        ],
    );
}

/// Prints one machine-readable line: `BENCH {"name":...,...}` with the given numeric fields.
pub fn report(name: &str, fields: &[(&str, f64)]) {
    let mut line = alloc::format!("BENCH {{\"name\":\"{name}\"");
    for (key, value) in fields {
        line.push_str(&alloc::format!(",\"{key}\":{value:.3}"));
    }
    line.push('}');
    crate::println!("{line}");
}

/// [`report`] with text fields (a setting's name) before the figures.
pub fn report_labelled(name: &str, labels: &[(&str, &str)], fields: &[(&str, f64)]) {
    let mut line = alloc::format!("BENCH {{\"name\":\"{name}\"");
    for (key, value) in labels {
        line.push_str(&alloc::format!(",\"{key}\":\"{value}\""));
    }
    for (key, value) in fields {
        line.push_str(&alloc::format!(",\"{key}\":{value:.3}"));
    }
    line.push('}');
    crate::println!("{line}");
}

/// Our allocator; batches go through its batch interface (`alloc_bulk`, `free_bulk`), kept in
/// their owning handles meanwhile.
struct Ours(Vec<Pages>);

impl Frames for Ours {
    #[unsafe(link_section = ".text.hot.fast")]
    fn alloc(&mut self, order: u8) -> Option<u64> {
        page_alloc::alloc(AllocRequest::new(order).kind(MigrateType::Movable)).map(Pages::into_raw)
    }
    #[unsafe(link_section = ".text.hot.fast")]
    fn free(&mut self, pfn: u64, order: u8) {
        // SAFETY: the sequences free exactly the blocks `alloc` gave them, each once.
        let pages = unsafe { Pages::from_raw(pfn, order) };
        page_alloc::free(pages).expect("benchmark frees what it allocated");
    }
    #[unsafe(link_section = ".text.hot.bulk_alloc")]
    fn alloc_batch(&mut self, order: u8, count: usize, _held: &mut Vec<(u64, u8)>) -> usize {
        // The blocks stay in their owning handles until `free_batch`.
        let request = AllocRequest::new(order).kind(MigrateType::Movable);
        page_alloc::alloc_bulk(request, count, &mut self.0)
    }
    #[unsafe(link_section = ".text.hot.bulk_free")]
    fn free_batch(&mut self, _held: &mut Vec<(u64, u8)>) {
        page_alloc::free_bulk(&mut self.0).expect("benchmark frees what it allocated");
    }
}

struct Baseline(LockedFrameAllocator<11>);

impl Frames for Baseline {
    #[unsafe(link_section = ".text.hot.baseline")]
    fn alloc(&mut self, order: u8) -> Option<u64> {
        self.0.lock().alloc(1 << order).map(|frame| frame as u64)
    }
    #[unsafe(link_section = ".text.hot.baseline")]
    fn free(&mut self, pfn: u64, order: u8) {
        self.0.lock().dealloc(pfn as usize, 1 << order)
    }
}

/// The TSC ticks one run of `case` takes (the sequences are inlined here: each allocator's
/// copy calls it directly).
#[inline(always)]
fn timed<F: Frames>(case: usize, frames: &mut F, held: &mut Vec<(u64, u8)>) -> u64 {
    let start = rdtsc();
    workload::run_case(case, frames, held);
    rdtsc() - start
}

/// [`timed`] with our allocator: its loops lie in the `fast` hot group, beside the fast paths
/// they call (see `arch::hot_text`).
#[inline(never)]
#[unsafe(link_section = ".text.hot.fast")]
fn timed_ours(case: usize, ours: &mut Ours, held: &mut Vec<(u64, u8)>) -> u64 {
    timed(case, ours, held)
}

/// [`timed`] with the baseline: its loops and its calls into the crate start a page of their
/// own (the `baseline` hot group), as ours do; the crate's code lies where the linker puts it.
#[inline(never)]
#[unsafe(link_section = ".text.hot.baseline")]
fn timed_baseline(case: usize, baseline: &mut Baseline, held: &mut Vec<(u64, u8)>) -> u64 {
    timed(case, baseline, held)
}

/// The mixed sequence (see [`workload::mixed`]), timed, with our allocator (its loop in the
/// `fast` hot group, as `bench=alloc`'s).
#[inline(never)]
#[unsafe(link_section = ".text.hot.fast")]
fn mixed<F: Frames>(frames: &mut F, held: &mut Vec<(u64, u8)>, operations: u64, seed: u64) -> u64 {
    let start = rdtsc();
    workload::mixed(frames, held, operations, seed);
    rdtsc() - start
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn alloc_benchmark() {
    // The allocator alone: free page reporting would isolate blocks and run its worker in the
    // middle of our timed runs (bench=reporting measures that cost).
    let reporting_sink = crate::mm::reporting::unregister();
    // The baseline manages the same frame numbers as our largest zone (it never touches memory).
    let zone = page_alloc::all_zones()
        .iter()
        .max_by_key(|zone| zone.managed_pages)
        .expect("a zone");
    let mut baseline = Baseline(LockedFrameAllocator::new());
    baseline
        .0
        .lock()
        .add_frame(zone.start_pfn as usize, zone.end_pfn as usize);
    let mut ours = Ours(Vec::with_capacity(workload::BATCH));
    let mut held = Vec::with_capacity(workload::BATCH);
    crate::println!("native figures of the same sequences: {NATIVE_COMMAND}");
    report_hot_text();
    for (case, (name, operations)) in workload::CASES.into_iter().enumerate() {
        let mut ours_ticks = [0u64; RUNS];
        let mut baseline_ticks = [0u64; RUNS];
        // A warm-up run of each, then alternating measured runs.
        timed_ours(case, &mut ours, &mut held);
        timed_baseline(case, &mut baseline, &mut held);
        for run in 0..RUNS {
            ours_ticks[run] = timed_ours(case, &mut ours, &mut held);
            baseline_ticks[run] = timed_baseline(case, &mut baseline, &mut held);
        }
        let ours_ns = time::tsc_delta_to_ns(median(&mut ours_ticks)) as f64 / operations as f64;
        let baseline_ns =
            time::tsc_delta_to_ns(median(&mut baseline_ticks)) as f64 / operations as f64;
        report(
            name,
            &[
                ("ns_per_op", ours_ns),
                ("baseline_ns_per_op", baseline_ns),
                ("ratio", baseline_ns / ours_ns),
                ("runs", RUNS as f64),
            ],
        );
    }
    if let Some(sink) = reporting_sink {
        crate::mm::reporting::register(sink);
    }
}

/// Logs the hot text groups' sizes (see `arch::hot_text`): the guest figures hold only while
/// each fits in its page.
fn report_hot_text() {
    let groups = crate::arch::hot_text::groups();
    let sizes: Vec<_> = groups
        .iter()
        .map(|group| alloc::format!("{} {} B", group.name, group.bytes()))
        .collect();
    log::info!("hot text groups: {}", sizes.join(", "));
    for group in groups.iter().filter(|group| !group.fits_one_page()) {
        let hint = if cfg!(debug_assertions) {
            "a debug build's code is larger: measure a release build"
        } else {
            "under TCG the figures below pay for jumps across its page boundary: split the group (boot/kernel.ld)"
        };
        log::warn!(
            "hot text group {} is {} bytes, more than one page; {hint}",
            group.name,
            group.bytes()
        );
    }
}

/// Allocator throughput with free page reporting active (at the tunables' values: set
/// `reporting.delay_ms` and `reporting.high_water_mib` on the command line to make it more
/// eager) against reporting off, on the same mixed sequence, alternating runs in one boot.
/// `ratio` is throughput on over off (the target is at least 0.95).
/// The mixed sequence with a mechanism on and off, alternating in one boot (`switch(true)`
/// before each run with it, `switch(false)` before each without; `during_on` counts what the
/// mechanism did during the runs with it). Returns the median ns per operation (on, off) and
/// that count.
fn mixed_on_and_off(
    seed: u64,
    mut switch: impl FnMut(bool),
    mut during_on: impl FnMut() -> u64,
) -> (f64, f64, u64) {
    const MIXED: u64 = 200_000;
    let mut ours = Ours(Vec::new());
    let mut held = Vec::with_capacity(4096);
    let mut on_ticks = [0u64; RUNS];
    let mut off_ticks = [0u64; RUNS];
    let mut counted = 0;
    mixed(&mut ours, &mut held, MIXED, seed);
    for run in 0..RUNS {
        switch(true);
        let before = during_on();
        on_ticks[run] = mixed(&mut ours, &mut held, MIXED, seed + run as u64);
        counted += during_on() - before;
        switch(false);
        off_ticks[run] = mixed(&mut ours, &mut held, MIXED, seed + run as u64);
    }
    let per_op = |ticks: &mut [u64]| time::tsc_delta_to_ns(median(ticks)) as f64 / MIXED as f64;
    (per_op(&mut on_ticks), per_op(&mut off_ticks), counted)
}

fn reporting_benchmark() {
    use crate::mm::reporting;
    use crate::tunables::REPORTING_ENABLED;
    if !reporting::is_registered() {
        log::error!("bench=reporting needs the virtio-balloon device with free page reporting");
        return;
    }
    let reports_before = reporting::stats().reports;
    let (on_ns, off_ns, reports_on) = mixed_on_and_off(
        0x5151,
        |enabled| {
            let _ = REPORTING_ENABLED.set(u64::from(enabled));
            reporting::refresh_triggers();
            reporting::request();
        },
        || reporting::stats().reports,
    );
    let _ = REPORTING_ENABLED.set(REPORTING_ENABLED.default);
    reporting::refresh_triggers();
    report(
        "alloc_mixed_with_reporting",
        &[
            ("ns_per_op", on_ns),
            ("reporting_off_ns_per_op", off_ns),
            ("ratio", off_ns / on_ns),
            ("reports_during_runs", reports_on as f64),
            (
                "reports_total",
                (reporting::stats().reports - reports_before) as f64,
            ),
            ("runs", RUNS as f64),
        ],
    );
}

/// The allocator's mixed sequence with the proactive compaction task at its default and off,
/// alternating in one boot: the task must not tax an allocator that is not fragmenting.
fn compaction_overhead_benchmark() {
    use crate::mm::compaction;
    use crate::tunables::COMPACTION_PROACTIVENESS;
    let wakes_before = compaction::stats().compact_daemon_wake;
    let (on_ns, off_ns, on_cpu_ns) = mixed_on_and_off(
        0x7171,
        |on| {
            let _ = COMPACTION_PROACTIVENESS.set(if on {
                COMPACTION_PROACTIVENESS.default
            } else {
                0
            });
        },
        compaction::daemon_cpu_ns,
    );
    let _ = COMPACTION_PROACTIVENESS.set(COMPACTION_PROACTIVENESS.default);
    report(
        "alloc_mixed_with_proactive_compaction",
        &[
            ("ns_per_op", on_ns),
            ("compaction_off_ns_per_op", off_ns),
            ("ratio", off_ns / on_ns),
            ("kcompactd_cpu_ns", on_cpu_ns as f64),
            (
                "daemon_wakes",
                (compaction::stats().compact_daemon_wake - wakes_before) as f64,
            ),
            ("runs", RUNS as f64),
        ],
    );
}

// ---- bench=fragmentation ------------------------------------------------------------------

/// One compaction setting of the fragmentation benchmark.
struct Setting {
    name: alloc::string::String,
    proactiveness: u64,
    /// Direct compaction for the 2 MiB allocations (a failed one compacts first).
    direct: bool,
}

/// What 2 MiB allocations until failure gave.
struct AllocRun {
    blocks: u64,
    free_pages_before: u64,
    /// Latency of each successful allocation (ns), sorted.
    latencies_ns: Vec<u64>,
    /// Latency of the allocation that failed (ns).
    fail_ns: u64,
}

impl AllocRun {
    /// The `p`th percentile (nearest rank) in microseconds.
    fn percentile_us(&self, p: u64) -> f64 {
        if self.latencies_ns.is_empty() {
            return 0.0;
        }
        let rank = ((self.latencies_ns.len() as u64 - 1) * p).div_ceil(100) as usize;
        self.latencies_ns[rank] as f64 / 1000.0
    }

    fn share_of_free_pct(&self) -> f64 {
        (self.blocks * 512) as f64 * 100.0 / self.free_pages_before.max(1) as f64
    }
}

/// 2 MiB movable blocks until an allocation fails (with direct compaction if `direct`), each
/// timed; then every block is freed.
fn allocate_2mib_until_failure(direct: bool) -> AllocRun {
    page_alloc::drain_per_cpu_caches();
    let free_pages_before = page_alloc::free_pages();
    // Room for every block before the first allocation: nothing here allocates once memory is
    // gone.
    let capacity = (free_pages_before / 512 + 8) as usize;
    let mut blocks: Vec<Pages> = Vec::with_capacity(capacity);
    let mut latencies_ns = Vec::with_capacity(capacity);
    let request = AllocRequest::new(9)
        .kind(MigrateType::Movable)
        .without_compaction(!direct);
    let mut fail_ns = 0;
    while blocks.len() < capacity {
        let start = rdtsc();
        let block = page_alloc::alloc(request);
        let ns = time::tsc_delta_to_ns(rdtsc() - start);
        match block {
            Some(block) => {
                blocks.push(block);
                latencies_ns.push(ns);
            }
            None => {
                fail_ns = ns;
                break;
            }
        }
    }
    let count = blocks.len() as u64;
    for block in blocks {
        if let Err(error) = page_alloc::free(block) {
            log::error!("bench=fragmentation: freeing a 2 MiB block: {error:?}");
        }
    }
    latencies_ns.sort_unstable();
    AllocRun {
        blocks: count,
        free_pages_before,
        latencies_ns,
        fail_ns,
    }
}

fn report_alloc_run(setting: &str, run: &AllocRun, extra: &[(&str, f64)]) {
    let mut fields = alloc::vec![
        ("blocks", run.blocks as f64),
        ("free_mib", run.free_pages_before as f64 / 256.0),
        ("allocated_mib", (run.blocks * 2) as f64),
        ("share_of_free_pct", run.share_of_free_pct()),
        ("p5_us", run.percentile_us(5)),
        ("p50_us", run.percentile_us(50)),
        ("p90_us", run.percentile_us(90)),
        ("p95_us", run.percentile_us(95)),
        ("p99_us", run.percentile_us(99)),
        ("max_us", run.percentile_us(100)),
        ("fail_us", run.fail_ns as f64 / 1000.0),
    ];
    fields.extend_from_slice(extra);
    report_labelled("fragmentation_alloc", &[("setting", setting)], &fields);
}

/// The median cost of copying 4 KiB between two pages, over `pairs` distinct page pairs
/// (touched before, so no first-touch fault of the host is timed), in ns.
fn plain_copy_ns(pairs: usize) -> Result<u64, alloc::string::String> {
    let request = AllocRequest::new(0).kind(MigrateType::Movable).zeroed();
    let mut pages = Vec::with_capacity(2 * pairs);
    for _ in 0..2 * pairs {
        pages.push(page_alloc::alloc(request).ok_or("no page for the copy baseline")?);
    }
    let mut ticks = Vec::with_capacity(pairs);
    for pair in pages.chunks_exact(2) {
        let start = rdtsc();
        // SAFETY: two distinct pages we just allocated, direct-mapped RAM of 4 KiB each.
        unsafe {
            core::ptr::copy_nonoverlapping(
                pair[0].virt() as *const u8,
                pair[1].virt() as *mut u8,
                PAGE_SIZE as usize,
            )
        };
        ticks.push(rdtsc() - start);
    }
    for page in pages {
        let _ = page_alloc::free(page);
    }
    Ok(time::tsc_delta_to_ns(median(&mut ticks)))
}

/// Moves up to `limit` user pages one by one with the migration primitive (isolate, migrate,
/// release), each to a target allocated and touched beforehand. Returns (pages moved, ns per
/// move: the median, ns of all moves).
fn time_migrations(limit: usize) -> (u64, u64, u64) {
    use crate::mm::frame::{FrameState, Owner};
    use crate::mm::migrate;
    let mut candidates = Vec::with_capacity(limit);
    'zones: for zone in page_alloc::all_zones() {
        for pfn in zone.start_pfn..zone.initialised_end_pfn() {
            let frame = zone.frame(pfn);
            if frame.state() == FrameState::Allocated && frame.owner() == Owner::UserAnon {
                candidates.push(pfn);
                if candidates.len() == limit {
                    break 'zones;
                }
            }
        }
    }
    let request = AllocRequest::new(0).kind(MigrateType::Movable).zeroed();
    let mut targets: Vec<Pages> = Vec::with_capacity(candidates.len());
    while targets.len() < candidates.len() {
        match page_alloc::alloc(request) {
            Some(page) => targets.push(page),
            None => break,
        }
    }
    let mut ticks = Vec::with_capacity(candidates.len());
    let mut total = 0;
    for &pfn in &candidates {
        let Some(target) = targets.pop() else { break };
        let start = rdtsc();
        if !migrate::isolate_user_page(pfn) {
            targets.push(target);
            continue;
        }
        let moved = migrate::migrate_user_page(pfn, target);
        migrate::release_user_page(pfn);
        let spent = rdtsc() - start;
        match moved {
            Ok(()) => {
                ticks.push(spent);
                total += spent;
            }
            Err((_, target)) => targets.push(target),
        }
    }
    // Targets not used go back.
    drop(targets);
    let moved = ticks.len() as u64;
    if moved == 0 {
        return (0, 0, 0);
    }
    (
        moved,
        time::tsc_delta_to_ns(median(&mut ticks)),
        time::tsc_delta_to_ns(total),
    )
}

/// Fills and fragments with the proactive task paused; returns the running workload.
fn fragmented_workload(
    seed: u64,
) -> Result<(crate::fragment::Workload, crate::fragment::Totals), alloc::string::String> {
    use crate::fragment::{self, Workload};
    let plan = fragment::plan(crate::tunables::SCENARIO_FRAGMENT_MIB.get());
    let workload = Workload::start(plan, seed)?;
    workload.fill()?;
    let totals = workload.fragment()?;
    Ok((workload, totals))
}

fn set_proactiveness(value: u64) {
    let _ = crate::tunables::COMPACTION_PROACTIVENESS.set(value);
    crate::mm::compaction::poke();
}

fn fragmentation_benchmark() -> Result<(), alloc::string::String> {
    use crate::mm::compaction;
    use crate::task;
    use crate::tunables::{BENCH_FRAGMENTATION_WATCH_MS, COMPACTION_PROACTIVENESS};
    use core::time::Duration;
    let configured = COMPACTION_PROACTIVENESS.get();
    let outcome = (|| {
        set_proactiveness(0);
        let copy_ns = plain_copy_ns(2048)?;
        // The baseline: 2 MiB blocks from memory nothing has fragmented yet.
        let unfragmented = allocate_2mib_until_failure(true);
        report_alloc_run("unfragmented", &unfragmented, &[]);
        let base_p50 = unfragmented.percentile_us(50).max(0.001);
        let base_p95 = unfragmented.percentile_us(95).max(0.001);
        let settings = [
            ("none", 0, false),
            ("direct_only", 0, true),
            ("proactive_20", 20, true),
            ("proactive_configured", configured, true),
            ("proactive_100", 100, true),
        ]
        .map(|(name, proactiveness, direct)| Setting {
            name: if name == "proactive_configured" {
                alloc::format!("proactive_{configured}")
            } else {
                name.into()
            },
            proactiveness,
            direct,
        });
        let watch = Duration::from_millis(BENCH_FRAGMENTATION_WATCH_MS.get());
        for (index, setting) in settings.iter().enumerate() {
            set_proactiveness(0);
            let (workload, totals) = fragmented_workload(0xbe9c_0000 + index as u64)?;
            let before = compaction::stats();
            let score_at_free = compaction::node_score();
            set_proactiveness(setting.proactiveness);
            let start = Instant::now();
            let mut next = Duration::ZERO;
            while next <= watch {
                while start.elapsed() < next {
                    task::sleep(next - start.elapsed());
                }
                report_labelled(
                    "fragmentation_score",
                    &[("setting", &setting.name)],
                    &[
                        ("t_ms", next.as_millis() as f64),
                        ("score_pct", compaction::node_score() as f64),
                        ("stranded_mib", compaction::stranded_pages() as f64 / 256.0),
                    ],
                );
                next += Duration::from_millis(100);
            }
            let run = allocate_2mib_until_failure(setting.direct);
            set_proactiveness(0);
            let after = compaction::stats();
            let verified = workload.verify()?;
            report_alloc_run(
                &setting.name,
                &run,
                &[
                    ("proactiveness", setting.proactiveness as f64),
                    ("direct_compaction", u64::from(setting.direct) as f64),
                    ("score_at_free_pct", score_at_free as f64),
                    ("filled_mib", totals.filled as f64 / 256.0),
                    ("freed_mib", totals.freed as f64 / 256.0),
                    (
                        "pages_migrated",
                        (after.pgmigrate_success - before.pgmigrate_success) as f64,
                    ),
                    (
                        "compact_stall",
                        (after.compact_stall - before.compact_stall) as f64,
                    ),
                    ("p50_vs_unfragmented", run.percentile_us(50) / base_p50),
                    ("p95_vs_unfragmented", run.percentile_us(95) / base_p95),
                    ("pages_verified", verified.verified as f64),
                ],
            );
        }
        // Migration against a plain copy: the primitive alone on a sample of pages, then a
        // full pass (scanners included) over the rest.
        set_proactiveness(0);
        let (workload, _) = fragmented_workload(0xbe9c_00ff)?;
        let (moved, migrate_ns, migrate_total_ns) = time_migrations(4096);
        let start = Instant::now();
        let pass = compaction::compact_all();
        let pass_ns = start.elapsed().as_nanos() as u64;
        workload.verify()?;
        let mib = |pages: u64| (pages * PAGE_SIZE) as f64 / (1 << 20) as f64;
        let per_second = |pages: u64, ns: u64| mib(pages) * 1e9 / ns.max(1) as f64;
        report(
            "fragmentation_migration",
            &[
                ("pages_timed", moved as f64),
                ("migrate_ns_per_page", migrate_ns as f64),
                ("migrate_mib_per_s", per_second(moved, migrate_total_ns)),
                ("copy_4k_ns", copy_ns as f64),
                (
                    "migrate_vs_copy_ratio",
                    migrate_ns as f64 / copy_ns.max(1) as f64,
                ),
                ("compact_pass_pages", pass.migrated as f64),
                (
                    "compact_pass_ns_per_page",
                    pass_ns as f64 / pass.migrated.max(1) as f64,
                ),
                ("compact_pass_mib_per_s", per_second(pass.migrated, pass_ns)),
            ],
        );
        Ok(())
    })();
    set_proactiveness(configured);
    outcome
}
