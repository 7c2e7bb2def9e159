//! The page allocator under load: a million randomized operations against a model, exhaustion
//! at every order, anti-fragmentation, zone limits, and refused bad frees. The frame-state
//! checker runs after every phase.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::vec::Vec;
use buddy_core::model::{Limit, ModelTarget};
use kernel::mm::buddy::{MAX_ORDER, MigrateType, PAGEBLOCK_ORDER};
use kernel::mm::frame::{FrameState, Owner};
use kernel::mm::page_alloc::{self, AllocRequest, FreeError, Pages, ZoneLimit};
use kernel::mm::{checker, zones::ZoneKind};
use kernel::{BootInfo, ExitCode, println};
use scenarios::Rng;

kernel::entry_point!(main);

fn main(_info: &'static BootInfo) -> ExitCode {
    // These tests count every page: the allocator alone, without free page reporting taking
    // blocks off the lists meanwhile (the reporting kernel tests the two together).
    kernel::mm::reporting::unregister();
    test_main();
    ExitCode::Success
}

fn settled_free_pages() -> u64 {
    page_alloc::drain_per_cpu_caches();
    page_alloc::free_pages()
}

fn check_state() -> checker::FrameCensus {
    checker::check().unwrap_or_else(|error| panic!("frame-state check failed: {error}"))
}

/// Pages allocated with `Owner::Kernel`: the tests' own (page tables, stacks and the heap have
/// owners of their own).
fn kernel_owned(census: &checker::FrameCensus) -> u64 {
    census.allocated_by_owner[Owner::Kernel as usize]
}

fn limit_end_pfn(limit: ZoneLimit) -> u64 {
    match limit {
        ZoneLimit::Dma => ZoneKind::Dma.limits().1 >> 12,
        ZoneLimit::Dma32 => ZoneKind::Dma32.limits().1 >> 12,
        ZoneLimit::Any => u64::MAX,
    }
}

/// The kernel's allocator as the shared model test's target (`buddy_core::model`): zone limits
/// for its limits, signatures in the blocks' memory, the frame-state checker for its check.
struct Guest;

impl ModelTarget for Guest {
    fn alloc(&mut self, order: u8, kind: MigrateType, limit: Limit) -> Option<u64> {
        let request = AllocRequest::new(order)
            .kind(kind)
            .limit(zone_limit(limit))
            .owner(Owner::Kernel);
        let pages = page_alloc::alloc(request)?;
        assert_eq!(pages.order(), order);
        // The model keeps the block by its frame number (and order) until it frees it.
        Some(pages.into_raw())
    }
    fn free(&mut self, pfn: u64, order: u8) {
        // SAFETY: the model gave this block up with `into_raw` in `alloc` and frees it once.
        let pages = unsafe { Pages::from_raw(pfn, order) };
        page_alloc::free(pages).expect("freeing a live block succeeds");
    }
    fn limit_end_pfn(&self, limit: Limit) -> u64 {
        limit_end_pfn(zone_limit(limit))
    }
    fn sign(&mut self, pfn: u64, order: u8, value: u64) {
        let (virt, bytes) = block_memory(pfn, order);
        let first = virt as *mut u64;
        let last = (virt + bytes - 8) as *mut u64;
        // SAFETY: the block is ours (just allocated) and direct-mapped; both words are inside it.
        unsafe {
            first.write_volatile(value);
            last.write_volatile(!value);
        }
    }
    fn signature(&self, pfn: u64, order: u8) -> u64 {
        let (virt, bytes) = block_memory(pfn, order);
        let first = virt as *const u64;
        let last = (virt + bytes - 8) as *const u64;
        // SAFETY: the block is still ours (not yet freed) and direct-mapped.
        let (a, b) = unsafe { (first.read_volatile(), last.read_volatile()) };
        if b == !a { a } else { !a }
    }
    fn check(&mut self) -> u64 {
        kernel_owned(&check_state())
    }
    fn settled_free_pages(&mut self) -> u64 {
        settled_free_pages()
    }
}

/// A block's address in the direct map and its size in bytes.
fn block_memory(pfn: u64, order: u8) -> (u64, u64) {
    (
        kernel::mm::phys_to_virt(pfn * kernel::mm::PAGE_SIZE),
        kernel::mm::PAGE_SIZE << order,
    )
}

