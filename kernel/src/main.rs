//! `cargo run`: boots the kernel and runs the live demonstration (or the scenario or benchmark
//! named on the command line), then exits QEMU with the result.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;
use kernel::mm::zones;
use kernel::time::Instant;
use kernel::{BootInfo, ExitCode, println, task};

kernel::entry_point!(main);

fn main(info: &'static BootInfo) -> ExitCode {
    if let Some(name) = kernel::cmdline::value("scenario") {
        if let Some(code) = kernel::scenarios::run(name) {
            return code;
        }
        log::error!(
            "unknown scenario '{name}' (known: {})",
            kernel::scenarios::NAMES.join(", ")
        );
        return ExitCode::Failure;
    }
    if let Some(name) = kernel::cmdline::value("bench") {
        if let Some(code) = kernel::bench::run(name) {
            return code;
        }
        log::error!(
            "unknown benchmark '{name}' (known: {})",
            kernel::bench::NAMES.join(", ")
        );
        return ExitCode::Failure;
    }
    show_memory(info);
    show_threads();
    show_user_tasks();
    show_compaction();
    show_ksm();
    show_reporting();
    if kernel::cmdline::value("console") == Some("on") {
        kernel::console::run();
    }
    ExitCode::Success
}

fn show_memory(info: &'static BootInfo) {
    println!("Memory map (from the PVH start_info):");
    for region in info.memory_map() {
        println!(
            "  {:#014x}-{:#014x} {:>9} KiB  {:?}",
            region.start,
            region.end(),
            region.size / 1024,
            region.kind
        );
    }
    println!("Zones to build:");
    for span in zones::zone_spans(info.memory_map()) {
        println!(
            "  {:<6} pfn {:#9x}-{:#9x}  {:>8} pages present ({} MiB)",
            span.kind.name(),
            span.start_pfn,
            span.end_pfn,
            span.present_pages,
            span.present_pages * 4 / 1024
        );
    }
    let facts = kernel::boot_facts();
    println!(
        "Direct map covers {} MiB of physical memory",
        facts.direct_mapped >> 20
    );
    // The zones and the census below show every frame: let pgdatinit finish first.
    let main_at = kernel::main_entered_ns();
    kernel::mm::deferred_init::wait_until_done(Duration::from_secs(60));
    let deferred = kernel::mm::deferred_init::stats();
    let per_gib = kernel::mm::deferred_init::per_gib_us;
    println!(
        "Frame database: main thread {} ms after the PVH entry; {} MiB of records written at boot ({} us per GiB), {} MiB by pgdatinit after it ({} us per GiB of work, done at {} ms), {} MiB on demand",
        main_at / 1_000_000,
        deferred.boot_frames >> 8,
        per_gib(deferred.boot_ns, deferred.boot_frames),
        deferred.worker_frames >> 8,
        per_gib(deferred.worker_ns, deferred.worker_frames),
        deferred.done_at_ns / 1_000_000,
        deferred.on_demand_frames >> 8,
    );
    println!("Zones (managed, free and watermarks in pages):");
    let mut text = alloc::string::String::new();
    let _ = kernel::mm::page_alloc::write_zoneinfo(&mut text);
    println!("{text}");
    println!("Free blocks per zone, migratetype and order (buddyinfo):");
    text.clear();
    let _ = kernel::mm::page_alloc::write_buddyinfo(&mut text);
    println!("{text}");
    match kernel::mm::checker::check() {
        Ok(census) => println!("Frame-state check: ok {census:?}"),
        Err(error) => println!("Frame-state check FAILED: {error}"),
    }
    let heap = kernel::mm::heap::stats();
    println!(
        "Heap: {} KiB bootstrap region, {} KiB used",
        heap.size / 1024,
        heap.used / 1024
    );
}

