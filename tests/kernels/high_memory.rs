//! A guest with RAM above 4 GiB (run-qemu.sh boots this kernel with 6 GiB unless `QEMU_MEM`
//! says otherwise): the Normal zone exists and holds that RAM, the direct map reaches all of it,
//! allocations come from it first and read back what was written, zone limits keep low
//! allocations below 4 GiB, exhausting it falls back to DMA32, user tasks run on it, and the
//! frame-state checker passes after every phase.
//!
//! Deferred frame-database initialisation (`mm::deferred_init`): main holds the worker from
//! the start, so the `deferred_memory_*` tests (tests run in name order: they come before every
//! test that allocates much) see most of the Normal zone still deferred: allocations beyond
//! what is initialised come from it all the same (initialised on demand), the checker,
//! compaction and balloon inflation work beside it, and once the worker is let go it finishes
//! with every count exact. The tests after them run on fully initialised memory.
//!
//! Before the fix, such a guest did not boot: boot allocated its page tables from the Normal
//! zone and zeroed them through the early direct map, which covers only 4 GiB.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;
use kernel::boot::{MemoryKind, MemoryRegion};
use kernel::mm::buddy::{MAX_ORDER, MigrateType};
use kernel::mm::frame::Owner;
use kernel::mm::page_alloc::{self, AllocRequest, Pages, ZoneLimit};
use kernel::mm::zones::ZoneKind;
use kernel::mm::{PAGE_SIZE, checker, deferred_init, paging, phys_to_virt, reporting};
use kernel::{BootInfo, ExitCode};

kernel::entry_point!(main);

const GIB: u64 = 1 << 30;

static MEMORY_MAP: spin::Once<&'static [MemoryRegion]> = spin::Once::new();

fn main(info: &'static BootInfo) -> ExitCode {
    // Before anything sleeps: the worker has not run yet (it was spawned just before main).
    deferred_init::hold(true);
    MEMORY_MAP.call_once(|| info.memory_map());
    // Let free page reporting finish its first pass over all of memory first.
    let start = kernel::time::Instant::now();
    while !reporting::is_idle() && start.elapsed() < Duration::from_secs(20) {
        kernel::task::sleep(Duration::from_millis(5));
    }
    test_main();
    ExitCode::Success
}

fn ram_above_4gib() -> u64 {
    let map = MEMORY_MAP.get().expect("main stored the map");
    map.iter()
        .filter(|region| region.kind == MemoryKind::Ram)
        .map(|region| region.end().saturating_sub(region.start.max(4 * GIB)))
        .sum()
}

fn normal_zone() -> &'static kernel::mm::zone::Zone {
    page_alloc::all_zones()
        .iter()
        .find(|zone| zone.kind == ZoneKind::Normal)
        .unwrap_or_else(|| {
            panic!("no Normal zone: boot this kernel with RAM above 4 GiB (QEMU_MEM=3G or more)")
        })
}

fn check_state() -> checker::FrameCensus {
    checker::check().unwrap_or_else(|error| panic!("frame-state check failed: {error}"))
}

/// Writes a pattern made of each word's physical address into every word of `pages`.
fn fill(pages: &Pages, salt: u64) {
    let words = pages.bytes() / 8;
    let base = pages.virt() as *mut u64;
    for index in 0..words {
        // SAFETY: the block is ours (allocated by the caller) and direct-mapped; `index` stays
        // inside it.
        unsafe {
            base.add(index as usize)
                .write_volatile((pages.phys() + index * 8) ^ salt)
        };
    }
}

fn verify_fill(pages: &Pages, salt: u64) {
    let words = pages.bytes() / 8;
    let base = pages.virt() as *const u64;
    for index in 0..words {
        // SAFETY: as in `fill`.
        let word = unsafe { base.add(index as usize).read_volatile() };
        assert_eq!(
            word,
            (pages.phys() + index * 8) ^ salt,
            "word {index} of the block at {:#x} did not read back",
            pages.phys()
        );
    }
}