fn zone_limit(limit: Limit) -> ZoneLimit {
    match limit {
        Limit::Lowest => ZoneLimit::Dma,
        Limit::Low => ZoneLimit::Dma32,
        Limit::Any => ZoneLimit::Any,
    }
}

#[test_case]
fn randomized_million_operations_match_the_model() {
    // The same model test the buddy core runs on the host (`cargo test -p buddy-core`).
    const OPERATIONS: u64 = 1_000_000;
    let summary = buddy_core::model::run(&mut Guest, 0x05ee_d0fa_110c, OPERATIONS, 10);
    println!(
        "    {OPERATIONS} operations: {} allocations, {} refused (DMA is small)",
        summary.allocations, summary.refused
    );
}

/// Blocks held while memory is exhausted, linked through their own first word (the heap may
/// need pages of its own, so it cannot hold the list).
struct HeldChain {
    head: Option<Pages>,
    count: u64,
}

impl HeldChain {
    fn push(&mut self, pages: Pages) {
        // The chain keeps the blocks behind the head by their frame numbers.
        let next = self.head.take().map_or(u64::MAX, Pages::into_raw);
        // SAFETY: the block was just allocated to us; its first word is ours to use.
        unsafe { (pages.virt() as *mut u64).write(next) };
        self.head = Some(pages);
        self.count += 1;
    }
    fn pop(&mut self) -> Option<Pages> {
        let pages = self.head.take()?;
        // SAFETY: written by `push` while we hold the block.
        let next = unsafe { (pages.virt() as *const u64).read() };
        // SAFETY: `next` is the block `push` gave up its handle for; only this chain has it.
        self.head = (next != u64::MAX).then(|| unsafe { Pages::from_raw(next, pages.order()) });
        self.count -= 1;
        Some(pages)
    }
}

#[test_case]
fn exhaustion_fails_cleanly_at_every_order_and_everything_frees_back() {
    let start_free = settled_free_pages();
    let reserve: u64 = page_alloc::all_zones()
        .iter()
        .map(|zone| zone.watermarks.min)
        .sum();
    for order in 0..=MAX_ORDER {
        let request = AllocRequest::new(order).kind(MigrateType::Movable);
        let mut held = HeldChain {
            head: None,
            count: 0,
        };
        while let Some(pages) = page_alloc::alloc(request) {
            held.push(pages);
        }
        // Exhausted: further attempts fail the same clean way, and the state is consistent.
        assert!(page_alloc::alloc(request).is_none());
        assert!(page_alloc::alloc(AllocRequest::new(order)).is_none());
        let census = check_state();
        let taken = held.count << order;
        assert_eq!(kernel_owned(&census), taken);
        // Only the watermark reserves and fragments smaller than the order may remain.
        let left = start_free - taken;
        assert!(
            left <= reserve + page_alloc::all_zones().len() as u64 * (2 << order) + 2048,
            "order {order}: only {taken} of {start_free} free pages were allocatable"
        );
        println!(
            "    order {order:>2}: {:>6} blocks ({taken} pages) before failure; {left} pages left",
            held.count
        );
        while let Some(pages) = held.pop() {
            page_alloc::free(pages).expect("free after exhaustion");
        }
        assert_eq!(
            settled_free_pages(),
            start_free,
            "order {order}: memory not returned"
        );
    }
    check_state();
}

#[test_case]
fn unmovable_allocations_stay_in_few_pageblocks() {
    let mut rng = Rng(77);
    let mut movable = Vec::new();
    let mut unmovable = Vec::new();
    // A mixed workload: one unmovable page for every 20 movable, interleaved, then a random
    // half of the movable pages freed. 120,000 pages, or half of a smaller guest's free memory.
    let steps = 120_000.min(settled_free_pages() / 2);
    for step in 0..steps {
        let kind = if step % 21 == 20 {
            MigrateType::Unmovable
        } else {
            MigrateType::Movable
        };
        let pages =
            page_alloc::alloc(AllocRequest::new(0).kind(kind)).expect("memory for the workload");
        if kind == MigrateType::Unmovable {
            unmovable.push(pages)
        } else {
            movable.push(pages)
        }
    }
    for _ in 0..movable.len() / 2 {
        let victim = rng.below(movable.len() as u64) as usize;
        page_alloc::free(movable.swap_remove(victim)).expect("free");
    }
    let mut blocks: Vec<u64> = unmovable
        .iter()
        .map(|pages| pages.pfn() >> PAGEBLOCK_ORDER)
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    let needed = (unmovable.len() as u64).div_ceil(1 << PAGEBLOCK_ORDER);
    println!(
        "    {} unmovable pages occupy {} pageblocks (at least {needed} needed)",
        unmovable.len(),
        blocks.len()
    );
    assert!(
        blocks.len() as u64 <= needed + 4,
        "unmovable pages spread over {} pageblocks",
        blocks.len()
    );
    for pages in movable.into_iter().chain(unmovable) {
        page_alloc::free(pages).expect("free");
    }
    check_state();
}