fn show_threads() {
    println!("Threads: three workers sleep 30, 10 and 20 ms; they wake in deadline order:");
    let order = alloc::sync::Arc::new(kernel::sync::IrqMutex::new(Vec::new()));
    let start = Instant::now();
    let workers: Vec<_> = [30u64, 10, 20]
        .into_iter()
        .map(|ms| {
            let order = order.clone();
            task::spawn("sleeper", move || {
                task::sleep(Duration::from_millis(ms));
                order.lock().push((ms, start.elapsed()));
            })
        })
        .collect();
    for worker in workers {
        match worker {
            Ok(worker) => worker.join(),
            Err(error) => println!("  a sleeper could not start: {error:?}"),
        }
    }
    for (ms, woke) in order.lock().iter() {
        println!(
            "  slept {ms:>2} ms, woke after {}.{:03} ms",
            woke.as_micros() / 1000,
            woke.as_micros() % 1000
        );
    }
    let stats = task::scheduler::stats();
    println!(
        "Scheduler: {} timer interrupts, {} context switches, {} preemptions, {} threads spawned, {} exited",
        stats.timer_interrupts,
        stats.context_switches,
        stats.preemptions,
        stats.threads_spawned,
        stats.threads_exited
    );
}

fn show_user_tasks() {
    use kernel::user::{self, programs};
    println!("User tasks (ring 3, each in its own address space):");
    let kernel_address = main as *const () as u64;
    let runs = [
        (
            programs::memory_walk(),
            64,
            "maps 64 pages, checks zero-fill, writes, reads back",
        ),
        (
            programs::cow_clone(),
            0,
            "clone with copy-on-write, both sides checked",
        ),
        (
            programs::read_address(),
            kernel_address,
            "tries to read kernel code",
        ),
    ];
    for (program, argument, what) in runs {
        let report = match user::spawn(program.name, &program, argument) {
            Ok(handle) => handle.join(),
            Err(error) => {
                println!("  {:<13} could not start: {error:?}", program.name);
                continue;
            }
        };
        let counters = report.counters;
        println!(
            "  {:<13} {what}: {:?}; {} faults ({} copy-on-write copies, {} reuses), {} pages resident at exit",
            program.name,
            report.exit,
            counters.minor_faults,
            counters.cow_copies,
            counters.cow_reuses,
            counters.resident,
        );
    }
    let stats = user::stats();
    println!(
        "Tasks: {} started, {} exited, {} killed, {} system calls",
        stats.started, stats.exited, stats.killed, stats.system_calls
    );
}

fn show_reporting() {
    use kernel::drivers::balloon::{self, ReportingState};
    let state = balloon::reporting_state();
    if state == ReportingState::Active {
        // Give the reporting worker its first pass (it waits reporting.delay_ms after the
        // trigger); a pass that finds nothing to report ends it too.
        let start = Instant::now();
        while !kernel::mm::reporting::is_idle() && start.elapsed() < Duration::from_secs(5) {
            task::sleep(Duration::from_millis(10));
        }
        let stats = kernel::mm::reporting::stats();
        let reported: u64 = stats.reported_pages_now.iter().sum();
        println!(
            "Free page reporting: {} reports, {} MiB reported to the host, {} MiB of free memory reported now, {} failures",
            stats.reports,
            stats.bytes_reported >> 20,
            reported >> 8,
            stats.failures
        );
    } else {
        println!("Free page reporting: {state}");
    }
    let balloon = balloon::stats();
    if balloon.present {
        println!(
            "Balloon: target {} pages, actual {}, {} statistics answered, interrupts: {} configuration, {} queue",
            balloon.target_pages,
            balloon.actual_pages,
            balloon.stats_answered,
            balloon.config_interrupts,
            balloon.queue_interrupts
        );
    }
}

