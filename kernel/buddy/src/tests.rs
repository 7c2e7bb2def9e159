//! Host unit tests of the core: every order, zone and pageblock boundaries, the reported
//! boundary, splitting and merging, fallback stealing, isolation, the per-CPU list, the check
//! itself, and the seeded model test the guest also runs. Sizes shrink under Miri.

use crate::buddy::{
    Block, End, FreeArea, MAX_ORDER, MigrateType, PAGEBLOCK_ORDER, PAGEBLOCK_PAGES,
};
use crate::frame::{Frame, FrameFlags, FrameIndex, FrameState, FrameTable, HeadWord, Owner};
use crate::pcp::{PCP_BATCH, PCP_HIGH, PcpLists};
use crate::sim::{Sim, add_free_range};
use alloc::vec::Vec;

/// A zone of `len` frames from `base_pfn`, all free.
fn area(base_pfn: u64, len: u32) -> FreeArea {
    let mut area = FreeArea::new(base_pfn, FrameTable::leak(base_pfn, len as usize));
    add_free_range(&mut area, 0, len);
    area
}

fn check(area: &FreeArea) -> crate::check::AreaCensus {
    area.check()
        .unwrap_or_else(|error| panic!("check failed: {error:?}"))
}

/// Free blocks per order and migratetype: the shape of the free memory.
fn shape(area: &FreeArea) -> Vec<u32> {
    (0..=MAX_ORDER)
        .flat_map(|order| MigrateType::ALL.map(|kind| area.list_count(order, kind)))
        .collect()
}

/// Allocates as the kernel labels it.
fn alloc(area: &mut FreeArea, order: u8, kind: MigrateType) -> Option<FrameIndex> {
    let index = area.allocate(order, kind)?;
    area.frame(index)
        .make_head(FrameState::Allocated, order, Owner::Kernel as u8);
    Some(index)
}

/// Claims an allocated block for freeing, as the kernel does on its way to the zone's lists.
fn claim(area: &FreeArea, index: FrameIndex, order: u8) -> Result<(), FrameState> {
    area.frame(index)
        .claim_for_free(order, HeadWord::in_transit(order))
}

/// Frees as the kernel does.
fn free(area: &mut FreeArea, index: FrameIndex, order: u8) -> Block {
    claim(area, index, order).expect("allocated");
    area.free(index, order)
}

/// Two whole max-order blocks (four pageblocks).
const TWO_BLOCKS: u32 = 2 << MAX_ORDER;

#[test]
fn a_fresh_zone_is_whole_blocks_and_passes_the_check() {
    let area = area(0, TWO_BLOCKS);
    let census = check(&area);
    assert_eq!(census.free, TWO_BLOCKS as u64);
    assert_eq!(area.list_count(MAX_ORDER, MigrateType::Movable), 2);
    assert_eq!(area.free_pages, TWO_BLOCKS as u64);
}

#[test]
fn every_order_allocates_aligned_blocks_until_exhaustion_and_merges_back() {
    // Under Miri, one max-order block.
    let frames = if cfg!(miri) {
        1 << MAX_ORDER
    } else {
        TWO_BLOCKS
    };
    let mut area = area(0, frames);
    let start = shape(&area);
    // Under Miri, a few orders (every order is slow to exhaust there).
    let orders: &[u8] = if cfg!(miri) {
        &[3, 7, MAX_ORDER]
    } else {
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    };
    for &order in orders {
        let mut held = Vec::new();
        while let Some(index) = alloc(&mut area, order, MigrateType::Movable) {
            assert_eq!(
                area.pfn(index) % (1 << order),
                0,
                "order {order} misaligned"
            );
            held.push(index);
        }
        assert_eq!(held.len() as u64, (frames as u64) >> order, "order {order}");
        assert_eq!(area.free_pages, 0);
        let census = check(&area);
        assert_eq!(census.allocated, frames as u64);
        for index in held {
            free(&mut area, index, order);
        }
        check(&area);
        assert_eq!(
            shape(&area),
            start,
            "order {order}: memory did not merge back"
        );
    }
}

#[test]
fn blocks_stay_inside_an_unaligned_zone_and_never_merge_across_its_ends() {
    // pfns 100..1100: neither end is aligned to anything above order 2.
    let (base, len) = (100u64, 1000u32);
    let mut area = area(base, len);
    check(&area);
    let start = shape(&area);
    // The first block is order 2 at pfn 100 (its buddy, pfn 96, is outside the zone).
    assert_eq!(area.frame(0).state(), FrameState::Free);
    assert_eq!(area.frame(0).order(), 2);
    let mut held = Vec::new();
    while let Some(index) = alloc(&mut area, 0, MigrateType::Movable) {
        held.push(index);
    }
    assert_eq!(held.len(), len as usize);
    for (position, &index) in held.iter().enumerate() {
        let block = free(&mut area, index, 0);
        let end = area.pfn(block.index) + (1 << block.order);
        assert!(
            area.pfn(block.index) >= base && end <= base + len as u64,
            "free {position}: merged block {block:?} leaves the zone"
        );
    }
    check(&area);
    assert_eq!(shape(&area), start);
    assert_eq!(area.index_of(base - 1), None);
    assert_eq!(area.index_of(base + len as u64), None);
    assert_eq!(area.index_of(base), Some(0));
}

#[test]
fn pageblock_ranges_cover_a_zone_with_partial_pageblocks_at_both_ends() {
    // Starts 8 pages before a pageblock boundary and ends 8 pages after one.
    let base = PAGEBLOCK_PAGES - 8;
    let len = 16 + PAGEBLOCK_PAGES as u32;
    let area = area(base, len);
    assert_eq!(area.pageblock_count(), 3);
    assert_eq!(area.pageblock_range(0), (0, 8));
    assert_eq!(area.pageblock_range(1), (8, 8 + PAGEBLOCK_PAGES as u32));
    assert_eq!(area.pageblock_range(2), (8 + PAGEBLOCK_PAGES as u32, len));
    // Every frame's pageblock type reads from the right slot.
    let mut area = area;
    area.set_pageblock_type(8, MigrateType::Unmovable);
    assert_eq!(area.pageblock_type(7), MigrateType::Movable);
    assert_eq!(area.pageblock_type(8), MigrateType::Unmovable);
    assert_eq!(
        area.pageblock_type(8 + PAGEBLOCK_PAGES as u32 - 1),
        MigrateType::Unmovable
    );
    assert_eq!(
        area.pageblock_type(8 + PAGEBLOCK_PAGES as u32),
        MigrateType::Movable
    );
    check(&area);
}

