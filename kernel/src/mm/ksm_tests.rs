//! In-guest tests of KSM (`mm::ksm`): kernel-built address spaces with mergeable regions, the
//! scanner driven pass by pass (ksmd itself in the background test), counters checked exactly,
//! and the frame-state and reverse-map checkers after every phase.

use super::*;
use crate::mm::checker;
use crate::mm::space::{AddressSpace, RegionFlags, SharedSpace};
use crate::sync::IrqMutex;
use alloc::sync::Arc;

const START: u64 = 0x2000_0000_0000;

/// Runs `f` with the KSM tunables at the values given (ksmd stopped unless `run` says
/// otherwise), then restores them and waits for the scanner to be idle.
fn with_tunables<R>(run: u64, zero_pages: u64, cap: u64, f: impl FnOnce() -> R) -> R {
    let saved = [
        tunables::KSM_RUN.get(),
        tunables::KSM_USE_ZERO_PAGES.get(),
        tunables::KSM_MAX_PAGE_SHARING.get(),
    ];
    tunables::KSM_USE_ZERO_PAGES.set(zero_pages).expect("0..=1");
    tunables::KSM_MAX_PAGE_SHARING.set(cap).expect("in range");
    tunables::KSM_RUN.set(run).expect("0..=2");
    let result = f();
    tunables::KSM_RUN.set(saved[0]).expect("0..=2");
    tunables::KSM_USE_ZERO_PAGES.set(saved[1]).expect("0..=1");
    tunables::KSM_MAX_PAGE_SHARING
        .set(saved[2])
        .expect("in range");
    wait_idle();
    result
}

/// The pass in progress (left by an earlier test) is finished, so counts start clean.
fn finish_pass() {
    if CURSOR_SPACE.load(Relaxed) != 0 || CURSOR_ADDRESS.load(Relaxed) != 0 {
        scan_pages(u64::MAX, true, None);
    }
}

/// `count` spaces, each with a region of `pages` pages (mergeable or not) where page `i` holds
/// `content(space, i)` in its first word and `i` in its last (0 content: a zero-filled page).
fn spaces_with(
    count: usize,
    pages: u64,
    mergeable: bool,
    content: impl Fn(usize, u64) -> u64,
) -> Vec<SharedSpace> {
    let mut flags = RegionFlags::READ | RegionFlags::WRITE;
    if mergeable {
        flags |= RegionFlags::MERGEABLE;
    }
    (0..count)
        .map(|which| {
            let shared = AddressSpace::new().expect("a space");
            {
                let mut space = shared.lock();
                space
                    .map_anonymous(Some(START), pages * 4096, flags)
                    .expect("region");
                for page in 0..pages {
                    let value = content(which, page);
                    let at = START + page * 4096;
                    space.write_user(at, &value.to_le_bytes()).expect("write");
                    if value != 0 {
                        space
                            .write_user(at + 4088, &page.to_le_bytes())
                            .expect("write");
                    }
                }
            }
            shared
        })
        .collect()
}

fn read_word(shared: &SharedSpace, address: u64) -> u64 {
    let mut word = [0u8; 8];
    shared.lock().read_user(address, &mut word).expect("read");
    u64::from_le_bytes(word)
}

fn pfn_at(shared: &SharedSpace, address: u64) -> u64 {
    shared.lock().translate(address).expect("mapped").0
}

fn check_all(phase: &str) {
    wait_idle();
    if let Err(problem) = checker::check() {
        panic!("checker after {phase}: {problem}");
    }
    if let Err(problem) = space::check_reverse_map() {
        panic!("reverse map after {phase}: {problem}");
    }
}

fn assert_counts(phase: &str, shared: u64, sharing: u64) {
    let stats = stats();
    assert_eq!(
        (stats.pages_shared, stats.pages_sharing),
        (shared, sharing),
        "{phase}: {stats:?}"
    );
}