#[test_case]
fn zone_limits_are_respected_even_when_other_zones_have_memory() {
    let start_free = settled_free_pages();
    let mut held = Vec::new();
    while let Some(pages) = page_alloc::alloc(AllocRequest::new(0).limit(ZoneLimit::Dma)) {
        assert!(
            pages.pfn() < 4096,
            "DMA allocation at pfn {:#x}",
            pages.pfn()
        );
        held.push(pages);
    }
    assert!(!held.is_empty(), "the DMA zone had free pages");
    // DMA is exhausted; an unrestricted request still succeeds from DMA32.
    let other = page_alloc::alloc(AllocRequest::new(0)).expect("DMA32 has memory");
    assert!(other.pfn() >= 4096);
    held.push(other);
    for pages in held {
        page_alloc::free(pages).expect("free");
    }
    assert_eq!(settled_free_pages(), start_free);
}

#[test_case]
fn a_handle_frees_its_block_when_dropped_and_keeps_it_when_given_up() {
    let start_free = settled_free_pages();
    let census = check_state();
    let held = kernel_owned(&census);
    {
        let _block = page_alloc::alloc(AllocRequest::new(3).owner(Owner::Kernel)).expect("memory");
        assert_eq!(kernel_owned(&check_state()), held + 8);
    }
    assert_eq!(
        kernel_owned(&check_state()),
        held,
        "dropping the handle frees the block"
    );
    assert_eq!(settled_free_pages(), start_free);
    let pfn = page_alloc::alloc(AllocRequest::new(3).owner(Owner::Kernel))
        .expect("memory")
        .into_raw();
    assert_eq!(
        kernel_owned(&check_state()),
        held + 8,
        "a block given up with into_raw stays allocated"
    );
    // SAFETY: the block given up just above, taken back once.
    let block = unsafe { Pages::from_raw(pfn, 3) };
    // Two halves, two handles: each frees its own half.
    let [low, high] = page_alloc::split_allocated(block).expect("an unmapped block splits");
    assert_eq!((low.pfn(), high.pfn(), high.order()), (pfn, pfn + 4, 2));
    drop(high);
    assert_eq!(kernel_owned(&check_state()), held + 4);
    drop(low);
    assert_eq!(kernel_owned(&check_state()), held);
    assert_eq!(settled_free_pages(), start_free);
}