#[test]
fn splits_and_merges_are_counted_and_exact() {
    let mut area = area(0, 1 << MAX_ORDER);
    let index = alloc(&mut area, 0, MigrateType::Movable).expect("memory");
    assert_eq!(area.counters.splits, MAX_ORDER as u64);
    // One free block of every order below the top is left.
    for order in 0..MAX_ORDER {
        assert_eq!(
            area.list_count(order, MigrateType::Movable),
            1,
            "order {order}"
        );
    }
    let block = free(&mut area, index, 0);
    assert_eq!(
        block,
        Block {
            index: 0,
            order: MAX_ORDER
        }
    );
    assert_eq!(area.counters.merges, MAX_ORDER as u64);
    check(&area);
}

#[test]
fn an_unmovable_allocation_steals_its_whole_pageblock_and_no_other() {
    let mut area = area(0, TWO_BLOCKS);
    let index = alloc(&mut area, 0, MigrateType::Unmovable).expect("fallback");
    assert_eq!(area.counters.fallbacks, 1);
    assert_eq!(area.pageblock_type(index), MigrateType::Unmovable);
    // The fallback took the largest block (order 10, two pageblocks): both became unmovable.
    assert_eq!(area.counters.pageblocks_stolen, 2);
    let others = (0..area.pageblock_count())
        .filter(|&slot| area.pageblock_type(area.pageblock_range(slot).0) == MigrateType::Unmovable)
        .count();
    assert_eq!(others, 2);
    // The rest of the stolen block is on the unmovable lists now.
    let unmovable_free: u64 = (0..=MAX_ORDER)
        .map(|order| u64::from(area.list_count(order, MigrateType::Unmovable)) << order)
        .sum();
    assert_eq!(unmovable_free, (1 << MAX_ORDER) - 1);
    // A second one comes from its own lists: no fallback.
    alloc(&mut area, 0, MigrateType::Unmovable).expect("own lists");
    assert_eq!(area.counters.fallbacks, 1);
    check(&area);
}

#[test]
fn a_fallback_below_pageblock_order_claims_the_pageblock_only_with_half_of_it_free() {
    // Two pageblocks; fill all of the first but a few pages with movable, then steal for
    // unmovable: the pageblock moves its free blocks but keeps its type (too little free).
    let mut area = area(0, 2 * PAGEBLOCK_PAGES as u32);
    // Take the second pageblock out of reach first (an unmovable claim would pick it).
    let second = alloc(&mut area, PAGEBLOCK_ORDER, MigrateType::Movable).expect("memory");
    let mut held = Vec::new();
    for _ in 0..PAGEBLOCK_PAGES - 4 {
        held.push(alloc(&mut area, 0, MigrateType::Movable).expect("memory"));
    }
    let stolen = area.counters.pageblocks_stolen;
    let index = alloc(&mut area, 0, MigrateType::Unmovable).expect("fallback");
    assert_eq!(
        area.counters.pageblocks_stolen, stolen,
        "claimed with 4 of 512 free"
    );
    assert_eq!(area.pageblock_type(index), MigrateType::Movable);
    // A small movable fallback from unmovable lists never claims a pageblock either.
    check(&area);
    free(&mut area, index, 0);
    for index in held {
        free(&mut area, index, 0);
    }
    free(&mut area, second, PAGEBLOCK_ORDER);
    assert_eq!(area.free_pages, 2 * PAGEBLOCK_PAGES);
    check(&area);
}

#[test]
fn a_small_movable_fallback_takes_a_block_without_claiming_the_pageblock() {
    // One pageblock, all unmovable after the first unmovable allocation steals it.
    let mut area = area(0, PAGEBLOCK_PAGES as u32);
    let mut held: Vec<FrameIndex> = Vec::new();
    for _ in 0..PAGEBLOCK_PAGES - 8 {
        held.push(alloc(&mut area, 0, MigrateType::Unmovable).expect("memory"));
    }
    assert_eq!(area.pageblock_type(0), MigrateType::Unmovable);
    // Left: one unmovable order-3 block, below the claiming order (pageblock order / 2).
    assert_eq!(area.list_count(3, MigrateType::Unmovable), 1);
    let stolen = area.counters.pageblocks_stolen;
    let movable = alloc(&mut area, 0, MigrateType::Movable).expect("fallback");
    assert_eq!(area.counters.pageblocks_stolen, stolen);
    assert_eq!(area.pageblock_type(0), MigrateType::Unmovable);
    // The rest of the split block stays on the unmovable lists.
    assert_eq!(area.free_pages, 7);
    let unmovable_free: u64 = (0..3)
        .map(|order| u64::from(area.list_count(order, MigrateType::Unmovable)) << order)
        .sum();
    assert_eq!(unmovable_free, 7);
    check(&area);
    free(&mut area, movable, 0);
    for index in held {
        free(&mut area, index, 0);
    }
    check(&area);
    assert_eq!(area.list_count(PAGEBLOCK_ORDER, MigrateType::Unmovable), 1);
}

/// Isolates the free block at `index` and puts it back reported (as the reporting worker does).
fn report(area: &mut FreeArea, index: FrameIndex) {
    area.isolate(index).expect("a free block");
    area.put_back_isolated(index, End::Tail, FrameFlags::REPORTED);
}