/// Fragments 64 MiB (four address spaces fault pages in turn, three of them go away, so every
/// 2 MiB block keeps a quarter of its pages), then lets the proactive task put the free memory
/// back together, and shows what it did.
fn show_compaction() {
    use kernel::mm::compaction;
    use kernel::mm::space::{AddressSpace, RegionFlags};
    println!("Compaction: four spaces touch 16 MiB each in turn; three exit:");
    let before = compaction::stats();
    let pages = 4096u64;
    let spaces: Vec<_> = (0..4).filter_map(|_| AddressSpace::new().ok()).collect();
    let flags = RegionFlags::READ | RegionFlags::WRITE;
    let start = 0x1000_0000_0000;
    for space in &spaces {
        if space
            .lock()
            .map_anonymous(Some(start), pages * 4096, flags)
            .is_err()
        {
            println!("  no room for the demo's regions");
            return;
        }
    }
    for page in 0..pages {
        for space in &spaces {
            let _ = space
                .lock()
                .write_user(start + page * 4096, &page.to_le_bytes());
        }
    }
    let mut spaces = spaces;
    let survivor = spaces.pop();
    let stranded = compaction::stranded_pages();
    drop(spaces);
    let fragmented = compaction::stranded_pages().max(stranded);
    let started = Instant::now();
    let low = kernel::tunables::COMPACTION_STRANDED_LOW_MIB.get() * 256;
    while compaction::stranded_pages() > low && started.elapsed() < Duration::from_secs(5) {
        task::sleep(Duration::from_millis(5));
    }
    let after = compaction::stats();
    println!(
        "  free memory in pieces reporting cannot take: {} KiB -> {} KiB in {:.1} ms",
        fragmented * 4,
        compaction::stranded_pages() * 4,
        started.elapsed().as_micros() as f64 / 1000.0
    );
    println!(
        "  kcompactd woke {} times, moved {} pages ({} not moved); node score now {}",
        after.compact_daemon_wake - before.compact_daemon_wake,
        after.pgmigrate_success - before.pgmigrate_success,
        after.pgmigrate_fail - before.pgmigrate_fail,
        compaction::node_score()
    );
    drop(survivor);
}

/// Four spaces fill 4 MiB each with the same pages in mergeable regions; ksmd (`ksm.run=1`
/// unless the command line set it) merges them; one space writes a page and gets its own copy.
fn show_ksm() {
    use kernel::mm::ksm;
    use kernel::mm::space::{AddressSpace, RegionFlags};
    let pages = 1024u64;
    println!(
        "KSM: four spaces fill {} MiB each with the same data:",
        pages / 256
    );
    let flags = RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MERGEABLE;
    let start = 0x3000_0000_0000;
    let spaces: Vec<_> = (0..4).filter_map(|_| AddressSpace::new().ok()).collect();
    for space in &spaces {
        let mut space = space.lock();
        if space
            .map_anonymous(Some(start), pages * 4096, flags)
            .is_err()
        {
            println!("  no room for the demo's regions");
            return;
        }
        for page in 0..pages {
            let _ = space.write_user(start + page * 4096, &(page + 1).to_le_bytes());
        }
    }
    let before = ksm::stats();
    ksm::run_unless_set_on_command_line();
    let started = Instant::now();
    let want = pages * (spaces.len() as u64 - 1);
    while ksm::stats().pages_sharing < want && started.elapsed() < Duration::from_secs(20) {
        task::sleep(Duration::from_millis(5));
    }
    let after = ksm::stats();
    let elapsed = started.elapsed();
    println!(
        "  ksmd: {} pages shared, {} sharing ({} KiB saved) after {} full scans in {:.1} ms; scanner busy {:.1} ms",
        after.pages_shared,
        after.pages_sharing,
        after.pages_sharing * 4,
        after.full_scans - before.full_scans,
        elapsed.as_micros() as f64 / 1000.0,
        (after.scan_ns - before.scan_ns) as f64 / 1e6,
    );
    if let Some(space) = spaces.first() {
        let _ = space.lock().write_user(start, &0xfeedu64.to_le_bytes());
    }
    println!(
        "  a write to a merged page copied it: cow_ksm {} -> {}",
        after.cow_ksm,
        ksm::stats().cow_ksm
    );
    drop(spaces);
    println!("  spaces gone: {} pages shared", ksm::stats().pages_shared);
}
