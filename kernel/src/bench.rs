//! Benchmarks, printed as `BENCH {...}` lines (see [`report`]). Run with `cargo run -- bench=NAME`.
//!
//! `alloc`: the page allocator against the `buddy_system_allocator` crate's `FrameAllocator`
//! (max order 10 like ours) on the same operation sequences in the same boot, alternating runs,
//! medians of [`RUNS`]. The baseline runs behind the crate's own `LockedFrameAllocator` (a spin
//! lock); ours takes its interrupt-safe per-CPU and zone locks, which also save and restore the
//! interrupt flag: under TCG those instructions are slow, so the ratios there understate ours.
//! Times come from the TSC.
//!
//! `ksm`: KSM's scan, merge, write-fault, unmerge and idle figures (`mm::ksm::bench`).

use crate::arch::rdtsc;
use crate::mm::buddy::MigrateType;
use crate::mm::page_alloc::{self, AllocRequest, Pages};
use crate::time;
use alloc::vec::Vec;
use buddy_system_allocator::LockedFrameAllocator;

pub const RUNS: usize = 5;

/// Names of the benchmarks `run` knows.
pub const NAMES: &[&str] = &["alloc", "reporting", "ksm"];

/// Runs benchmark `name`; false if there is no such benchmark.
pub fn run(name: &str) -> bool {
    match name {
        "alloc" => {
            alloc_benchmark();
            true
        }
        "reporting" => {
            reporting_benchmark();
            true
        }
        "ksm" => {
            // scenario.ksm_mib per space (default 64 MiB).
            crate::mm::ksm::bench::run(crate::tunables::SCENARIO_KSM_MIB.get() * 256);
            true
        }
        _ => false,
    }
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

/// One operation sequence, expressed against an allocator-neutral interface.
trait Frames {
    fn alloc(&mut self, order: u8) -> Option<u64>;
    fn free(&mut self, pfn: u64, order: u8);
}

struct Ours;

impl Frames for Ours {
    fn alloc(&mut self, order: u8) -> Option<u64> {
        page_alloc::alloc(AllocRequest::new(order).kind(MigrateType::Movable))
            .map(|pages| pages.pfn)
    }
    fn free(&mut self, pfn: u64, order: u8) {
        page_alloc::free(Pages { pfn, order }).expect("benchmark frees what it allocated");
    }
}

struct Baseline(LockedFrameAllocator<11>);

impl Frames for Baseline {
    fn alloc(&mut self, order: u8) -> Option<u64> {
        self.0.lock().alloc(1 << order).map(|frame| frame as u64)
    }
    fn free(&mut self, pfn: u64, order: u8) {
        self.0.lock().dealloc(pfn as usize, 1 << order)
    }
}

/// Order-0 allocation immediately freed, `count` times.
fn order0_pairs(frames: &mut dyn Frames, count: u64) -> u64 {
    let start = rdtsc();
    for _ in 0..count {
        let pfn = frames.alloc(0).expect("memory");
        frames.free(pfn, 0);
    }
    rdtsc() - start
}

/// `count` order-0 allocations, then all freed (in allocation order).
fn batch(frames: &mut dyn Frames, held: &mut Vec<u64>, count: usize) -> u64 {
    held.clear();
    let start = rdtsc();
    for _ in 0..count {
        held.push(frames.alloc(0).expect("memory"));
    }
    for &pfn in held.iter() {
        frames.free(pfn, 0);
    }
    rdtsc() - start
}

/// A seeded random mix of allocations of orders 0..=9 and frees of random live blocks.
fn mixed(frames: &mut dyn Frames, held: &mut Vec<(u64, u8)>, operations: u64, seed: u64) -> u64 {
    held.clear();
    let mut state = seed;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start = rdtsc();
    for _ in 0..operations {
        let roll = random();
        if held.len() < 64 || (held.len() < 4096 && roll % 2 == 0) {
            // Orders weighted toward small blocks, as real workloads are.
            let order = ((roll >> 8) % 10).min((roll >> 16) % 10) as u8;
            if let Some(pfn) = frames.alloc(order) {
                held.push((pfn, order));
            }
        } else {
            let (pfn, order) = held.swap_remove(((roll >> 24) % held.len() as u64) as usize);
            frames.free(pfn, order);
        }
    }
    for &(pfn, order) in held.iter() {
        frames.free(pfn, order);
    }
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
    let mut ours = Ours;
    let mut held = Vec::with_capacity(10_000);
    let mut held_mixed = Vec::with_capacity(4096);
    const PAIRS: u64 = 100_000;
    const BATCH: usize = 10_000;
    const MIXED: u64 = 100_000;
    type Case<'a> = (&'static str, u64, &'a mut dyn FnMut(&mut dyn Frames) -> u64);
    let mut pairs = |frames: &mut dyn Frames| order0_pairs(frames, PAIRS);
    let mut batched = |frames: &mut dyn Frames| batch(frames, &mut held, BATCH);
    let mut mixed_case =
        |frames: &mut dyn Frames| mixed(frames, &mut held_mixed, MIXED, 0x1234_5678);
    let cases: [Case; 3] = [
        ("alloc_order0_pairs", PAIRS * 2, &mut pairs),
        ("alloc_order0_batch_10000", BATCH as u64 * 2, &mut batched),
        ("alloc_mixed_orders_0_9", MIXED, &mut mixed_case),
    ];
    for (name, operations, case) in cases {
        let mut ours_ticks = [0u64; RUNS];
        let mut baseline_ticks = [0u64; RUNS];
        // A warm-up run of each, then alternating measured runs.
        case(&mut ours);
        case(&mut baseline);
        for run in 0..RUNS {
            ours_ticks[run] = case(&mut ours);
            baseline_ticks[run] = case(&mut baseline);
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

/// Allocator throughput with free page reporting active (at the tunables' values: set
/// `reporting.delay_ms` and `reporting.high_water_mib` on the command line to make it more
/// eager) against reporting off, on the same mixed sequence, alternating runs in one boot.
/// `ratio` is throughput on over off (the target is at least 0.95).
fn reporting_benchmark() {
    use crate::mm::reporting;
    use crate::tunables::REPORTING_ENABLED;
    if !reporting::is_registered() {
        log::error!("bench=reporting needs the virtio-balloon device with free page reporting");
        return;
    }
    let set = |enabled: bool| {
        let _ = REPORTING_ENABLED.set(u64::from(enabled));
        reporting::refresh_triggers();
        reporting::request();
    };
    let mut ours = Ours;
    let mut held = Vec::with_capacity(4096);
    const MIXED: u64 = 200_000;
    let mut on_ticks = [0u64; RUNS];
    let mut off_ticks = [0u64; RUNS];
    let reports_before = reporting::stats().reports;
    let mut reports_on = 0;
    mixed(&mut ours, &mut held, MIXED, 0x5151);
    for run in 0..RUNS {
        set(true);
        let before = reporting::stats().reports;
        on_ticks[run] = mixed(&mut ours, &mut held, MIXED, 0x5151 + run as u64);
        reports_on += reporting::stats().reports - before;
        set(false);
        off_ticks[run] = mixed(&mut ours, &mut held, MIXED, 0x5151 + run as u64);
    }
    let _ = REPORTING_ENABLED.set(REPORTING_ENABLED.default);
    reporting::refresh_triggers();
    let on_ns = time::tsc_delta_to_ns(median(&mut on_ticks)) as f64 / MIXED as f64;
    let off_ns = time::tsc_delta_to_ns(median(&mut off_ticks)) as f64 / MIXED as f64;
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