#[test]
fn the_reported_boundary_keeps_reported_blocks_at_the_tail() {
    // Four max-order blocks on the movable list.
    let mut area = area(0, 4 << MAX_ORDER);
    let kind = MigrateType::Movable;
    let order = MAX_ORDER;
    let blocks: Vec<FrameIndex> = area.list_iter(order, kind).collect();
    assert_eq!(blocks.len(), 4);
    assert_eq!(area.reported_run(order, kind), (0, None));
    assert_eq!(area.last_unreported(order, kind), Some(blocks[3]));
    // Report the tail block: it becomes the boundary.
    report(&mut area, blocks[3]);
    assert_eq!(area.reported_run(order, kind), (1, Some(blocks[3])));
    assert_eq!(area.reported_pages(order), 1 << order);
    assert_eq!(area.last_unreported(order, kind), Some(blocks[2]));
    // Report the next one: it joins the run at the tail, the boundary stays.
    report(&mut area, blocks[2]);
    assert_eq!(area.reported_run(order, kind), (2, Some(blocks[3])));
    assert_eq!(
        area.list_iter(order, kind).collect::<Vec<_>>()[2..],
        [blocks[3], blocks[2]]
    );
    assert_eq!(area.unreported_pages_from(order), 2 << order);
    check(&area);
    // An unreported block pushed at the tail goes in front of the run, not after it.
    area.unlink(blocks[0]);
    area.push(blocks[0], order, kind, End::Tail);
    let list: Vec<_> = area.list_iter(order, kind).collect();
    assert_eq!(list, [blocks[1], blocks[0], blocks[3], blocks[2]]);
    assert_eq!(area.last_unreported(order, kind), Some(blocks[0]));
    check(&area);
    // ... and at the head, at the head.
    area.unlink(blocks[0]);
    area.push(blocks[0], order, kind, End::Head);
    assert_eq!(area.list_end(order, kind, End::Head), Some(blocks[0]));
    check(&area);
    // Allocation takes unreported blocks first.
    let a = alloc(&mut area, order, kind).expect("memory");
    let b = alloc(&mut area, order, kind).expect("memory");
    assert_eq!([a, b], [blocks[0], blocks[1]]);
    assert_eq!(area.reported_run(order, kind), (2, Some(blocks[3])));
    // Then the boundary block itself: it loses its flag and the boundary moves to the next.
    let c = alloc(&mut area, order, kind).expect("memory");
    assert_eq!(c, blocks[3]);
    assert!(!area.frame(c).flags().contains(FrameFlags::REPORTED));
    assert_eq!(area.reported_run(order, kind), (1, Some(blocks[2])));
    assert_eq!(area.reported_pages(order), 1 << order);
    check(&area);
    // The last reported block leaves: the run is empty.
    let d = alloc(&mut area, order, kind).expect("memory");
    assert_eq!(area.reported_run(order, kind), (0, None));
    assert_eq!(area.reported_pages(order), 0);
    for index in [a, b, c, d] {
        free(&mut area, index, order);
    }
    check(&area);
}

#[test]
fn a_warm_block_of_a_higher_order_is_taken_before_a_reported_one() {
    // One pageblock-order block reported, one max-order block warm.
    let mut area = area(0, 2 << MAX_ORDER);
    let kind = MigrateType::Movable;
    let top = alloc(&mut area, MAX_ORDER, kind).expect("memory");
    let low = alloc(&mut area, MAX_ORDER - 1, kind).expect("memory");
    // Left: one free order-9 block (the other half of the second max-order block).
    let reported_block = area
        .list_end(MAX_ORDER - 1, kind, End::Head)
        .expect("a free half");
    report(&mut area, reported_block);
    free(&mut area, top, MAX_ORDER);
    let got = alloc(&mut area, MAX_ORDER - 1, kind).expect("memory");
    assert_ne!(
        got, reported_block,
        "took the reported block while a warm one was free"
    );
    assert_eq!(area.reported_run(MAX_ORDER - 1, kind).0, 1);
    check(&area);
    free(&mut area, got, MAX_ORDER - 1);
    free(&mut area, low, MAX_ORDER - 1);
    // The reported block merged with its freed buddy: the merged block is unreported.
    assert_eq!(area.reported_pages(MAX_ORDER - 1), 0);
    assert_eq!(area.reported_pages(MAX_ORDER), 0);
    assert_eq!(area.list_count(MAX_ORDER, kind), 2);
    check(&area);
}

#[test]
fn isolated_blocks_are_neither_allocated_nor_merged_until_put_back() {
    let mut area = area(0, 1 << MAX_ORDER);
    let kind = MigrateType::Movable;
    let low = alloc(&mut area, MAX_ORDER - 1, kind).expect("memory");
    let high = area
        .list_end(MAX_ORDER - 1, kind, End::Head)
        .expect("the other half");
    assert_eq!(area.isolate(high), Some(MAX_ORDER - 1));
    assert_eq!(area.isolate(high), None, "isolated twice");
    assert_eq!(area.frame(high).state(), FrameState::Isolated);
    assert_eq!(area.allocate(MAX_ORDER - 1, kind), None);
    let census = check(&area);
    assert_eq!(census.isolated, 1 << (MAX_ORDER - 1));
    // Freeing the buddy does not merge with an isolated block.
    let block = free(&mut area, low, MAX_ORDER - 1);
    assert_eq!(block.order, MAX_ORDER - 1);
    // Putting it back merges.
    let back = area.put_back_isolated(high, End::Head, FrameFlags::empty());
    assert_eq!(
        back,
        Block {
            index: 0,
            order: MAX_ORDER
        }
    );
    check(&area);
}

#[test]
fn an_isolate_pageblock_keeps_its_frees_off_the_allocatable_lists() {
    let mut area = area(0, 2 << MAX_ORDER);
    let kind = MigrateType::Movable;
    let page = alloc(&mut area, 0, kind).expect("memory");
    area.set_pageblock_type(page, MigrateType::Isolate);
    let block = free(&mut area, page, 0);
    // It merged up to its pageblock but not beyond: the neighbour pageblock is not isolated.
    assert_eq!(block.order, PAGEBLOCK_ORDER);
    assert_eq!(area.list_count(PAGEBLOCK_ORDER, MigrateType::Isolate), 1);
    assert_eq!(area.frame(block.index).list(), MigrateType::Isolate as u8);
    // Allocation never looks at the isolate list.
    let mut held = Vec::new();
    while let Some(index) = alloc(&mut area, PAGEBLOCK_ORDER, kind) {
        held.push(index);
    }
    assert_eq!(held.len(), 3);
    check(&area);
}

#[test]
fn claim_free_block_turns_a_free_block_into_allocated_pages() {
    let mut area = area(0, 1 << MAX_ORDER);
    let index = area
        .list_end(MAX_ORDER, MigrateType::Movable, End::Head)
        .expect("free");
    report(&mut area, index);
    assert_eq!(
        area.claim_free_block(index, Owner::UserAnon as u8),
        Some((MAX_ORDER, true))
    );
    assert_eq!(area.claim_free_block(index, Owner::UserAnon as u8), None);
    let census = check(&area);
    assert_eq!(census.allocated, 1 << MAX_ORDER);
    assert_eq!(area.reported_pages(MAX_ORDER), 0);
}

#[test]
fn the_claim_refuses_double_and_wrong_order_frees() {
    let mut area = area(0, 1 << MAX_ORDER);
    let index = alloc(&mut area, 2, MigrateType::Movable).expect("memory");
    let before = area.frame(index).head_word();
    assert_eq!(claim(&area, index, 3), Err(FrameState::Allocated));
    assert_eq!(
        area.frame(index).head_word(),
        before,
        "a refused claim changes nothing"
    );
    free(&mut area, index, 2);
    assert_eq!(claim(&area, index, 2), Err(FrameState::Free));
    check(&area);
}