#[test_case]
fn double_free_wrong_order_and_reserved_frees_are_refused() {
    // A handle cannot be copied, so these need a false claim of ownership through
    // `Pages::from_raw`: the allocator must still refuse each one and change nothing.
    let start_free = settled_free_pages();
    let pfn = page_alloc::alloc(AllocRequest::new(2))
        .expect("memory")
        .into_raw();
    // SAFETY (each `from_raw` below): deliberately false claims, which is what this test is
    // about; the allocator refuses them without touching memory.
    assert_eq!(
        page_alloc::free(unsafe { Pages::from_raw(pfn, 3) }),
        Err(FreeError::WrongOrder { allocated: 2 })
    );
    assert_eq!(page_alloc::free(unsafe { Pages::from_raw(pfn, 2) }), Ok(()));
    assert!(matches!(
        page_alloc::free(unsafe { Pages::from_raw(pfn, 2) }),
        Err(FreeError::NotAllocated(
            FrameState::Free | FrameState::Tail | FrameState::Cached
        ))
    ));
    let single = page_alloc::alloc(AllocRequest::new(0))
        .expect("memory")
        .into_raw();
    assert_eq!(
        page_alloc::free(unsafe { Pages::from_raw(single, 0) }),
        Ok(())
    );
    assert_eq!(
        page_alloc::free(unsafe { Pages::from_raw(single, 0) }),
        Err(FreeError::NotAllocated(FrameState::Cached))
    );
    // pfn 0 is low memory, reserved at boot; a pfn beyond RAM belongs to no zone.
    assert_eq!(
        page_alloc::free(unsafe { Pages::from_raw(0, 0) }),
        Err(FreeError::NotAllocated(FrameState::Reserved))
    );
    assert_eq!(
        page_alloc::free(unsafe { Pages::from_raw(1 << 40, 0) }),
        Err(FreeError::NoSuchFrame)
    );
    // The handle keeps its frame number plus one: the edges of that encoding.
    let zero = unsafe { Pages::from_raw(0, 0) };
    assert_eq!(zero.pfn(), 0);
    zero.into_raw();
    assert_eq!(
        page_alloc::free(unsafe { Pages::from_raw(u64::MAX, 0) }),
        Err(FreeError::NoSuchFrame)
    );
    // Dropping a refused handle does not try again: nothing is logged twice, nothing changes.
    drop(unsafe { Pages::from_raw(1 << 40, 0) });
    check_state();
    assert_eq!(settled_free_pages(), start_free);
}

#[test_case]
fn zeroed_allocations_are_zero() {
    let pages = page_alloc::alloc(AllocRequest::new(3)).expect("memory");
    // SAFETY: our block, direct-mapped.
    unsafe { core::ptr::write_bytes(pages.virt() as *mut u8, 0xee, pages.bytes() as usize) };
    page_alloc::free(pages).expect("free");
    let again = page_alloc::alloc(AllocRequest::new(3).zeroed()).expect("memory");
    // SAFETY: our block, direct-mapped, `bytes` long.
    let bytes =
        unsafe { core::slice::from_raw_parts(again.virt() as *const u8, again.bytes() as usize) };
    assert!(bytes.iter().all(|&byte| byte == 0));
    page_alloc::free(again).expect("free");
}

#[test_case]
fn bulk_allocation_and_free_keep_every_invariant_at_orders_0_3_and_9() {
    let start_free = settled_free_pages();
    let mut blocks = Vec::new();
    let mut pages = 0;
    for (order, count) in [(0u8, 10_000usize), (3, 1000), (PAGEBLOCK_ORDER, 20)] {
        let request = AllocRequest::new(order).kind(MigrateType::Movable);
        let before = blocks.len();
        assert_eq!(page_alloc::alloc_bulk(request, count, &mut blocks), count);
        for pages in &blocks[before..] {
            assert_eq!(pages.order(), order);
            assert_eq!(
                pages.pfn() % (1 << order),
                0,
                "block not aligned to its order"
            );
        }
        pages += (count as u64) << order;
    }
    let mut pfns: Vec<u64> = blocks.iter().map(|pages| pages.pfn()).collect();
    pfns.sort_unstable();
    pfns.dedup();
    assert_eq!(pfns.len(), blocks.len(), "a block handed out twice");
    assert_eq!(kernel_owned(&check_state()), pages);
    // A double free inside a batch is refused, and the rest of the batch is freed.
    let twice = blocks[5].pfn();
    page_alloc::free_bulk(&mut blocks).expect("a batch of live blocks frees");
    assert!(blocks.is_empty());
    // SAFETY: deliberately false (the page was just freed): the allocator must refuse it, which
    // it can without harm; free_bulk gives the handle up either way.
    let mut again = alloc::vec![unsafe { Pages::from_raw(twice, 0) }];
    assert!(matches!(
        page_alloc::free_bulk(&mut again),
        Err(FreeError::NotAllocated(_))
    ));
    check_state();
    assert_eq!(settled_free_pages(), start_free);
    // Zeroed bulk allocations are zero.
    let request = AllocRequest::new(0).zeroed();
    page_alloc::alloc_bulk(request, 64, &mut blocks);
    for pages in &blocks {
        // SAFETY: our page, direct-mapped, 4 KiB.
        let bytes = unsafe { core::slice::from_raw_parts(pages.virt() as *const u8, 4096) };
        assert!(bytes.iter().all(|&byte| byte == 0));
    }
    page_alloc::free_bulk(&mut blocks).expect("free");
    assert_eq!(settled_free_pages(), start_free);
}