/// Managed pages as the memory map gives them: RAM less low memory, the kernel image and the
/// frame database (what `page_alloc::init` reserves).
fn managed_pages_from_the_map() -> u64 {
    let map = MEMORY_MAP.get().expect("main stored the map");
    let ram: Vec<(u64, u64)> = kernel::mm::zones::ram_ranges(map).collect();
    let layout = kernel::boot::kernel_layout();
    let image = (
        layout.boot.start,
        layout.image_phys().end.next_multiple_of(PAGE_SIZE),
    );
    let free = page_alloc::subtract(&ram, &[(0, 1 << 20), image]);
    let bytes: u64 = free.iter().map(|(start, end)| end - start).sum();
    (bytes - kernel::mm::zones::database_bytes(map)) / PAGE_SIZE
}

#[test_case]
fn deferred_memory_1_is_allocated_on_demand_before_the_worker_finishes() {
    assert!(deferred_init::is_held(), "main holds the worker");
    let zone = normal_zone();
    let deferred_before = zone.deferred_pages();
    assert!(
        deferred_before > zone.managed_pages / 2,
        "the worker was held from the start, yet only {deferred_before} of {} pages of the Normal zone are deferred",
        zone.managed_pages
    );
    assert!(zone.initialised_end_pfn() < zone.end_pfn);
    // Counts are exact with memory deferred: managed pages as the map gives them, and the
    // checker finds every one of them free, cached, isolated, allocated or deferred.
    let managed: u64 = page_alloc::all_zones()
        .iter()
        .map(|z| z.managed_pages)
        .sum();
    assert_eq!(managed, managed_pages_from_the_map());
    assert_eq!(zone.managed_pages, ram_above_4gib() / PAGE_SIZE);
    let census = check_state();
    assert_eq!(census.deferred, deferred_init::deferred_pages());
    assert!(census.uninitialised >= census.deferred);
    // A full compaction pass beside deferred memory reads no record beyond the boundary
    // (`Zone::frame` asserts it in this debug build) and leaves a sane state.
    kernel::mm::compaction::compact_zone(zone, kernel::mm::compaction::Mode::Full, None);
    check_state();

    // 4 MiB blocks for 256 MiB more than the Normal zone's lists hold: every one from the
    // Normal zone (initialised on demand, not taken from DMA32), none refused.
    let before = deferred_init::stats();
    let wanted = zone.free_pages() + (256 << 20) / PAGE_SIZE;
    let mut blocks = Vec::with_capacity((wanted >> MAX_ORDER) as usize + 1);
    let free_before = page_alloc::free_pages();
    while (blocks.len() as u64) << MAX_ORDER < wanted {
        let pages = page_alloc::alloc(AllocRequest::new(MAX_ORDER).kind(MigrateType::Movable))
            .unwrap_or_else(|| {
                panic!(
                    "block {} refused with {} pages deferred: {:?}",
                    blocks.len(),
                    zone.deferred_pages(),
                    deferred_init::stats()
                )
            });
        assert!(
            pages.phys() >= 4 * GIB,
            "block {} came from {:#x}: the Normal zone was not grown first",
            blocks.len(),
            pages.phys()
        );
        blocks.push(pages);
    }
    let after = deferred_init::stats();
    assert!(
        after.on_demand_grows > before.on_demand_grows
            && after.on_demand_pages >= before.on_demand_pages + (256 << 20) / PAGE_SIZE,
        "{before:?} -> {after:?}"
    );
    assert!(zone.deferred_pages() > 0 && zone.deferred_pages() < deferred_before);
    // Free memory counts the deferred pages: growing moved pages, it made none.
    let allocated = (blocks.len() as u64) << MAX_ORDER;
    assert_eq!(page_alloc::free_pages() + allocated, free_before);
    // The highest block lies in memory initialised on demand: it holds what is written.
    let highest = blocks
        .iter()
        .max_by_key(|pages| pages.pfn())
        .expect("blocks");
    fill(highest, 0x4444);
    verify_fill(highest, 0x4444);
    check_state();
    for pages in blocks {
        page_alloc::free(pages).expect("free");
    }
    let census = check_state();
    assert_eq!(census.deferred, deferred_init::deferred_pages());
    assert!(!deferred_init::is_done());
}