#[test]
fn the_per_cpu_list_refills_a_batch_and_drains_the_oldest() {
    let mut area = area(0, 1 << MAX_ORDER);
    let mut lists = PcpLists::new();
    let mut list = lists.list(0);
    assert_eq!(list.refill(&mut area, MigrateType::Movable, 0), PCP_BATCH);
    assert_eq!(area.free_pages, (1 << MAX_ORDER) - PCP_BATCH as u64);
    let census = check(&area);
    assert_eq!(census.cached, PCP_BATCH as u64);
    // Refill respects the mark.
    let mut others = PcpLists::new();
    let mut other = others.list(0);
    let mark = area.free_pages - 3;
    assert_eq!(other.refill(&mut area, MigrateType::Movable, mark), 3);
    other.drain_all(&mut area);
    // Fill to above high through pushes of pages taken from the list itself plus fresh ones.
    while list.len() <= PCP_HIGH {
        let index = area.allocate(0, MigrateType::Movable).expect("memory");
        area.frame(index)
            .make_head(FrameState::Cached, 0, MigrateType::Movable as u8);
        let over = list.push(area.pfn(index));
        assert_eq!(over, list.len() > PCP_HIGH);
    }
    let oldest: Vec<u64> = list.pfns()[PCP_BATCH..].to_vec();
    list.drain_batch(&mut area);
    assert_eq!(list.pfns(), &oldest[..], "the warm pages stay, in order");
    check(&area);
    assert_eq!(list.drain_all(&mut area), (PCP_HIGH + 1 - PCP_BATCH) as u64);
    assert_eq!(area.free_pages, 1 << MAX_ORDER);
    assert_eq!(shape(&area), shape(&self::area(0, 1 << MAX_ORDER)));
    check(&area);
}

#[test]
fn the_check_finds_a_stray_tail_a_wrong_count_and_a_broken_link() {
    let mut area = area(0, 1 << MAX_ORDER);
    let index = alloc(&mut area, 3, MigrateType::Movable).expect("memory");
    // A frame inside the allocated block made a head: the tail after it is stray.
    area.frame(index + 1).make_head(FrameState::Allocated, 0, 0);
    assert!(area.check().is_err());
    area.frame(index + 1).set_state(FrameState::Tail);
    check(&area);
    area.free_pages += 1;
    assert_eq!(
        area.check().map_err(|error| error.what),
        Err("the area's free count is wrong")
    );
    area.free_pages -= 1;
    let head = area
        .list_end(3, MigrateType::Movable, End::Head)
        .expect("a free buddy");
    area.frame(head).set_prev(head);
    assert!(area.check().is_err());
}

/// The guest's zones in small: DMA (pfns 0..4096, the first 1 MiB reserved) and DMA32 above.
/// Under Miri: 256 and 1024 pages, the first 16 reserved.
fn model_sim() -> Sim {
    if cfg!(miri) {
        Sim::new(&[(0, 256), (256, 1280)], &[(0, 16)], 4)
    } else {
        Sim::new(&[(0, 4096), (4096, 1 << 17)], &[(0, 256)], 4)
    }
}

#[test]
fn seeded_model_test_as_in_the_guest() {
    // Under Miri: 200 operations in 2 phases.
    let (operations, phases) = if cfg!(miri) {
        (200, 2)
    } else {
        (1_000_000, 10)
    };
    let mut sim = model_sim();
    let summary = crate::model::run(&mut sim, 0x05ee_d0fa_110c, operations, phases);
    assert!(summary.allocations > operations / 3, "{summary:?}");
}

#[test]
fn the_model_test_fails_on_an_allocator_that_loses_a_page() {
    struct Leaky(Sim);
    impl crate::model::ModelTarget for Leaky {
        fn alloc(
            &mut self,
            order: u8,
            kind: MigrateType,
            limit: crate::model::Limit,
        ) -> Option<u64> {
            crate::model::ModelTarget::alloc(&mut self.0, order, kind, limit)
        }
        fn free(&mut self, pfn: u64, order: u8) {
            // Leaks every order-3 block.
            if order != 3 {
                crate::model::ModelTarget::free(&mut self.0, pfn, order);
            }
        }
        fn limit_end_pfn(&self, limit: crate::model::Limit) -> u64 {
            self.0.limit_end_pfn(limit)
        }
        fn sign(&mut self, pfn: u64, order: u8, value: u64) {
            self.0.sign(pfn, order, value)
        }
        fn signature(&self, pfn: u64, order: u8) -> u64 {
            self.0.signature(pfn, order)
        }
        fn check(&mut self) -> u64 {
            crate::model::ModelTarget::check(&mut self.0)
        }
        fn settled_free_pages(&mut self) -> u64 {
            self.0.settled_free_pages()
        }
    }
    let result = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
        crate::model::run(&mut Leaky(model_sim()), 1, 400, 2)
    }));
    assert!(result.is_err(), "a leak went unnoticed");
}

#[test]
fn a_batch_allocation_cuts_whole_blocks_smallest_first_and_respects_the_reserve() {
    let mut area = area(0, TWO_BLOCKS);
    // A fragment first: one order-0 and one order-3 block free next to allocated memory.
    let small = alloc(&mut area, 0, MigrateType::Movable).expect("memory");
    let fragments: Vec<u32> = (0..MAX_ORDER)
        .map(|order| area.list_count(order, MigrateType::Movable))
        .collect();
    assert!(fragments.iter().all(|&count| count == 1));
    for order in [0u8, 3, PAGEBLOCK_ORDER, MAX_ORDER] {
        let (mut taken, mut heads) = (Vec::new(), Vec::new());
        let got = area.allocate_batch(order, MigrateType::Movable, 40, 0, |index, head| {
            taken.push(index);
            heads.push(head);
        });
        assert_eq!(got, taken.len());
        let expected = match order {
            PAGEBLOCK_ORDER => 3,
            MAX_ORDER => 1,
            _ => 40,
        };
        assert_eq!(got, expected, "order {order}");
        for (&index, &head) in taken.iter().zip(&heads) {
            assert!(
                core::ptr::eq(head, area.frame(index)),
                "order {order}: wrong record"
            );
        }
        for &index in &taken {
            assert_eq!(
                area.pfn(index) % (1 << order),
                0,
                "order {order}: misaligned"
            );
            area.frame(index)
                .make_head(FrameState::Allocated, order, Owner::Kernel as u8);
        }
        let mut sorted = taken.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            taken.len(),
            "order {order}: a block handed out twice"
        );
        check(&area);
        for &index in &taken {
            claim(&area, index, order).expect("allocated");
        }
        area.free_batch(taken.iter().map(|&index| (index, order)));
        check(&area);
    }
    // The reserve: with `keep` pages to leave, it stops there.
    let keep = area.free_pages - 10;
    let mut taken = Vec::new();
    area.allocate_batch(0, MigrateType::Movable, usize::MAX, keep, |index, _| {
        taken.push(index)
    });
    assert_eq!(taken.len(), 10);
    assert_eq!(area.free_pages, keep);
    for &index in &taken {
        area.frame(index)
            .make_head(FrameState::Allocated, 0, Owner::Kernel as u8);
        free(&mut area, index, 0);
    }
    free(&mut area, small, 0);
    assert_eq!(area.free_pages, TWO_BLOCKS as u64);
    check(&area);
}