#[test_case]
fn ksm_identical_pages_across_spaces_merge_in_two_passes_with_exact_counters() {
    with_tunables(0, 0, 256, || {
        finish_pass();
        assert_counts("before", 0, 0);
        let pages = 64;
        let spaces = spaces_with(3, pages, true, |_, page| 0x5eed_0000 + page);
        check_all("filling");
        scan_full_passes(1);
        // The first pass only records checksums: every page is new, so volatile.
        assert_counts("one pass", 0, 0);
        assert!(stats().pages_volatile >= pages * 3, "{:?}", stats());
        scan_full_passes(1);
        assert_counts("two passes", pages, 2 * pages);
        for page in 0..pages {
            let at = START + page * 4096;
            let pfn = pfn_at(&spaces[0], at);
            assert!(spaces.iter().all(|space| pfn_at(space, at) == pfn));
            assert_eq!(rmap::map_count(pfn), 3);
            assert!(is_stable(pfn));
            for space in &spaces {
                assert_eq!(read_word(space, at), 0x5eed_0000 + page);
                assert_eq!(space.lock().translate(at).map(|(_, w)| w), Some(false));
            }
        }
        check_all("merging");
        // Another pass changes nothing.
        scan_full_passes(1);
        assert_counts("three passes", pages, 2 * pages);
        drop(spaces);
        assert_counts("teardown", 0, 0);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_a_write_to_a_merged_page_gets_a_private_copy_even_by_the_last_mapper() {
    with_tunables(0, 0, 256, || {
        finish_pass();
        let pages = 16;
        let spaces = spaces_with(2, pages, true, |_, page| 0xc0_0000 + page);
        scan_full_passes(2);
        assert_counts("merged", pages, pages);
        let at = START + 3 * 4096;
        let shared_pfn = pfn_at(&spaces[0], at);
        let cow_before = stats().cow_ksm;
        spaces[0]
            .lock()
            .write_user(at + 8, &0xdead_beefu64.to_le_bytes())
            .expect("write");
        let copy = pfn_at(&spaces[0], at);
        assert_ne!(copy, shared_pfn, "the writer got its own page");
        assert_eq!(
            read_word(&spaces[0], at),
            0xc0_0003,
            "the copy kept the data"
        );
        assert_eq!(read_word(&spaces[0], at + 8), 0xdead_beef);
        assert_eq!(
            read_word(&spaces[1], at + 8),
            0,
            "the other mapper sees nothing"
        );
        assert_eq!(pfn_at(&spaces[1], at), shared_pfn);
        assert_eq!(stats().cow_ksm, cow_before + 1);
        assert_counts("one copied", pages, pages - 1);
        check_all("the first copy");
        // The last mapper of the KSM page is not given it back: it gets a copy too, and the
        // KSM page goes back to the allocator and out of the stable tree.
        spaces[1]
            .lock()
            .write_user(at + 16, &7u64.to_le_bytes())
            .expect("write");
        assert_ne!(pfn_at(&spaces[1], at), shared_pfn);
        assert_eq!(read_word(&spaces[1], at), 0xc0_0003);
        assert_eq!(read_word(&spaces[1], at + 16), 7);
        assert_eq!(stats().cow_ksm, cow_before + 2);
        assert!(!is_stable(shared_pfn));
        assert_counts("both copied", pages - 1, pages - 1);
        check_all("the last copy");
        // The changed pages differ now: further passes do not merge them back.
        scan_full_passes(2);
        assert_counts("after rescans", pages - 1, pages - 1);
        drop(spaces);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_unmerge_gives_private_copies_and_other_pages_never_merge() {
    with_tunables(0, 0, 256, || {
        finish_pass();
        let pages = 32;
        let mut spaces = spaces_with(2, pages, true, |_, page| 0xab_0000 + page);
        // Same content, but not mergeable: never touched by KSM.
        let outsider = spaces_with(1, pages, false, |_, page| 0xab_0000 + page);
        scan_full_passes(2);
        assert_counts("merged", pages, pages);
        for page in 0..pages {
            let pfn = pfn_at(&outsider[0], START + page * 4096);
            assert_eq!(
                rmap::map_count(pfn),
                1,
                "a page outside mergeable regions merged"
            );
        }
        let half = pages / 2 * 4096;
        spaces[0]
            .lock()
            .advise_mergeable(START, half, false)
            .expect("unmerge");
        assert_counts("half unmerged", pages, pages / 2);
        for page in 0..pages {
            let at = START + page * 4096;
            let pfn = pfn_at(&spaces[0], at);
            let expected = if page < pages / 2 { 1 } else { 2 };
            assert_eq!(rmap::map_count(pfn), expected, "page {page}");
            assert_eq!(read_word(&spaces[0], at), 0xab_0000 + page);
        }
        assert!(
            !spaces[0]
                .lock()
                .region_at(START)
                .expect("region")
                .flags
                .contains(RegionFlags::MERGEABLE)
        );
        check_all("unmerge");
        scan_full_passes(2);
        assert_counts("rescanned", pages, pages / 2);
        // Unmerge after half the range was unmapped.
        spaces[1].lock().unmap(START, half).expect("unmap");
        assert_counts("half unmapped", pages / 2, pages / 2);
        spaces[1]
            .lock()
            .advise_mergeable(START + half, half, false)
            .expect("unmerge the rest");
        // Space 0 still maps the second half's KSM pages, once each.
        assert_counts("space 1 unmerged", pages / 2, 0);
        spaces[0]
            .lock()
            .advise_mergeable(START + half, half, false)
            .expect("unmerge space 0's rest");
        assert_counts("all unmerged", 0, 0);
        check_all("unmerge after unmap");
        spaces.clear();
        drop(outsider);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_unmap_clone_and_teardown_of_merged_pages_keep_every_count() {
    with_tunables(0, 0, 256, || {
        finish_pass();
        let pages = 32;
        let mut spaces = spaces_with(3, pages, true, |_, page| 0x7a_0000 + page);
        scan_full_passes(2);
        assert_counts("merged", pages, 2 * pages);
        // munmap of half of one space's range.
        spaces[2]
            .lock()
            .unmap(START, pages / 2 * 4096)
            .expect("unmap");
        assert_counts("unmapped", pages, 2 * pages - pages / 2);
        check_all("unmap");
        // A clone shares the KSM pages; its write copies.
        let child = spaces[0].lock().fork().expect("clone");
        assert_counts("cloned", pages, 3 * pages - pages / 2);
        let at = START + 5 * 4096;
        child
            .lock()
            .write_user(at, &1u64.to_le_bytes())
            .expect("write");
        assert_eq!(read_word(&spaces[0], at), 0x7a_0005);
        assert_eq!(read_word(&child, at), 1);
        check_all("clone");
        // Exit of the spaces holding shared pages, one by one.
        drop(child);
        spaces.remove(0);
        check_all("first exit");
        assert_counts("first exit", pages, pages / 2);
        spaces.clear();
        assert_counts("all exited", 0, 0);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_zero_pages_map_the_zero_page_only_with_use_zero_pages() {
    let pages = 8;
    with_tunables(0, 0, 256, || {
        finish_pass();
        let spaces = spaces_with(2, pages, true, |_, _| 0);
        scan_full_passes(2);
        // Without the zero page: one KSM page holds all sixteen.
        assert_counts("use_zero_pages=0", 1, 2 * pages - 1);
        assert_eq!(stats().ksm_zero_pages, 0);
        drop(spaces);
        check_all("teardown");
    });
    with_tunables(0, 1, 256, || {
        finish_pass();
        let spaces = spaces_with(2, pages, true, |_, _| 0);
        scan_full_passes(2);
        assert_counts("use_zero_pages=1", 0, 0);
        assert_eq!(stats().ksm_zero_pages, 2 * pages);
        let at = START + 4096;
        assert!(is_zero_page(pfn_at(&spaces[0], at)));
        check_all("zero pages");
        spaces[0]
            .lock()
            .write_user(at + 64, &9u64.to_le_bytes())
            .expect("write");
        assert!(!is_zero_page(pfn_at(&spaces[0], at)));
        assert_eq!(read_word(&spaces[0], at + 64), 9);
        assert_eq!(read_word(&spaces[0], at), 0);
        assert_eq!(read_word(&spaces[1], at + 64), 0);
        assert_eq!(stats().ksm_zero_pages, 2 * pages - 1);
        drop(spaces);
        assert_eq!(stats().ksm_zero_pages, 0);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_sharing_cap_makes_more_copies_beyond_max_page_sharing() {
    with_tunables(0, 0, 4, || {
        finish_pass();
        // Ten identical pages in one space: 4 + 4 + 2 mappings (Linux's ksm_tests -M shape).
        let spaces = spaces_with(1, 10, true, |_, _| 0x1234_5678);
        // The last word holds the page index: make them identical.
        for page in 0..10 {
            spaces[0]
                .lock()
                .write_user(START + page * 4096 + 4088, &0u64.to_le_bytes())
                .expect("write");
        }
        scan_full_passes(2);
        assert_counts("capped", 3, 7);
        let stats = stats();
        assert_eq!((stats.stable_node_chains, stats.stable_node_dups), (1, 2));
        assert!(stats.sharing_cap_hits > 0);
        check_all("cap");
        drop(spaces);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_racing_writes_while_merging_are_never_lost() {
    with_tunables(0, 0, 256, || {
        finish_pass();
        let pages = 64u64;
        // Both spaces start identical; the writer flips space 0's pages between that content
        // and another, so merges keep happening while it writes.
        let spaces = spaces_with(2, pages, true, |_, page| 0x7000 + page);
        let writer_space = spaces[0].clone();
        let stop = Arc::new(AtomicBool::new(false));
        let writer_stop = stop.clone();
        let writer = task::spawn("ksm-writer", move || {
            let mut model: Vec<u64> = (0..pages).map(|page| 0x7000 + page).collect();
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut writes = 0u64;
            while !writer_stop.load(Relaxed) || writes < 2000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let page = seed % pages;
                let value = if seed & 0x100 == 0 {
                    0x7000 + page
                } else {
                    0xf000_0000 + writes
                };
                writer_space
                    .lock()
                    .write_user(START + page * 4096, &value.to_le_bytes())
                    .expect("write");
                model[page as usize] = value;
                writes += 1;
                if writes.is_multiple_of(16) {
                    task::yield_now();
                }
            }
            model
        })
        .expect("writer starts");
        let merges_before = stats().merges;
        let mut scanned = 0;
        for _ in 0..40 {
            scanned += scan_pages(48, false, None).pages;
            task::yield_now();
        }
        stop.store(true, Relaxed);
        let model = writer.join();
        assert!(scanned > 0);
        let merges = stats().merges - merges_before;
        assert!(
            merges > 0,
            "no merge happened during the writes: {:?}",
            stats()
        );
        for page in 0..pages {
            let at = START + page * 4096;
            assert_eq!(
                read_word(&spaces[0], at),
                model[page as usize],
                "page {page}"
            );
            assert_eq!(
                read_word(&spaces[1], at),
                0x7000 + page,
                "page {page} of the other"
            );
        }
        check_all("racing writes");
        drop(spaces);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_ksmd_merges_in_the_background_and_run_2_unmerges_everything() {
    let pages = 256;
    let spaces = spaces_with(2, pages, true, |_, page| 0xbeef_0000 + page);
    finish_pass();
    let sleep = tunables::KSM_SLEEP_MILLISECS.get();
    tunables::KSM_SLEEP_MILLISECS.set(5).expect("in range");
    with_tunables(1, 0, 256, || {
        let begun = Instant::now();
        while stats().pages_sharing < pages && begun.elapsed() < Duration::from_secs(20) {
            task::sleep(Duration::from_millis(10));
        }
        assert_counts("ksmd merged", pages, pages);
        tunables::KSM_RUN.set(0).expect("0");
        check_all("ksmd stopped");
        let scans = stats().full_scans;
        task::sleep(Duration::from_millis(50));
        assert_eq!(stats().full_scans, scans, "run=0 stops the scanner");
        tunables::KSM_RUN.set(2).expect("2");
        let begun = Instant::now();
        while stats().pages_shared > 0 && begun.elapsed() < Duration::from_secs(10) {
            task::sleep(Duration::from_millis(10));
        }
        assert_counts("run=2", 0, 0);
        for page in 0..pages {
            let at = START + page * 4096;
            assert_eq!(read_word(&spaces[1], at), 0xbeef_0000 + page);
        }
    });
    tunables::KSM_SLEEP_MILLISECS.set(sleep).expect("in range");
    check_all("run=2");
    drop(spaces);
    check_all("teardown");
}

#[test_case]
fn ksm_a_write_between_the_scan_and_the_merge_is_never_lost() {
    with_tunables(0, 0, 256, || {
        finish_pass();
        let pages = 16u64;
        let spaces = spaces_with(2, pages, true, |_, page| 0x3300 + page);
        let victim = spaces[0].lock().id();
        let written = Arc::new(IrqMutex::new(Vec::new()));
        let log = written.clone();
        // The "task" of space 0 writes each page once, right after the scanner found it equal
        // to its twin and before the merge locks the spaces.
        set_race_hook(Some(alloc::boxed::Box::new(move |pfn| {
            for mapping in rmap::mappings(pfn) {
                if mapping.space != victim || log.lock().contains(&mapping.address) {
                    continue;
                }
                if let Some(shared) = space::find_space(mapping.space) {
                    shared
                        .lock()
                        .write_user(mapping.address + 16, &0x77u64.to_le_bytes())
                        .expect("write");
                    log.lock().push(mapping.address);
                }
            }
        })));
        let differs = stats().merge_differs;
        scan_full_passes(3);
        set_race_hook(None);
        let written = written.lock().clone();
        assert!(!written.is_empty(), "the hook never ran: {:?}", stats());
        for address in written {
            assert_eq!(
                read_word(&spaces[0], address + 16),
                0x77,
                "a racing write was lost"
            );
            assert_eq!(
                read_word(&spaces[1], address + 16),
                0,
                "it leaked to the other space"
            );
            assert_ne!(pfn_at(&spaces[0], address), pfn_at(&spaces[1], address));
        }
        assert!(stats().merge_differs > differs, "{:?}", stats());
        check_all("racing writes");
        drop(spaces);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_unmerge_without_memory_fails_cleanly_and_the_range_stays_mergeable() {
    with_tunables(0, 0, 256, || {
        finish_pass();
        let pages = 64u64;
        let spaces = spaces_with(2, pages, true, |_, page| 0x0e_0000 + page);
        scan_full_passes(2);
        assert_counts("merged", pages, pages);
        // Take every free page.
        let held = crate::testing::take_free_memory(65_536);
        let result = spaces[0]
            .lock()
            .advise_mergeable(START, pages * 4096, false);
        for block in held {
            page_alloc::free(block).expect("freed");
        }
        assert_eq!(result, Err(space::SpaceError::OutOfMemory));
        assert!(
            spaces[0]
                .lock()
                .region_at(START)
                .expect("region")
                .flags
                .contains(RegionFlags::MERGEABLE),
            "a failed unmerge leaves the range mergeable"
        );
        for page in 0..pages {
            let at = START + page * 4096;
            assert_eq!(read_word(&spaces[0], at), 0x0e_0000 + page, "page {page}");
        }
        check_all("failed unmerge");
        // With memory back, the same call works.
        spaces[0]
            .lock()
            .advise_mergeable(START, pages * 4096, false)
            .expect("unmerge");
        assert_counts("unmerged", pages, 0);
        check_all("unmerge");
        drop(spaces);
        check_all("teardown");
    });
    // All of memory was freed at once: let free page reporting finish with it, so that the
    // tests after this one (some count timer interrupts) do not share the CPU with it.
    let begun = Instant::now();
    while !crate::mm::reporting::is_idle() && begun.elapsed() < Duration::from_secs(10) {
        task::sleep(Duration::from_millis(5));
    }
}

#[test_case]
fn ksm_ksmd_takes_no_timer_when_nothing_is_mergeable_or_run_is_0() {
    let sleep = tunables::KSM_SLEEP_MILLISECS.get();
    tunables::KSM_SLEEP_MILLISECS.set(5).expect("in range");
    // The fewest timer interrupts in three windows: other background work (a compaction
    // task's one look a second after a wake) may take a tick in one window, ksmd's timer would
    // take them in every one.
    let interrupts_while_idle = |ms: u64| {
        (0..3)
            .map(|_| {
                let before = task::scheduler::stats().timer_interrupts;
                task::sleep(Duration::from_millis(ms));
                task::scheduler::stats().timer_interrupts - before
            })
            .min()
            .unwrap_or(u64::MAX)
    };
    // Running, but no mergeable region anywhere: after one pass ksmd waits without a timer.
    with_tunables(1, 0, 256, || {
        task::sleep(Duration::from_millis(50));
        let idle = interrupts_while_idle(200);
        assert!(idle <= 2, "{idle} timer interrupts with nothing mergeable");
        // The control: a mergeable region makes it wake every 5 ms.
        let spaces = spaces_with(1, 4, true, |_, page| page + 1);
        let busy = interrupts_while_idle(200);
        assert!(
            busy >= 10,
            "only {busy} timer interrupts with ksmd scanning"
        );
        tunables::KSM_RUN.set(0).expect("0");
        wait_idle();
        task::sleep(Duration::from_millis(20));
        let stopped = interrupts_while_idle(200);
        assert!(stopped <= 2, "{stopped} timer interrupts with ksm.run=0");
        drop(spaces);
    });
    tunables::KSM_SLEEP_MILLISECS.set(sleep).expect("in range");
    check_all("idle");
}

#[test_case]
fn ksm_compaction_moves_shared_pages_and_the_stable_tree_follows() {
    use crate::mm::compaction;
    let pages = 4096u64;
    let proactiveness = tunables::COMPACTION_PROACTIVENESS.get();
    tunables::COMPACTION_PROACTIVENESS.set(0).expect("in range");
    with_tunables(0, 0, 256, || {
        finish_pass();
        // Four spaces fault their pages in turn (consecutive frames in different spaces), all
        // with the same content: merging frees three of every four frames, so every 2 MiB block
        // keeps a quarter of its pages, all KSM pages.
        let flags = RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MERGEABLE;
        let spaces: Vec<SharedSpace> = (0..4)
            .map(|_| AddressSpace::new().expect("space"))
            .collect();
        for space in &spaces {
            space
                .lock()
                .map_anonymous(Some(START), pages * 4096, flags)
                .expect("region");
        }
        for page in 0..pages {
            for space in &spaces {
                space
                    .lock()
                    .write_user(START + page * 4096, &(page | 1 << 40).to_le_bytes())
                    .expect("write");
            }
        }
        scan_full_passes(2);
        assert_counts("merged", pages, 3 * pages);
        let before: Vec<u64> = (0..pages)
            .map(|page| pfn_at(&spaces[0], START + page * 4096))
            .collect();
        page_alloc::drain_per_cpu_caches();
        let moved_before = compaction::stats().pgmigrate_success;
        let report = compaction::compact_all();
        let moved = compaction::stats().pgmigrate_success - moved_before;
        let after: Vec<u64> = (0..pages)
            .map(|page| pfn_at(&spaces[0], START + page * 4096))
            .collect();
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count() as u64;
        assert!(
            changed > pages / 4,
            "only {changed} KSM pages moved ({moved} moves; {report:?})"
        );
        assert!(
            report.huge_blocks_after > report.huge_blocks_before,
            "{report:?}"
        );
        // Counts and the tree followed; every space still shares one frame per page.
        assert_counts("compacted", pages, 3 * pages);
        for page in 0..pages {
            let at = START + page * 4096;
            let pfn = pfn_at(&spaces[0], at);
            assert!(
                is_stable(pfn),
                "page {page}: the stable tree did not follow"
            );
            assert!(spaces.iter().all(|space| pfn_at(space, at) == pfn));
            assert_eq!(read_word(&spaces[3], at), page | 1 << 40);
        }
        check_all("compaction");
        // A moved KSM page still copies on write, and merging into it still works.
        spaces[1]
            .lock()
            .write_user(START + 8, &5u64.to_le_bytes())
            .expect("write");
        assert_eq!(read_word(&spaces[2], START + 8), 0);
        drop(spaces);
        check_all("teardown");
    });
    tunables::COMPACTION_PROACTIVENESS
        .set(proactiveness)
        .expect("in range");
}

#[test_case]
fn ksm_console_command_prints_the_state_and_counters() {
    let (out, _) = crate::console::execute("ksm");
    for word in [
        "run 0",
        "pages_shared",
        "pages_sharing",
        "pages_unshared",
        "pages_volatile",
        "full_scans",
        "ksm_zero_pages",
        "general_profit",
        "stable_node_chains",
        "stable_node_dups",
        "cow_ksm",
    ] {
        assert!(out.contains(word), "no {word} in:\n{out}");
    }
    let (out, _) = crate::console::execute("set ksm.pages_to_scan=123");
    assert!(out.contains("ksm.pages_to_scan = 123"), "{out}");
    assert!(
        crate::console::execute("ksm")
            .0
            .contains("pages_to_scan 123")
    );
    tunables::KSM_PAGES_TO_SCAN
        .set(tunables::KSM_DEFAULT_PAGES_TO_SCAN)
        .expect("in range");
}

#[test_case]
fn ksm_whole_space_opt_in_covers_every_region_and_a_clone_inherits_it() {
    with_tunables(0, 0, 256, || {
        finish_pass();
        let pages = 16u64;
        let flags = RegionFlags::READ | RegionFlags::WRITE;
        let spaces: Vec<SharedSpace> = (0..2)
            .map(|_| AddressSpace::new().expect("space"))
            .collect();
        for (which, shared) in spaces.iter().enumerate() {
            let mut space = shared.lock();
            // Space 0: a region mapped before the opt-in; space 1: after it.
            if which == 1 {
                space.set_merge_any(true).expect("opt in");
            }
            space
                .map_anonymous(Some(START), pages * 4096, flags)
                .expect("region");
            if which == 0 {
                space.set_merge_any(true).expect("opt in");
            }
            assert!(space.merge_any());
            assert!(
                space
                    .region_at(START)
                    .expect("region")
                    .flags
                    .contains(RegionFlags::MERGEABLE)
            );
            for page in 0..pages {
                space
                    .write_user(START + page * 4096, &(page + 0x900).to_le_bytes())
                    .expect("write");
            }
        }
        scan_full_passes(2);
        assert_counts("merged", pages, pages);
        let child = spaces[0].lock().fork().expect("clone");
        assert!(child.lock().merge_any(), "a clone inherits the opt-in");
        child
            .lock()
            .map_anonymous(Some(START + 0x100_0000), 4096, flags)
            .expect("region");
        assert!(
            child
                .lock()
                .region_at(START + 0x100_0000)
                .expect("region")
                .flags
                .contains(RegionFlags::MERGEABLE)
        );
        drop(child);
        // Off unmerges everything of the space.
        spaces[0].lock().set_merge_any(false).expect("opt out");
        assert!(!spaces[0].lock().merge_any());
        assert_counts("opted out", pages, 0);
        for page in 0..pages {
            let at = START + page * 4096;
            assert_eq!(rmap::map_count(pfn_at(&spaces[0], at)), 1);
            assert_eq!(read_word(&spaces[0], at), page + 0x900);
        }
        check_all("opt-out");
        drop(spaces);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_pages_of_other_merge_domains_never_merge() {
    with_tunables(0, 0, 256, || {
        finish_pass();
        let pages = 16u64;
        let spaces = spaces_with(4, pages, true, |_, page| 0xd0_0000 + page);
        // Spaces 0 and 1 in the default domain, 2 and 3 in domain 7.
        for space in &spaces[2..] {
            space.lock().set_merge_domain(7).expect("domain");
        }
        scan_full_passes(2);
        // One KSM page per content and domain: two per page, each mapped twice.
        assert_counts("two domains", 2 * pages, 2 * pages);
        for page in 0..pages {
            let at = START + page * 4096;
            let (a, b) = (pfn_at(&spaces[0], at), pfn_at(&spaces[2], at));
            assert_ne!(a, b, "page {page} merged across domains");
            assert_eq!(pfn_at(&spaces[1], at), a);
            assert_eq!(pfn_at(&spaces[3], at), b);
        }
        check_all("domains");
        // A clone stays in its parent's domain.
        let child = spaces[2].lock().fork().expect("clone");
        assert_eq!(child.lock().merge_domain(), 7);
        drop(child);
        // Moving a space to another domain unmerges it first.
        spaces[3].lock().set_merge_domain(0).expect("domain");
        assert_counts("moved", 2 * pages, pages);
        scan_full_passes(2);
        assert_counts("rescanned", 2 * pages, 2 * pages);
        assert_eq!(pfn_at(&spaces[3], START), pfn_at(&spaces[0], START));
        check_all("moved");
        drop(spaces);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_benchmark_runs_small_and_leaves_memory_consistent() {
    // bench=ksm at 1 MiB per space, so that it cannot silently break.
    let run = tunables::KSM_RUN.get();
    bench::run(256);
    assert_eq!(
        tunables::KSM_RUN.get(),
        run,
        "the benchmark restores ksm.run"
    );
    check_all("bench=ksm");
    assert_counts("after the benchmark", 0, 0);
}

#[test_case]
fn ksm_per_task_counters_match_linux_ksm_stat_exactly() {
    let pages = 16u64;
    let zeros = 4u64;
    with_tunables(0, 1, 256, || {
        finish_pass();
        // Pages 0..16: the same in both spaces; pages 16..20: zero-filled.
        let spaces = spaces_with(2, pages + zeros, true, |_, page| {
            if page < pages { 0xc0de_0000 + page } else { 0 }
        });
        // A region outside KSM's reach: never tracked, never merged.
        spaces[0]
            .lock()
            .map_anonymous(
                Some(START + 0x1000_0000),
                8 * 4096,
                RegionFlags::READ | RegionFlags::WRITE,
            )
            .expect("region");
        for page in 0..8 {
            spaces[0]
                .lock()
                .write_user(
                    START + 0x1000_0000 + page * 4096,
                    &(0xc0de_0000 + page).to_le_bytes(),
                )
                .expect("write");
        }
        let expect = |space: &SharedSpace, items: u64, merging: u64, zero: u64, phase: &str| {
            let stats = space_stats(space);
            let profit = ((merging + zero) * 4096) as i64 - (items * RMAP_ITEM_BYTES) as i64;
            assert_eq!(
                stats,
                SpaceStats {
                    ksm_rmap_items: items,
                    ksm_merging_pages: merging,
                    ksm_zero_pages: zero,
                    ksm_process_profit: profit,
                },
                "{phase}"
            );
        };
        // Nothing looked at yet: nothing tracked (Linux makes its rmap_items as ksmd goes).
        expect(&spaces[0], 0, 0, 0, "filled");
        scan_full_passes(1);
        expect(&spaces[0], pages + zeros, 0, 0, "one pass");
        scan_full_passes(1);
        assert_counts("merged", pages, pages);
        for space in &spaces {
            expect(space, pages + zeros, pages, zeros, "merged");
        }
        // A clone maps the same KSM pages, but its own counters start at 0 (Linux's
        // test_fork_ksm_merging_page_count), and count them once ksmd has looked.
        let child = spaces[0].lock().fork().expect("a clone");
        expect(&child, 0, 0, 0, "clone");
        scan_full_passes(1);
        expect(&child, pages + zeros, pages, zeros, "clone after a pass");
        expect(
            &spaces[0],
            pages + zeros,
            pages,
            zeros,
            "parent after the clone",
        );
        drop(child);
        assert_eq!(RMAP_ITEM_BYTES, 16);
        // A write gets a private copy: one page fewer merged for that task only.
        spaces[1]
            .lock()
            .write_user(START + 3 * 4096 + 8, &1u64.to_le_bytes())
            .expect("write");
        spaces[1]
            .lock()
            .write_user(START + (pages + 1) * 4096, &1u64.to_le_bytes())
            .expect("write");
        expect(
            &spaces[0],
            pages + zeros,
            pages,
            zeros,
            "after the other's writes",
        );
        expect(
            &spaces[1],
            pages + zeros,
            pages - 1,
            zeros - 1,
            "after its writes",
        );
        // The console prints the same figures.
        let mut report = String::new();
        write_task_report(
            &mut report,
            [(7u64, String::from("twin"), spaces[1].clone())].into_iter(),
        )
        .expect("format");
        let profit = ((pages - 1 + zeros - 1) * 4096) as i64 - ((pages + zeros) * 16) as i64;
        assert_eq!(
            report,
            alloc::format!(
                "task 7 twin: ksm_rmap_items {} ksm_merging_pages {} ksm_zero_pages {} ksm_process_profit {profit}\n",
                pages + zeros,
                pages - 1,
                zeros - 1
            )
        );
        // Unmerging the range: nothing tracked, nothing merged.
        spaces[0]
            .lock()
            .advise_mergeable(START, (pages + zeros) * 4096, false)
            .expect("unmerge");
        expect(&spaces[0], 0, 0, 0, "unmerged");
        check_all("per-task counters");
        drop(spaces);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_a_page_moved_between_passes_keeps_its_checksum_and_merges_in_two() {
    use crate::mm::migrate;
    let pages = 32u64;
    with_tunables(0, 0, 256, || {
        finish_pass();
        let spaces = spaces_with(2, pages, true, |_, page| 0x0de5_0000 + page);
        scan_full_passes(1);
        assert_counts("one pass", 0, 0);
        // Compaction moves every page of the second space between the passes.
        for page in 0..pages {
            let at = START + page * 4096;
            let pfn = pfn_at(&spaces[1], at);
            assert!(migrate::isolate_user_page(pfn));
            let target = page_alloc::alloc(AllocRequest::new(0)).expect("a target page");
            migrate::migrate_user_page(pfn, target).expect("moved");
            migrate::release_user_page(pfn);
            assert_ne!(pfn_at(&spaces[1], at), pfn);
        }
        check_all("moved");
        // The checksum came along: nothing looks changed, everything merges in the second pass.
        scan_full_passes(1);
        assert_counts("two passes", pages, pages);
        assert_eq!(stats().pages_volatile, 0, "{:?}", stats());
        drop(spaces);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_asks_compaction_to_consolidate_once_its_pass_ends() {
    let pages = 16u64;
    with_tunables(0, 0, 256, || {
        finish_pass();
        let spaces = spaces_with(2, pages, true, |_, page| 0xc0a1_0000 + page);
        scan_full_passes(1);
        assert!(!consolidation_pending());
        // Stop in the middle of the second pass, after the merges: compaction is owed a look.
        scan_pages(2 * pages, false, None);
        assert_counts("merged", pages, pages);
        assert!(
            consolidation_pending(),
            "merged {pages} pages and owes no consolidation"
        );
        // Merging has paused for a second: kcompactd answers frees again, still owed a look.
        crate::task::sleep(MERGING_FOR + Duration::from_millis(50));
        assert!(
            !consolidation_pending(),
            "a second without a merge, still merging"
        );
        assert!(counter::pass_merges.load(Relaxed) > 0);
        scan_pages(u64::MAX, true, None);
        assert_eq!(
            counter::pass_merges.load(Relaxed),
            0,
            "the pass ended and still owes it"
        );
        drop(spaces);
        check_all("teardown");
    });
}

#[test_case]
fn ksm_smart_scan_skips_pages_that_never_merge_and_still_merges_them_when_they_do() {
    let pages = 16u64;
    // Looks at a page of `age` happen in passes divisible by this (Linux: 1, 2, 4, 8 skips).
    let every = |age: u64| match age {
        0..=2 => 1,
        3 => 2,
        4..=5 => 3,
        6..=8 => 5,
        _ => 9,
    };
    with_tunables(0, 0, 256, || {
        assert_eq!(tunables::KSM_SMART_SCAN.get(), 1, "on by default");
        finish_pass();
        let spaces = spaces_with(1, pages, true, |_, page| 0x5a11_0000 + page);
        // All pages are alike (filled together, never changed): each pass skips all or none.
        // The first look only records the checksum (age 0); each later look adds one.
        let mut looked = false;
        let mut age = 0u64;
        let mut skipped = 0;
        let before = stats().pages_skipped;
        for _ in 0..30 {
            let pass = stats().full_scans;
            if looked && !pass.is_multiple_of(every(age)) {
                skipped += pages;
            } else if looked {
                age = (age + 1).min(15);
            } else {
                looked = true;
            }
            scan_full_passes(1);
            assert_eq!(
                stats().pages_skipped - before,
                skipped,
                "pass {pass}, age {age}"
            );
        }
        assert!(skipped >= 15 * pages, "only {skipped} looks skipped");
        // Page 1 becomes page 0's twin: it merges once smart scan looks at both in one pass (a
        // change makes page 1 young again; old page 0 is looked at every 9th pass), so within
        // two skip intervals. (Linux's skipped items leave the unstable tree too.)
        spaces[0]
            .lock()
            .write_user(START + 4096, &0x5a11_0000u64.to_le_bytes())
            .expect("write");
        spaces[0]
            .lock()
            .write_user(START + 4096 + 4088, &0u64.to_le_bytes())
            .expect("write");
        let mut passes = 0;
        while stats().pages_sharing == 0 {
            assert!(passes < 2 * 9 + 2, "not merged after {passes} passes");
            scan_full_passes(1);
            passes += 1;
        }
        assert_counts("twins", 1, 1);
        check_all("smart scan");
        // Off: nothing is skipped.
        tunables::KSM_SMART_SCAN.set(0).expect("0..=1");
        let skipped_before = stats().pages_skipped;
        scan_full_passes(3);
        tunables::KSM_SMART_SCAN.set(1).expect("0..=1");
        assert_eq!(stats().pages_skipped, skipped_before);
        drop(spaces);
        check_all("teardown");
    });
}