#[test_case]
fn deferred_memory_1b_the_balloon_inflates_beside_it() {
    use kernel::drivers::balloon;
    assert!(deferred_init::is_held(), "main holds the worker");
    if !balloon::is_present() {
        panic!("no balloon device: boot with QEMU_BALLOON=on");
    }
    let zone = normal_zone();
    let deferred_before = zone.deferred_pages();
    assert!(deferred_before > 0);
    // More than the Normal zone's lists hold: the balloon's allocations grow the zone.
    let target = zone.free_pages() + (128 << 20) / PAGE_SIZE;
    let grows_before = deferred_init::stats().on_demand_grows;
    balloon::set_test_target(Some(target));
    let start = kernel::time::Instant::now();
    while balloon::stats().actual_pages != target {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the balloon did not reach {target} pages: {:?}",
            balloon::stats()
        );
        kernel::task::sleep(Duration::from_millis(10));
    }
    assert!(deferred_init::stats().on_demand_grows > grows_before);
    assert!(zone.deferred_pages() > 0 && zone.deferred_pages() < deferred_before);
    let census = check_state();
    assert_eq!(census.allocated_by_owner[Owner::Balloon as usize], target);
    assert_eq!(census.deferred, deferred_init::deferred_pages());
    balloon::set_test_target(Some(0));
    let start = kernel::time::Instant::now();
    while balloon::stats().actual_pages != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the balloon did not deflate: {:?}",
            balloon::stats()
        );
        kernel::task::sleep(Duration::from_millis(10));
    }
    balloon::set_test_target(None);
    let census = check_state();
    assert_eq!(census.allocated_by_owner[Owner::Balloon as usize], 0);
}

#[test_case]
fn deferred_memory_2_the_worker_initialises_the_rest_and_every_count_stays_exact() {
    let free_before = page_alloc::free_pages();
    let deferred = deferred_init::deferred_pages();
    assert!(deferred > 0, "nothing left for the worker");
    deferred_init::hold(false);
    assert!(
        deferred_init::wait_until_done(Duration::from_secs(60)),
        "deferred init not done after 60 s: {:?}",
        deferred_init::stats()
    );
    for zone in page_alloc::all_zones() {
        assert_eq!(zone.initialised_end_pfn(), zone.end_pfn, "{:?}", zone.kind);
        assert_eq!(zone.deferred_pages(), 0, "{:?}", zone.kind);
    }
    // The deferred pages went onto the lists: free memory is what it was, but for the
    // worker's own stack (freed as it ends, if it has by now).
    let after = page_alloc::free_pages();
    let stack_pages = 1u64 << kernel::mm::stack::STACK_ORDER;
    assert!(
        after >= free_before && after <= free_before + stack_pages,
        "free pages {free_before} -> {after}"
    );
    let census = check_state();
    assert_eq!((census.deferred, census.uninitialised), (0, 0));
    let managed: u64 = page_alloc::all_zones()
        .iter()
        .map(|z| z.managed_pages)
        .sum();
    assert_eq!(managed, managed_pages_from_the_map());
    assert_eq!(
        census.free + census.cached + census.isolated + census.allocated,
        managed
    );
    let stats = deferred_init::stats();
    let records: u64 = page_alloc::all_zones()
        .iter()
        .map(|zone| zone.end_pfn - zone.start_pfn)
        .sum();
    assert_eq!(
        stats.boot_frames + stats.worker_frames + stats.on_demand_frames,
        records,
        "every record written exactly once: {stats:?}"
    );
    assert_eq!(
        stats.worker_pages + stats.on_demand_pages,
        stats.deferred_at_boot,
        "{stats:?}"
    );
    assert!(stats.worker_pages > 0 && stats.done_at_ns > 0, "{stats:?}");
    // The worker initialised the top of RAM: `every_high_block_reads_back...` (next) gets it.
    assert!(
        stats.worker_pages > stats.on_demand_pages,
        "the worker did most of it: {stats:?}"
    );
    check_state();
}