#[test]
fn a_batch_free_gives_adjacent_pages_back_as_whole_blocks() {
    let mut area = area(0, 1 << MAX_ORDER);
    let mut pages = Vec::new();
    area.allocate_batch(0, MigrateType::Movable, 64, 0, |index, _| pages.push(index));
    for &index in &pages {
        area.frame(index)
            .make_head(FrameState::Allocated, 0, Owner::Kernel as u8);
    }
    // 64 pages from one order-6 cut, ascending.
    assert!(pages.windows(2).all(|pair| pair[1] == pair[0] + 1));
    let merges = area.counters.merges;
    for &index in &pages {
        claim(&area, index, 0).expect("allocated");
    }
    area.free_batch(pages.iter().map(|&index| (index, 0)));
    // One order-6 free, merging up to the top: 4 merges, not 64 frees' worth.
    assert_eq!(area.counters.merges - merges, u64::from(MAX_ORDER - 6));
    assert_eq!(area.list_count(MAX_ORDER, MigrateType::Movable), 1);
    check(&area);
}

#[test]
fn bulk_allocation_and_free_through_the_stand_in_match_single_ones() {
    let mut sim = model_sim();
    let start = sim.free_pages();
    let mut blocks = Vec::new();
    for order in [0u8, 2, PAGEBLOCK_ORDER] {
        // Under Miri: 40 of orders 0 and 2, one of order 9.
        let small = if cfg!(miri) { 40 } else { 300 };
        let count = if order == PAGEBLOCK_ORDER {
            small / 150
        } else {
            small
        };
        assert_eq!(
            sim.alloc_bulk(order, MigrateType::Movable, usize::MAX, count, &mut blocks),
            count
        );
    }
    let census = sim.check().expect("check");
    let small = if cfg!(miri) { 40 } else { 300 };
    assert_eq!(
        census.allocated,
        small + small * 4 + (small / 150) * PAGEBLOCK_PAGES
    );
    // A double free inside a batch is refused and changes nothing else.
    let first = blocks[0];
    blocks.push(first);
    assert!(matches!(
        sim.free_bulk(&blocks),
        Err(FrameState::Free | FrameState::Tail)
    ));
    sim.check().expect("check");
    assert_eq!(
        crate::model::ModelTarget::settled_free_pages(&mut sim),
        start
    );
}

#[test]
fn build_database_turns_raw_memory_into_reserved_records() {
    // The one unsafe path: raw memory (as the kernel's reserved RAM) becomes records. Under
    // Miri this checks the writes and the table made over them. The base is not
    // pageblock-aligned and the records span three pageblocks, so the padding is written too.
    let (base_pfn, count) = (0x1000 - 100, 700);
    let storage = FrameTable::storage_len(base_pfn, count);
    assert_eq!(
        storage,
        count + 2 * 2,
        "two pageblock ends inside the table"
    );
    let mut memory: Vec<Frame> = Vec::with_capacity(storage);
    // SAFETY: `memory` owns room for `storage` records, aligned for a `Frame`, and is leaked
    // below so nothing else ever uses it.
    let records = unsafe { crate::frame::build_database(memory.as_mut_ptr(), base_pfn, count) };
    core::mem::forget(memory);
    assert_eq!(records.len(), count);
    assert_eq!(records.storage_records(), storage);
    assert_eq!(records.iter().count(), count);
    assert!(
        records
            .iter()
            .all(|frame| frame.state() == FrameState::Reserved
                && frame.refcount.load(core::sync::atomic::Ordering::Relaxed) == 0
                && frame.next() == crate::frame::NONE)
    );
    // And they work as a zone's records.
    let mut area = FreeArea::new(base_pfn, records);
    add_free_range(&mut area, 0, count as u32);
    let census = check(&area);
    assert_eq!(census.free, count as u64);
}

/// Every index of a table for a base that is not pageblock-aligned: its record is its own
/// (distinct, in the storage, in index order), exactly the padding lies between pageblocks, and
/// sub-tables, runs and the initialiser agree with the indexing.
#[test]
fn a_record_and_its_pageblock_come_from_one_shift_at_any_base() {
    for base in [0u64, 1, 7, 511, 512, 513, 4396, (1 << 20) + 5] {
        let count = 1100;
        let table = FrameTable::leak(base, count);
        for index in 0..count {
            let (frame, run) = table.at_with_run(index);
            assert!(
                core::ptr::eq(frame, table.at(index)),
                "base {base}, index {index}"
            );
            let pageblock = ((base + index as u64) >> PAGEBLOCK_ORDER) - (base >> PAGEBLOCK_ORDER);
            assert_eq!(run as u64, pageblock, "base {base}, index {index}");
        }
    }
}

