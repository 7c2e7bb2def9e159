//! The native allocator benchmark: the buddy core behind the kernel's per-CPU cache
//! (`buddy_core::sim`, the host stand-in of `mm::page_alloc`) against `buddy_system_allocator`'s
//! `FrameAllocator` (max order 10 like ours), on the guest's `bench=alloc` sequences
//! (`buddy_core::workload`), over the frame numbers of a 2 GiB guest's DMA32 zone.
//!
//! Runs alternate (ours, baseline), after one warm-up run of each; it prints the median ns per
//! operation of each and their ratio, as a table and as `BENCH {...}` lines (names prefixed
//! `native_`).
//!
//! ```text
//! cargo bench -p buddy-core --bench native                 # every case, 7 runs each
//! cargo bench -p buddy-core --bench native -- --runs 11 --case order0_batch
//! cargo bench -p buddy-core --bench native -- --only ours --case mixed --repeat 50   # for perf
//! ```

use buddy_core::buddy::MigrateType;
use buddy_core::sim::Sim;
use buddy_core::workload::{self, CASES, Frames};
use buddy_system_allocator::LockedFrameAllocator;
use std::time::Instant;

/// The DMA32 zone of a 2 GiB q35 guest: pfns 0x1000..0x7ffe0.
const ZONE: (u64, u64) = (0x1000, 0x7ffe0);
/// Its min watermark in that guest (pages).
const MIN_WATERMARK: u64 = 1433;

struct Ours(Sim);

impl Frames for Ours {
    fn alloc(&mut self, order: u8) -> Option<u64> {
        self.0.alloc(order, MigrateType::Movable, usize::MAX)
    }
    fn free(&mut self, pfn: u64, order: u8) {
        self.0
            .free(pfn, order)
            .expect("the benchmark frees what it allocated");
    }
    fn alloc_batch(&mut self, order: u8, count: usize, held: &mut Vec<(u64, u8)>) -> usize {
        self.0
            .alloc_bulk(order, MigrateType::Movable, usize::MAX, count, held)
    }
    fn free_batch(&mut self, held: &mut Vec<(u64, u8)>) {
        self.0
            .free_bulk(held)
            .expect("the benchmark frees what it allocated");
        held.clear();
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

/// ns per operation of `repeat` runs of case `index` (`operations` each). Generic: each
/// allocator gets its own copy of the loops, calling it directly, as in the guest.
#[inline(never)]
fn time<F: Frames>(
    index: usize,
    operations: u64,
    repeat: usize,
    frames: &mut F,
    held: &mut Vec<(u64, u8)>,
) -> f64 {
    let start = Instant::now();
    for _ in 0..repeat {
        workload::run_case(index, frames, held);
    }
    start.elapsed().as_nanos() as f64 / (operations * repeat as u64) as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Options {
    runs: usize,
    case: Option<String>,
    only: Option<String>,
    repeat: usize,
}

fn options() -> Options {
    let mut options = Options {
        runs: 7,
        case: None,
        only: None,
        repeat: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => options.runs = args.next().and_then(|n| n.parse().ok()).unwrap_or(7),
            "--case" => options.case = args.next(),
            "--only" => options.only = args.next(),
            "--repeat" => options.repeat = args.next().and_then(|n| n.parse().ok()).unwrap_or(1),
            // cargo bench passes --bench; anything else is a mistake worth saying.
            "--bench" => {}
            other => eprintln!("native: ignoring argument {other:?}"),
        }
    }
    options.runs = options.runs.max(1);
    options
}

fn main() {
    let options = options();
    let mut ours = Ours(Sim::new(&[ZONE], &[], MIN_WATERMARK));
    let baseline = LockedFrameAllocator::<11>::new();
    baseline.lock().add_frame(ZONE.0 as usize, ZONE.1 as usize);
    let mut baseline = Baseline(baseline);
    let mut held = Vec::with_capacity(workload::BATCH);
    println!(
        "native: buddy-core (per-CPU cache + zone, as the guest) vs buddy_system_allocator, {} runs each, median ns per operation",
        options.runs
    );
    println!(
        "{:<28} {:>10} {:>12} {:>8}",
        "case", "ours_ns", "baseline_ns", "ratio"
    );
    for (index, &(name, operations)) in CASES.iter().enumerate() {
        if let Some(wanted) = &options.case
            && !name.contains(wanted.as_str())
        {
            continue;
        }
        let repeat = options.repeat;
        let run_ours = options.only.as_deref() != Some("baseline");
        let run_baseline = options.only.as_deref() != Some("ours");
        let (mut ours_ns, mut baseline_ns) = (Vec::new(), Vec::new());
        if run_ours {
            time(index, operations, repeat, &mut ours, &mut held);
        }
        if run_baseline {
            time(index, operations, repeat, &mut baseline, &mut held);
        }
        for _ in 0..options.runs {
            if run_ours {
                ours_ns.push(time(index, operations, repeat, &mut ours, &mut held));
            }
            if run_baseline {
                baseline_ns.push(time(index, operations, repeat, &mut baseline, &mut held));
            }
        }
        let ours_ns = if run_ours {
            median(&mut ours_ns)
        } else {
            f64::NAN
        };
        let baseline_ns = if run_baseline {
            median(&mut baseline_ns)
        } else {
            f64::NAN
        };
        let ratio = baseline_ns / ours_ns;
        println!("{name:<28} {ours_ns:>10.1} {baseline_ns:>12.1} {ratio:>8.2}");
        println!(
            "BENCH {{\"name\":\"native_{name}\",\"ns_per_op\":{ours_ns:.3},\"baseline_ns_per_op\":{baseline_ns:.3},\"ratio\":{ratio:.3},\"runs\":{}}}",
            options.runs
        );
    }
    ours.0
        .check()
        .expect("the frame-state check after the benchmark");
}