#[test_case]
fn normal_zone_holds_all_ram_above_4_gib_and_the_direct_map_reaches_it() {
    let above = ram_above_4gib();
    assert!(
        above > 0,
        "no RAM above 4 GiB: boot this kernel with QEMU_MEM=3G or more"
    );
    let zone = normal_zone();
    assert_eq!(zone.start_pfn, 4 * GIB / PAGE_SIZE);
    assert_eq!(zone.present_pages, above / PAGE_SIZE);
    assert_eq!(zone.managed_pages, zone.present_pages);
    let kinds: Vec<ZoneKind> = page_alloc::all_zones().iter().map(|z| z.kind).collect();
    assert_eq!(kinds, [ZoneKind::Dma, ZoneKind::Dma32, ZoneKind::Normal]);
    let map = MEMORY_MAP.get().expect("main stored the map");
    let ram: u64 = kernel::mm::zones::ram_ranges(map)
        .map(|(start, end)| end - start)
        .sum();
    assert_eq!(kernel::boot_facts().direct_mapped, ram);
    // The last page of RAM is mapped, writable and not executable.
    let last_page = zone.end_pfn * PAGE_SIZE - PAGE_SIZE;
    let flags = paging::translate_flags(phys_to_virt(last_page))
        .unwrap_or_else(|| panic!("the last page of RAM ({last_page:#x}) is not direct-mapped"));
    use x86_64::structures::paging::PageTableFlags as Flags;
    assert!(flags.contains(Flags::WRITABLE | Flags::NO_EXECUTE));
    check_state();
}

#[test_case]
fn allocations_come_from_the_normal_zone_first_and_read_back_above_4_gib() {
    for (order, salt) in [(0u8, 0x1111), (9, 0x2222), (MAX_ORDER, 0x3333)] {
        let pages = page_alloc::alloc(AllocRequest::new(order).kind(MigrateType::Movable))
            .expect("memory for a test block");
        assert!(
            pages.phys() >= 4 * GIB,
            "order {order} came from {:#x}, not from the Normal zone",
            pages.phys()
        );
        fill(&pages, salt);
        verify_fill(&pages, salt);
        page_alloc::free(pages).expect("free");
    }
    // A zeroed allocation above 4 GiB is zeroed through the direct map.
    let dirty = page_alloc::alloc(AllocRequest::new(0)).expect("a page");
    fill(&dirty, 0xdead);
    page_alloc::free(dirty).expect("free");
    let clean = page_alloc::alloc(AllocRequest::new(0).zeroed()).expect("a zeroed page");
    assert!(clean.phys() >= 4 * GIB);
    let words = clean.virt() as *const u64;
    for index in 0..PAGE_SIZE / 8 {
        // SAFETY: our page, direct-mapped.
        assert_eq!(unsafe { words.add(index as usize).read_volatile() }, 0);
    }
    page_alloc::free(clean).expect("free");
    check_state();
}

#[test_case]
fn zone_limits_keep_low_allocations_below_4_gib() {
    for (limit, end) in [(ZoneLimit::Dma32, 4 * GIB), (ZoneLimit::Dma, 16 << 20)] {
        for order in [0u8, 3] {
            let pages = page_alloc::alloc(AllocRequest::new(order).limit(limit))
                .expect("memory below the limit");
            assert!(
                pages.phys() + pages.bytes() <= end,
                "{limit:?} gave {:#x}",
                pages.phys()
            );
            page_alloc::free(pages).expect("free");
        }
    }
}