#[test]
fn frame_table_pads_each_pageblock_and_maps_indices_to_their_own_records() {
    let size = size_of::<Frame>();
    for (base_pfn, count) in [
        (0x1000 - 3, 3 + 2 * 512 + 5),
        (0x7ff, 1),
        (0x200, 1024),
        (5, 0),
    ] {
        let table = FrameTable::leak(base_pfn, count);
        assert_eq!(table.len(), count);
        assert_eq!(
            table.storage_records(),
            count + 2 * ((base_pfn as usize % 512 + count) / 512)
        );
        assert!(table.get(count).is_none() && table.get(usize::MAX).is_none());
        let first = table.get(0).map(|frame| frame as *const Frame as usize);
        let mut previous: Option<usize> = None;
        for index in 0..count {
            let address = &table[index] as *const Frame as usize;
            let slot = (address - first.unwrap()) / size;
            assert!(
                slot < table.storage_records(),
                "index {index} outside the storage"
            );
            let pfn = base_pfn + index as u64;
            let expected_gap = if pfn.is_multiple_of(512) { 3 } else { 1 };
            if let Some(previous) = previous {
                // Strictly increasing, so distinct; padded exactly at pageblock starts.
                assert_eq!(slot - previous, expected_gap, "index {index}, pfn {pfn:#x}");
            }
            // Pageblock heads of absolute pfns sit 16,448 bytes apart: not a power of two.
            if pfn.is_multiple_of(512) && index >= 512 {
                let head = &table[index - 512] as *const Frame as usize;
                assert_eq!(address - head, 16_448);
            }
            previous = Some(slot);
        }
        // Iteration, runs and sub-tables see the same records.
        assert!(
            table
                .iter()
                .zip(0..)
                .all(|(frame, index)| core::ptr::eq(frame, &table[index]))
        );
        assert_eq!(table.runs().map(<[Frame]>::len).sum::<usize>(), count);
        assert!(table.runs().all(|run| !run.is_empty() && run.len() <= 512));
        // Fewer cuts under Miri (each checks every record it holds).
        let (starts, ends): (&[usize], &[usize]) = if cfg!(miri) {
            (&[0, 3, 516], &[0, 1, 515, usize::MAX])
        } else {
            (
                &[0, 1, 2, 3, 4, 515, 516],
                &[0, 1, 3, 515, 1030, usize::MAX],
            )
        };
        for &start in starts.iter().filter(|&&start| start <= count) {
            for &end in ends {
                // 0 and 1: an empty and a one-record cut; MAX: to the table's end.
                let end = match end {
                    0 | 1 => start + end,
                    usize::MAX => count,
                    end => end,
                };
                if end < start || end > count {
                    continue;
                }
                let sub = table.sub(start..end);
                assert_eq!(sub.len(), end - start);
                for index in 0..sub.len() {
                    assert!(core::ptr::eq(&sub[index], &table[start + index]));
                }
                assert!(sub.get(sub.len()).is_none());
                assert!(
                    sub.iter()
                        .zip(start..)
                        .all(|(frame, index)| core::ptr::eq(frame, &table[index]))
                );
            }
        }
        // The initialiser writes the records in `state` and the padding reserved, and
        // nothing outside the sub-table's storage.
        if count > 520 {
            // SAFETY: the table is ours alone, nothing reads it meanwhile.
            unsafe { crate::frame::init_records(table.sub(1..count - 1), FrameState::Tail) };
            assert_eq!(table[0].state(), FrameState::Reserved);
            assert_eq!(table[count - 1].state(), FrameState::Reserved);
            assert!(
                table
                    .sub(1..count - 1)
                    .iter()
                    .all(|frame| frame.state() == FrameState::Tail)
            );
        }
    }
}

/// One zone of 8 max-order blocks (32 MiB), no reserve, for the high-order per-CPU lists.
fn pcp_sim() -> Sim {
    Sim::new(&[(0, 8 << MAX_ORDER)], &[], 0)
}

fn sim_check(sim: &Sim) -> crate::check::AreaCensus {
    sim.check()
        .unwrap_or_else(|error| panic!("check failed: {error:?}"))
}

#[test]
#[cfg_attr(miri, ignore = "safe code over a 32 MiB zone: minutes under Miri")]
fn high_order_per_cpu_lists_cache_blocks_with_exact_counts_and_drain_whole() {
    use crate::pcp::{PCP_ORDERS, pcp_high_pages};
    let mut sim = pcp_sim();
    let total = sim.free_pages();
    let fresh = shape(&sim.zones()[0].area);
    // Every order with a list: allocate a few, free them: they wait in the lists, counted free.
    let mut blocks = Vec::new();
    for order in PCP_ORDERS {
        for _ in 0..3 {
            let pfn = sim.alloc(order, MigrateType::Movable, 1).expect("memory");
            assert_eq!(pfn % (1 << order), 0);
            blocks.push((pfn, order));
        }
    }
    let census = sim_check(&sim);
    let held: u64 = blocks.iter().map(|&(_, order)| 1u64 << order).sum();
    assert_eq!(census.allocated, held);
    assert_eq!(
        sim.free_pages(),
        total - held,
        "free pages exact while allocated"
    );
    for &(pfn, order) in &blocks {
        sim.free(pfn, order).expect("free");
        // A block in a list is cached with its order (and a second free is refused).
        let head = sim.frame(pfn).expect("frame");
        if head.state() == FrameState::Cached {
            assert_eq!(head.order(), order);
            assert_eq!(sim.free(pfn, order), Err(FrameState::Cached));
        }
        sim_check(&sim);
        assert_eq!(
            sim.free_pages(),
            total - {
                held - blocks
                    .iter()
                    .take_while(|&&(done, _)| done != pfn)
                    .map(|&(_, order)| 1u64 << order)
                    .sum::<u64>()
                    - (1 << order)
            }
        );
    }
    let census = sim_check(&sim);
    assert_eq!(sim.free_pages(), total);
    assert_eq!(census.cached, sim.cached_pages());
    assert!(
        sim.cached_pages() > 1 << PAGEBLOCK_ORDER,
        "high-order blocks were cached ({} pages)",
        sim.cached_pages()
    );
    // No list is above its high mark.
    assert!(sim.cached_pages() <= PCP_ORDERS.iter().map(|&o| pcp_high_pages(o) as u64).sum());
    // Drained, the zone is whole again: every cached block merged back.
    assert_eq!(sim.drain(), census.cached);
    assert_eq!(sim.cached_pages(), 0);
    assert_eq!(sim_check(&sim).cached, 0);
    assert_eq!(shape(&sim.zones()[0].area), fresh);
}

#[test]
#[cfg_attr(miri, ignore = "safe code over a 32 MiB zone: minutes under Miri")]
fn a_list_over_its_high_mark_drains_its_oldest_blocks() {
    use crate::pcp::{pcp_batch, pcp_high_pages, pcp_order_slot};
    for order in [1u8, 3, 4, 8, PAGEBLOCK_ORDER] {
        let mut area = area(0, 8 << MAX_ORDER);
        let mut lists = PcpLists::new();
        let mut list = lists.list(pcp_order_slot(order).expect("a list"));
        assert_eq!(list.order(), order);
        let high_blocks = pcp_high_pages(order) >> order;
        let mut over = false;
        while !over {
            let index = area.allocate(order, MigrateType::Movable).expect("memory");
            area.frame(index)
                .make_head(FrameState::Cached, order, MigrateType::Movable as u8);
            over = list.push(area.pfn(index));
            assert_eq!(over, list.len() > high_blocks);
            assert_eq!(check(&area).cached, list.pages());
        }
        let stay: Vec<u64> = list.pfns()[pcp_batch(order)..].to_vec();
        list.drain_batch(&mut area);
        assert_eq!(
            list.pfns(),
            &stay[..],
            "order {order}: the warm blocks stay"
        );
        assert_eq!(check(&area).cached, list.pages());
        assert_eq!(list.drain_all(&mut area), (stay.len() as u64) << order);
        assert_eq!(area.free_pages, 8 << MAX_ORDER);
        assert_eq!(shape(&area), shape(&self::area(0, 8 << MAX_ORDER)));
    }
}