/// Cached blocks of the orders above 0 in every zone: (pages, the highest order seen).
fn high_order_cached() -> (u64, u8) {
    // Room made first: nothing allocates under the caches' lock.
    let mut blocks = Vec::with_capacity(page_alloc::PCP_CAPACITY_PER_ZONE);
    page_alloc::with_caches_locked(|cached_of| {
        let (mut pages, mut highest) = (0, 0);
        for zone in page_alloc::all_zones() {
            blocks.clear();
            cached_of(zone, &mut blocks);
            for &(_, order) in blocks.iter().filter(|&&(_, order)| order > 0) {
                pages += 1u64 << order;
                highest = highest.max(order);
            }
        }
        (pages, highest)
    })
}

#[test_case]
fn lists_of_one_block_a_batch_pass_blocks_through_to_the_zone() {
    let start_free = settled_free_pages();
    let order = 5;
    let high = page_alloc::pcp_high_pages(order) >> order;
    let request = AllocRequest::new(order).kind(MigrateType::Movable);
    // From the empty list: from the zone (the list stays empty).
    let blocks: Vec<Pages> = (0..=high)
        .map(|_| page_alloc::alloc(request).expect("memory"))
        .collect();
    assert_eq!(high_order_cached(), (0, 0));
    let last = blocks[high].pfn();
    // Freed: up to the high mark they wait in the list; the one over goes to the zone (the
    // list keeps the ones it has: nothing moves down).
    for (freed, block) in blocks.into_iter().enumerate() {
        page_alloc::free(block).expect("free");
        let cached = (freed as u64 + 1).min(high as u64) << order;
        assert_eq!(high_order_cached(), (cached, order), "free {freed}");
    }
    let zone = page_alloc::zone_of(last).expect("its zone");
    assert_ne!(
        zone.frame(last).state(),
        FrameState::Cached,
        "passed through"
    );
    check_state();
    assert_eq!(settled_free_pages(), start_free);
}

#[test_case]
fn high_order_blocks_wait_in_per_cpu_lists_counted_checked_and_drained() {
    let start_free = settled_free_pages();
    assert_eq!(high_order_cached(), (0, 0), "a drain empties every list");
    // Blocks of orders with a list (1..=3, 4 and 8 of the larger ones, and the pageblock
    // order), freed one by one.
    let mut blocks = Vec::new();
    for order in [1u8, 2, 3, 4, 8, PAGEBLOCK_ORDER] {
        for _ in 0..4 {
            let request = AllocRequest::new(order).kind(MigrateType::Movable);
            blocks.push(page_alloc::alloc(request).expect("memory"));
        }
    }
    drop(blocks);
    let (cached, highest) = high_order_cached();
    assert_eq!(highest, PAGEBLOCK_ORDER, "a 2 MiB block waits in its list");
    // The checker sees each cached block whole, with its order, counted in pages; the free
    // count includes them exactly.
    let census = check_state();
    assert!(census.cached >= cached, "{} < {cached}", census.cached);
    assert_eq!(page_alloc::free_pages(), start_free);
    // A drain from the pageblock order takes its lists only.
    assert!(page_alloc::drain_per_cpu_caches_from(PAGEBLOCK_ORDER) >= 1 << PAGEBLOCK_ORDER);
    let (larger, highest) = high_order_cached();
    assert!(
        highest == 8 && larger > 0 && larger < cached,
        "{larger} of {cached}, order {highest}"
    );
    // The reporting worker's drain takes the lists above the small orders.
    let costly = page_alloc::PCP_COSTLY_ORDER;
    assert!(page_alloc::drain_per_cpu_caches_from(costly + 1) >= 1 << 8);
    let (small, highest) = high_order_cached();
    assert!(
        highest <= costly && small > 0 && small < larger,
        "{small} of {larger}"
    );
    check_state();
    // A compaction pass drains every list (cached blocks merge before it measures).
    kernel::mm::compaction::compact_all();
    assert_eq!(high_order_cached(), (0, 0), "compaction drained the lists");
    check_state();
    assert_eq!(settled_free_pages(), start_free);
}