#[test_case]
fn every_high_block_reads_back_and_an_exhausted_normal_zone_falls_back_to_dma32() {
    let zone = normal_zone();
    let mut blocks = Vec::with_capacity((zone.present_pages >> MAX_ORDER) as usize + 16);
    let fallback = loop {
        let pages = page_alloc::alloc(
            AllocRequest::new(MAX_ORDER)
                .kind(MigrateType::Movable)
                .owner(Owner::Kernel),
        )
        .expect("memory: the lower zones still have free 4 MiB blocks");
        if pages.phys() < 4 * GIB {
            break pages;
        }
        blocks.push(pages);
    };
    let high_pages = blocks.len() as u64 * (1 << MAX_ORDER);
    assert!(
        high_pages + zone.watermarks.min + (2 << MAX_ORDER) >= zone.managed_pages * 95 / 100,
        "only {high_pages} of {} pages of the Normal zone came as 4 MiB blocks",
        zone.managed_pages
    );
    check_state();
    // The first and last word of every 32nd block by address and of the highest one (touching
    // every block would make the host back all 4 GiB: it backs guest RAM with 2 MiB pages).
    blocks.sort_unstable_by_key(|pages| pages.pfn());
    let last = blocks.len() - 1;
    let sampled = || {
        blocks
            .iter()
            .enumerate()
            .filter(move |&(index, _)| index % 32 == 0 || index == last)
            .map(|(_, pages)| pages)
    };
    let words = |pages: &Pages| {
        (
            pages.virt() as *mut u64,
            (pages.virt() + pages.bytes() - 8) as *mut u64,
        )
    };
    for pages in sampled() {
        let (first, last) = words(pages);
        // SAFETY: our block, direct-mapped; both words are inside it.
        unsafe {
            first.write_volatile(pages.pfn());
            last.write_volatile(!pages.pfn());
        }
    }
    let top = blocks[last].phys() + blocks[last].bytes();
    assert!(
        top + 16 * (4 << 20) >= zone.end_pfn * PAGE_SIZE,
        "the highest block ends at {top:#x}, far below the end of RAM"
    );
    for pages in sampled() {
        let (first, last) = words(pages);
        // SAFETY: still ours.
        let (a, b) = unsafe { (first.read_volatile(), last.read_volatile()) };
        assert!(
            a == pages.pfn() && b == !pages.pfn(),
            "the block at {:#x} did not read back",
            pages.phys()
        );
    }
    page_alloc::free(fallback).expect("free");
    for pages in blocks {
        page_alloc::free(pages).expect("free");
    }
    check_state();
}

#[test_case]
fn user_spaces_and_ring3_tasks_run_on_pages_above_4_gib() {
    use kernel::mm::space::{AddressSpace, RegionFlags};
    // A user space's page tables and its pages come from the Normal zone.
    let space = AddressSpace::new().expect("space");
    {
        let mut space = space.lock();
        assert!(space.pml4_phys() >= 4 * GIB, "the PML4 is not above 4 GiB");
        let base = space
            .map_anonymous(None, 4 * PAGE_SIZE, RegionFlags::READ | RegionFlags::WRITE)
            .expect("region");
        for page in 0..4 {
            let address = base + page * PAGE_SIZE;
            space.write_user(address, &[0x5a; 64]).expect("write");
            let (pfn, _) = space.translate(address).expect("mapped");
            assert!(pfn * PAGE_SIZE >= 4 * GIB, "user page at pfn {pfn:#x}");
            let mut back = [0u8; 64];
            space.read_user(address, &mut back).expect("read");
            assert_eq!(back, [0x5a; 64]);
        }
    }
    drop(space);
    // A ring-3 task on such pages runs to its end.
    let program = kernel::user::programs::memory_walk();
    let report = kernel::user::spawn("memory_walk", &program, 64)
        .expect("spawn")
        .join();
    assert_eq!(report.exit, kernel::user::TaskExit::Exited(64));
    check_state();
}

#[test_case]
fn ram_above_4_gib_is_write_back() {
    use kernel::arch::memory_type::{MemoryType, Mtrrs, pat, pat_index};
    let pat = pat().expect("the CPU has a PAT");
    let zone = normal_zone();
    for pfn in [zone.start_pfn, zone.end_pfn - 1] {
        let phys = pfn * PAGE_SIZE;
        let (entry, large) = paging::leaf_entry(phys_to_virt(phys)).expect("direct-mapped");
        assert_eq!(
            pat[pat_index(entry, large)],
            MemoryType::WriteBack,
            "{phys:#x}"
        );
    }
    if let Some(mtrrs) = Mtrrs::read() {
        let map = MEMORY_MAP.get().expect("main stored the map");
        assert_eq!(mtrrs.ram_not_write_back(map), [], "{mtrrs:?}");
    }
}