#[test]
#[cfg_attr(miri, ignore = "safe code over a 32 MiB zone: minutes under Miri")]
fn lists_of_one_block_a_batch_pass_blocks_through_to_the_zone() {
    use crate::pcp::{PCP_ORDERS, Pushed, pcp_high_pages, pcp_order_slot, pcp_passes_through};
    let mut lists = PcpLists::new();
    for order in PCP_ORDERS {
        let mut list = lists.list(pcp_order_slot(order).expect("a list"));
        assert_eq!(list.passes_through(), pcp_passes_through(order));
        assert_eq!(list.passes_through(), order > crate::pcp::PCP_COSTLY_ORDER);
        // Up to the high mark every block is kept; the next one is passed on (the list keeps
        // what it has) or asks for a drain.
        let high = pcp_high_pages(order) >> order;
        for block in 0..high as u64 {
            assert_eq!(list.push_or_pass(block), Pushed::Kept);
        }
        let over = if list.passes_through() {
            Pushed::PassOn
        } else {
            Pushed::OverHighMark
        };
        assert_eq!(list.push_or_pass(u64::MAX), over, "order {order}");
        let kept: Vec<u64> = (0..high as u64)
            .chain((over == Pushed::OverHighMark).then_some(u64::MAX))
            .collect();
        assert_eq!(list.pfns(), &kept[..], "order {order}");
    }
    for order in [4u8, 6, 8] {
        let mut sim = pcp_sim();
        let total = sim.free_pages();
        let high = pcp_high_pages(order) >> order;
        // From the empty list: from the zone (the list stays empty).
        let blocks: Vec<u64> = (0..=high)
            .map(|_| sim.alloc(order, MigrateType::Movable, 1).expect("memory"))
            .collect();
        assert_eq!(sim.cached_pages(), 0, "order {order}: nothing was refilled");
        // Freed: up to the high mark they wait in the list; the one over goes to the zone.
        for (freed, &pfn) in blocks.iter().enumerate() {
            sim.free(pfn, order).expect("free");
            let cached = (freed as u64 + 1).min(high as u64) << order;
            assert_eq!(sim.cached_pages(), cached, "order {order}, free {freed}");
            sim_check(&sim);
        }
        let last = sim.frame(blocks[high]).expect("frame");
        assert_ne!(
            last.state(),
            FrameState::Cached,
            "order {order}: passed through"
        );
        assert_eq!(sim.free_pages(), total);
        // Allocated again: the cached blocks first (warmest on top), then the zone's.
        for _ in 0..high {
            sim.alloc(order, MigrateType::Movable, 1).expect("memory");
        }
        assert_eq!(sim.cached_pages(), 0);
        sim_check(&sim);
    }
}

#[test]
fn the_lists_of_one_set_each_hold_their_high_mark_in_their_own_slots() {
    use crate::pcp::{PCP_ORDERS, PCP_SLOTS, pcp_high_pages};
    let mut lists = PcpLists::new();
    let high_blocks = |order: u8| pcp_high_pages(order) >> order;
    // Every list filled to its high mark, then one over (and that one taken back).
    for (slot, &order) in PCP_ORDERS.iter().enumerate() {
        let mut list = lists.list(slot);
        assert_eq!((list.order(), list.len()), (order, 0));
        for block in 0..high_blocks(order) {
            assert!(!list.push(((slot as u64) << 32) + block as u64));
        }
        assert!(list.push(u64::MAX), "order {order}: one over its high mark");
        assert_eq!(list.pop(), Some(u64::MAX));
    }
    // No list wrote into another's slots.
    for (slot, (order, pfns)) in lists.cached().enumerate() {
        assert_eq!(order, PCP_ORDERS[slot]);
        let expected: Vec<u64> = (0..high_blocks(order) as u64)
            .map(|block| ((slot as u64) << 32) + block)
            .collect();
        assert_eq!(pfns, &expected[..], "order {order}");
    }
    let pages: usize = PCP_ORDERS.iter().map(|&order| pcp_high_pages(order)).sum();
    assert_eq!(lists.pages(), pages as u64);
    assert_eq!(
        PCP_SLOTS,
        PCP_ORDERS.iter().map(|&order| high_blocks(order) + 1).sum()
    );
}

#[test]
#[cfg_attr(miri, ignore = "safe code over a 32 MiB zone: minutes under Miri")]
fn a_pageblock_free_that_completes_a_max_order_block_goes_to_the_zone() {
    let mut sim = pcp_sim();
    // Two buddies of the pageblock order: the first free is cached (its buddy is allocated),
    // the second one's buddy is then cached, not free: it is cached too and the older one
    // drains (the list holds one block). Freed alone, a block whose buddy is free merges.
    let low = sim
        .alloc(PAGEBLOCK_ORDER, MigrateType::Movable, 1)
        .expect("memory");
    let high = low ^ (1 << PAGEBLOCK_ORDER);
    let high_head = sim.frame(high).expect("frame");
    assert_eq!(high_head.state(), FrameState::Free, "its buddy stayed free");
    sim.free(low, PAGEBLOCK_ORDER).expect("free");
    assert_eq!(
        sim.cached_pages(),
        0,
        "it completed a max-order block: to the zone"
    );
    assert_eq!(sim.frame(low).expect("frame").state(), FrameState::Free);
    assert_eq!(sim.frame(low).expect("frame").order(), MAX_ORDER);
    // Both halves allocated, one freed: its buddy is allocated, so it is cached.
    let a = sim
        .alloc(PAGEBLOCK_ORDER, MigrateType::Movable, 1)
        .expect("memory");
    let b = sim
        .alloc(PAGEBLOCK_ORDER, MigrateType::Movable, 1)
        .expect("memory");
    assert_eq!(a ^ b, 1 << PAGEBLOCK_ORDER, "buddies");
    sim.free(a, PAGEBLOCK_ORDER).expect("free");
    assert_eq!(sim.cached_pages(), 1 << PAGEBLOCK_ORDER);
    sim_check(&sim);
    sim.free(b, PAGEBLOCK_ORDER).expect("free");
    // b's buddy is cached (not free), and the list is at its high mark (one block): it passes
    // b through to the zone and keeps a.
    assert_eq!(sim.cached_pages(), 1 << PAGEBLOCK_ORDER);
    sim_check(&sim);
    sim.drain();
    assert_eq!(sim.frame(a.min(b)).expect("frame").order(), MAX_ORDER);
    sim_check(&sim);
}

#[test]
#[cfg_attr(miri, ignore = "safe code over a 32 MiB zone: minutes under Miri")]
fn a_free_that_completes_a_pageblock_goes_to_the_zone() {
    let mut sim = pcp_sim();
    let order = PAGEBLOCK_ORDER - 1;
    // Cut from a larger free block: its buddy is free, so freeing it makes a whole 2 MiB block
    // (and more), which must not wait in a per-CPU list.
    let low = sim.alloc(order, MigrateType::Movable, 1).expect("memory");
    let buddy = low ^ (1 << order);
    assert_eq!(sim.frame(buddy).expect("frame").state(), FrameState::Free);
    sim.free(low, order).expect("free");
    assert_eq!(
        sim.cached_pages(),
        0,
        "it completed a pageblock: to the zone"
    );
    let merged = sim.frame(low.min(buddy)).expect("frame");
    assert_eq!(merged.state(), FrameState::Free);
    assert!(
        merged.order() >= PAGEBLOCK_ORDER,
        "merged to {}",
        merged.order()
    );
    sim_check(&sim);
    // Two buddies allocated, one freed: its buddy is allocated, so it is cached.
    let a = sim.alloc(order, MigrateType::Movable, 1).expect("memory");
    let b = sim.alloc(order, MigrateType::Movable, 1).expect("memory");
    assert_eq!(a ^ b, 1 << order, "buddies");
    sim.free(a, order).expect("free");
    assert_eq!(sim.cached_pages(), 1 << order);
    sim_check(&sim);
    sim.free(b, order).expect("free");
    sim.drain();
    assert!(sim.frame(a.min(b)).expect("frame").order() >= PAGEBLOCK_ORDER);
    sim_check(&sim);
}

#[test]
#[cfg_attr(miri, ignore = "safe code over a 32 MiB zone: minutes under Miri")]
fn an_allocation_that_finds_memory_only_in_cached_blocks_drains_them() {
    // One max-order block of memory: cache it as order-1 blocks (16 of them at most), then
    // take everything else, and ask for a block only the cached pieces can make.
    let mut sim = Sim::new(&[(0, 1 << MAX_ORDER)], &[], 0);
    let mut held = Vec::new();
    while let Some(pfn) = sim.alloc(1, MigrateType::Movable, 1) {
        held.push(pfn);
    }
    for &pfn in held.iter().take(16) {
        sim.free(pfn, 1).expect("free");
    }
    let cached = sim.cached_pages();
    assert!(cached > 0, "order-1 blocks are cached");
    assert_eq!(sim.zones()[0].area.free_pages, 32 - cached);
    // The first 16 order-1 blocks were one order-5 block: only a drain can give it.
    let pfn = sim
        .alloc(5, MigrateType::Movable, 1)
        .expect("drained and merged");
    assert_eq!(sim.cached_pages(), 0);
    sim_check(&sim);
    sim.free(pfn, 5).expect("free");
    for &pfn in &held[16..] {
        sim.free(pfn, 1).expect("free");
    }
    sim.drain();
    assert_eq!(sim.free_pages(), 1 << MAX_ORDER);
    assert_eq!(sim_check(&sim).free_blocks, 1);
}

#[test]
#[cfg_attr(miri, ignore = "safe code over a 32 MiB zone: minutes under Miri")]
fn a_reporting_drain_takes_the_pageblock_lists_and_leaves_the_small_orders() {
    let mut sim = pcp_sim();
    let big = sim
        .alloc(PAGEBLOCK_ORDER, MigrateType::Movable, 1)
        .expect("memory");
    let pin = sim
        .alloc(PAGEBLOCK_ORDER, MigrateType::Movable, 1)
        .expect("memory");
    let small = sim.alloc(2, MigrateType::Movable, 1).expect("memory");
    assert_eq!(
        big ^ pin,
        1 << PAGEBLOCK_ORDER,
        "buddies: the free of one is cached"
    );
    // The order-2 list's refill took a batch: some of it is cached already.
    let refilled = sim.cached_pages();
    sim.free(small, 2).expect("free");
    sim.free(big, PAGEBLOCK_ORDER).expect("free");
    let before = sim.cached_pages();
    assert_eq!(before, refilled + 4 + (1 << PAGEBLOCK_ORDER));
    assert_eq!(sim.drain_from(PAGEBLOCK_ORDER), 1 << PAGEBLOCK_ORDER);
    assert_eq!(sim.cached_pages(), refilled + 4);
    sim_check(&sim);
    sim.free(pin, PAGEBLOCK_ORDER).expect("free");
    sim.drain();
    assert_eq!(sim.free_pages(), 8 << MAX_ORDER);
}

#[test]
#[cfg_attr(miri, ignore = "safe code over a 32 MiB zone: minutes under Miri")]
fn the_checks_refuse_a_cached_block_of_the_wrong_order() {
    let mut sim = pcp_sim();
    let pfn = sim.alloc(2, MigrateType::Movable, 1).expect("memory");
    sim.free(pfn, 2).expect("free");
    sim_check(&sim);
    // Its record says order 1 while its list is of order 2: the stand-in's check sees it.
    let head = sim.frame(pfn).expect("frame");
    head.set_order(1);
    assert!(
        sim.check().is_err(),
        "a cached block's order differs from its list's"
    );
    head.set_order(2);
    sim_check(&sim);
    // An order with no per-CPU list (the largest) cannot be cached: the zone's check sees it.
    assert_eq!(crate::pcp::pcp_order_slot(MAX_ORDER), None);
    let other = sim
        .alloc(MAX_ORDER, MigrateType::Movable, 1)
        .expect("memory");
    let frame = sim.frame(other).expect("frame");
    frame.make_head(FrameState::Cached, MAX_ORDER, MigrateType::Movable as u8);
    assert!(sim.zones()[0].area.check().is_err());
    frame.make_head(FrameState::Allocated, MAX_ORDER, Owner::Kernel as u8);
    sim.free(other, MAX_ORDER).expect("free");
    sim.drain();
    assert_eq!(sim.free_pages(), 8 << MAX_ORDER);
}
