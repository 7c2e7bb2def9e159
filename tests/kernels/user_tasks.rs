//! Ring-3 tasks and their address spaces: programs that run in ring 3 and exit with a status,
//! isolation (tasks that touch what they may not are killed, the kernel and other tasks go on,
//! fresh pages never show old data), copy-on-write after clone with exact reference counts and
//! reverse map, madvise, bad system calls, preemption of ring 3, teardown without leaks, and
//! hostile tasks: RFLAGS they set, clone bombs (task limit, memory), kills (spinning, sleeping,
//! waiting; the console's kill and Ctrl-C), the OOM killer, `wait` statuses, capabilities.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use core::time::Duration;
use kernel::mm::frame::Owner;
use kernel::mm::space::{AddressSpace, LIVE_SPACES, RegionFlags};
use kernel::mm::{PAGE_SIZE, checker, page_alloc, rmap};
use kernel::time::Instant;
use kernel::user::{self, CODE_BASE, Capabilities, STACK_TOP, TaskExit, TaskReport, programs};
use kernel::{BootInfo, ExitCode, task};

kernel::entry_point!(main);

fn main(_info: &'static BootInfo) -> ExitCode {
    test_main();
    ExitCode::Success
}

/// Runs `program` with `argument` to its end (at most 60 s).
fn run(program: programs::Program, argument: u64) -> TaskReport {
    run_with(program, argument, Capabilities::empty())
}

/// [`run`] with capabilities.
fn run_with(program: programs::Program, argument: u64, caps: Capabilities) -> TaskReport {
    let handle = user::spawn_with(program.name, &program, argument, caps).expect("task starts");
    match handle.join_timeout(Duration::from_secs(60)) {
        Ok(report) => report,
        Err(_) => panic!("task '{}' did not end within 60 s", program.name),
    }
}

fn assert_killed(report: &TaskReport, reason_contains: &str) {
    match &report.exit {
        TaskExit::Killed(reason) => assert!(
            reason.contains(reason_contains),
            "killed for '{reason}', expected '{reason_contains}'"
        ),
        other => panic!("expected a kill ({reason_contains}), got {other:?}"),
    }
}

/// The frame-state checker, which also proves the reverse map and reference counts exact.
fn check_memory() {
    if let Err(problem) = checker::check() {
        panic!("memory check: {problem}");
    }
}

/// Kernel data a task tries to read and to overwrite (writable: a write that got through
/// would change it).
static KERNEL_SECRET: AtomicU64 = AtomicU64::new(0x5ec2_e75e_c2e7_5ec2);

#[test_case]
fn ring3_task_writes_and_reads_its_memory_and_exits_with_its_status() {
    let before = user::stats();
    let report = run(programs::memory_walk(), 16);
    assert_eq!(report.exit, TaskExit::Exited(16));
    // 16 data pages faulted in on demand, plus the code page loaded at spawn.
    assert_eq!(report.counters.minor_faults, 17, "{:?}", report.counters);
    // The data was unmapped before exit: only the code page is left.
    assert_eq!(report.counters.resident, 1, "{:?}", report.counters);
    let after = user::stats();
    assert_eq!(after.exited, before.exited + 1);
    assert!(after.system_calls >= before.system_calls + 4);
    check_memory();
}

#[test_case]
fn task_reading_kernel_memory_is_killed() {
    let address = KERNEL_SECRET.as_ptr() as u64;
    let killed_before = user::stats().killed;
    let report = run(programs::read_address(), address);
    assert_killed(&report, "kernel memory");
    assert_eq!(user::stats().killed, killed_before + 1);
    check_memory();
}

#[test_case]
fn task_reading_an_unmapped_address_is_killed() {
    let report = run(programs::read_address(), 0x2000_0000_0000);
    assert_killed(&report, "unmapped");
}

#[test_case]
fn task_writing_its_own_code_is_killed() {
    let report = run(programs::write_address(), CODE_BASE);
    assert_killed(&report, "does not allow");
}

#[test_case]
fn task_writing_kernel_memory_is_killed() {
    let report = run(programs::write_address(), KERNEL_SECRET.as_ptr() as u64);
    assert_killed(&report, "kernel memory");
    assert_eq!(
        KERNEL_SECRET.load(Relaxed),
        0x5ec2_e75e_c2e7_5ec2,
        "kernel data unchanged"
    );
}

#[test_case]
fn task_executing_its_stack_is_killed() {
    let report = run(programs::jump_to(), STACK_TOP - PAGE_SIZE);
    assert_killed(&report, "does not allow");
}

#[test_case]
fn task_jumping_into_kernel_code_is_killed() {
    let report = run(programs::jump_to(), check_memory as *const () as u64);
    assert_killed(&report, "kernel memory");
}

#[test_case]
fn privileged_instruction_kills_the_task() {
    let report = run(programs::privileged(), 0);
    assert_killed(&report, "general protection");
}

#[test_case]
fn other_tasks_go_on_while_one_is_killed() {
    let sleeper = programs::sleeper();
    let calm = user::spawn("calm", &sleeper, 30).expect("task starts");
    let reader = programs::read_address();
    let rogue = user::spawn("rogue", &reader, 0x10).expect("task starts");
    assert_killed(&rogue.join(), "unmapped");
    assert_eq!(calm.join().exit, TaskExit::Exited(0));
}

#[test_case]
fn fresh_pages_never_show_another_tasks_old_data() {
    // Each run fills 64 pages with its marker; the pages go back at exit and the next run gets
    // them (or others) again: every word it sees first must be zero.
    for round in 0..20u64 {
        let report = run(programs::fresh_pages(), 0xdead_0000 + round);
        assert_eq!(
            report.exit,
            TaskExit::Exited(0),
            "round {round}: non-zero words seen in fresh pages"
        );
        assert_eq!(
            report.counters.resident, 65,
            "64 data pages and the code page"
        );
    }
    check_memory();
}

#[test_case]
fn clone_shares_pages_copy_on_write_in_ring3() {
    let cow_before = user::stats();
    let report = run_with(programs::cow_clone(), 1, Capabilities::DIAGNOSTICS);
    assert_eq!(report.exit, TaskExit::Exited(0), "see cow_clone's statuses");
    // Page A: the child copied it, so the parent took it back on its write without a copy.
    // Page B: the parent wrote it first, while shared (a copy), unless the child had already
    // exited (a reuse): two copy-on-write faults in all.
    let counters = report.counters;
    assert!(counters.cow_reuses >= 1, "{counters:?}");
    assert_eq!(counters.cow_reuses + counters.cow_copies, 2, "{counters:?}");
    assert_eq!(user::stats().started, cow_before.started + 2);
    check_memory();
}

#[test_case]
fn cow_through_the_space_api_keeps_refcounts_and_reverse_map_exact() {
    let start_free = settled_free_pages();
    let parent = AddressSpace::new().expect("space");
    let base = {
        let mut space = parent.lock();
        let base = space
            .map_anonymous(None, 4 * PAGE_SIZE, RegionFlags::READ | RegionFlags::WRITE)
            .expect("region");
        for page in 0..4 {
            space
                .write_user(base + page * PAGE_SIZE, &[0xa0 + page as u8; 64])
                .expect("write");
        }
        base
    };
    let page_of = |space: &user_space::Shared, address: u64| space.lock().translate(address);
    let parent_pages: alloc::vec::Vec<u64> = (0..4)
        .map(|page| page_of(&parent, base + page * PAGE_SIZE).expect("mapped").0)
        .collect();
    for &pfn in &parent_pages {
        assert_eq!(rmap::map_count(pfn), 1);
    }
    check_memory();

    let child = parent.lock().fork().expect("fork");
    let (parent_id, child_id) = (parent.lock().id(), child.lock().id());
    for (page, &pfn) in parent_pages.iter().enumerate() {
        let address = base + page as u64 * PAGE_SIZE;
        assert_eq!(
            page_of(&parent, address),
            Some((pfn, false)),
            "write-protected"
        );
        assert_eq!(page_of(&child, address), Some((pfn, false)), "same page");
        assert_eq!(rmap::map_count(pfn), 2);
        let mut mappings = rmap::mappings(pfn);
        mappings.sort_unstable();
        assert_eq!(
            mappings,
            [
                rmap::Mapping {
                    space: parent_id,
                    address
                },
                rmap::Mapping {
                    space: child_id,
                    address
                }
            ]
        );
    }
    check_memory();

    // The child writes page 0: it gets a private copy, the parent keeps the original.
    child.lock().write_user(base, &[0xc0; 8]).expect("write");
    let (child_page0, writable) = page_of(&child, base).expect("mapped");
    assert!(writable);
    assert_ne!(child_page0, parent_pages[0]);
    assert_eq!(rmap::map_count(parent_pages[0]), 1);
    assert_eq!(rmap::map_count(child_page0), 1);
    assert_eq!(child.lock().counters.cow_copies, 1);
    let mut seen = [0u8; 8];
    parent.lock().read_user(base, &mut seen).expect("read");
    assert_eq!(seen, [0xa0; 8], "the parent does not see the child's write");
    check_memory();

    // The parent writes page 0, now mapped only by it: taken back without a copy.
    parent.lock().write_user(base, &[0xd0; 8]).expect("write");
    assert_eq!(page_of(&parent, base), Some((parent_pages[0], true)));
    assert_eq!(parent.lock().counters.cow_reuses, 1);
    assert_eq!(parent.lock().counters.cow_copies, 0);
    child.lock().read_user(base, &mut seen).expect("read");
    assert_eq!(seen, [0xc0; 8], "the child does not see the parent's write");
    check_memory();

    // The parent writes page 1, still shared: the parent copies; the child then reuses.
    parent
        .lock()
        .write_user(base + PAGE_SIZE, &[0xe0; 8])
        .expect("write");
    assert_eq!(parent.lock().counters.cow_copies, 1);
    assert_eq!(rmap::map_count(parent_pages[1]), 1);
    child
        .lock()
        .write_user(base + PAGE_SIZE, &[0xf0; 8])
        .expect("write");
    assert_eq!(
        page_of(&child, base + PAGE_SIZE),
        Some((parent_pages[1], true))
    );
    assert_eq!(child.lock().counters.cow_reuses, 1);
    check_memory();

    // Unmapping page 2 in the child leaves the parent's mapping alone.
    child
        .lock()
        .unmap(base + 2 * PAGE_SIZE, PAGE_SIZE)
        .expect("unmap");
    assert_eq!(rmap::map_count(parent_pages[2]), 1);
    assert_eq!(
        page_of(&parent, base + 2 * PAGE_SIZE),
        Some((parent_pages[2], false))
    );
    check_memory();

    drop(child);
    for &pfn in &parent_pages[2..] {
        assert_eq!(rmap::map_count(pfn), 1, "the child's mappings are gone");
    }
    check_memory();
    drop(parent);
    assert_eq!(LIVE_SPACES.load(Relaxed), 0);
    assert_eq!(
        settled_free_pages(),
        start_free,
        "every page and table page is back"
    );
    check_memory();
}

mod user_space {
    pub type Shared = kernel::mm::space::SharedSpace;
}

#[test_case]
fn madvise_marks_and_unmarks_mergeable_ranges() {
    let report = run(programs::advise(), 0);
    assert_eq!(report.exit, TaskExit::Exited(0), "see advise's statuses");
    assert_eq!(report.mergeable_bytes, 3 * PAGE_SIZE);
    assert_eq!(
        report.counters.resident, 9,
        "8 data pages and the code page"
    );
}

#[test_case]
fn bad_system_calls_fail_with_errors_and_nothing_else() {
    let report = run(programs::bad_calls(), 0);
    assert_eq!(report.exit, TaskExit::Exited(0), "see bad_calls' statuses");
}

#[test_case]
fn busy_ring3_task_is_preempted() {
    let spin = programs::spin();
    let started = Instant::now();
    let ticks = kernel::time::tsc_hz() * 3 / 10;
    let handle = user::spawn("spinner", &spin, ticks).expect("task starts");
    task::sleep(Duration::from_millis(1));
    // This thread ran again while the spinner, which never gives up the CPU, still runs.
    assert!(
        handle.task().space().is_some(),
        "spinner finished before the sleeper woke ({:?})",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(handle.join().exit, TaskExit::Exited(0));
}

/// Free pages once dead threads' stacks are freed and the per-CPU caches drained.
fn settled_free_pages() -> u64 {
    // A finished task's thread may still be on its way out: let it go first.
    for _ in 0..1000 {
        if user::stats().live == 0 {
            break;
        }
        task::sleep(Duration::from_millis(1));
    }
    // Then a sleep lets every ready thread (a task's, finishing) run and exit.
    task::sleep(Duration::from_millis(2));
    page_alloc::drain_per_cpu_caches();
    // Pages the kernel heap took meanwhile are not a leak of the tasks.
    page_alloc::free_pages() + kernel::mm::heap::stats().grown as u64 / PAGE_SIZE
}

#[test_case]
fn exit_frees_every_page_many_times_over() {
    // Joined without a time limit: a bounded join leaves its timer in the scheduler's heap
    // until the deadline, which would count as heap growth here.
    let run = |program: programs::Program, argument: u64| {
        let caps = Capabilities::DIAGNOSTICS;
        let handle = user::spawn_with(program.name, &program, argument, caps).expect("starts");
        handle.join()
    };
    let round = || {
        assert_eq!(run(programs::memory_walk(), 32).exit, TaskExit::Exited(32));
        assert_eq!(run(programs::fresh_pages(), 7).exit, TaskExit::Exited(0));
        assert_eq!(run(programs::cow_clone(), 1).exit, TaskExit::Exited(0));
        assert_killed(&run(programs::read_address(), 0x10), "unmapped");
    };
    round();
    let start_free = settled_free_pages();
    let heap_before = kernel::mm::heap::stats().used;
    for _ in 0..25 {
        round();
    }
    assert_eq!(
        settled_free_pages(),
        start_free,
        "pages leaked by 100 tasks"
    );
    // Task records, threads and regions go back to the heap too (a leaked task would hold a
    // few hundred bytes; allow a little for containers that keep their capacity).
    let heap_after = kernel::mm::heap::stats().used;
    assert!(
        heap_after <= heap_before + 2048,
        "heap grew from {heap_before} to {heap_after} bytes over 100 tasks"
    );
    assert_eq!(LIVE_SPACES.load(Relaxed), 0);
    check_memory();
}

#[test_case]
fn a_task_over_its_resident_limit_is_killed_and_gives_everything_back() {
    let start_free = settled_free_pages();
    // 1% of memory (about 5,000 pages of a 2 GiB guest); the walk wants twice that.
    let limit = &kernel::tunables::USER_MAX_RESIDENT_PCT;
    limit.set(1).expect("in range");
    let report = run(
        programs::memory_walk(),
        2 * page_alloc::managed_pages() / 100,
    );
    limit.set(limit.default).expect("in range");
    assert_killed(&report, "resident memory limit");
    let allowed = page_alloc::managed_pages() / 100;
    assert_eq!(
        report.counters.resident, allowed,
        "it got exactly its share"
    );
    assert_eq!(settled_free_pages(), start_free);
    check_memory();
}

#[test_case]
fn console_runs_user_programs_and_shows_task_counters() {
    use kernel::console::execute;
    let killed_before = user::stats().killed;
    let (report, _) = execute("run memory_walk 4");
    assert!(report.contains("Exited(4)"), "{report}");
    let (report, _) = execute("run read_address 16");
    assert!(report.contains("Killed"), "{report}");
    let (tasks, _) = execute("tasks");
    let killed = alloc::format!("{} killed", killed_before + 1);
    assert!(tasks.contains(&killed), "{tasks}");
}

#[test_case]
fn flags_a_task_sets_never_reach_the_kernel_or_its_way_back() {
    const TF: u64 = 1 << 8;
    const IF: u64 = 1 << 9;
    const DF: u64 = 1 << 10;
    const IOPL: u64 = 3 << 12;
    const NT: u64 = 1 << 14;
    const RF: u64 = 1 << 16;
    const VM: u64 = 1 << 17;
    const AC: u64 = 1 << 18;
    const ID: u64 = 1 << 21;
    // (bits the task sets, whether they are still its own after the system calls)
    let cases = [
        ("NT", NT, true),
        ("DF", DF, true),
        ("AC", AC, true),
        ("ID", ID, true),
        ("IOPL", IOPL, false),
        ("RF", RF, false),
        ("VM", VM, false),
        ("all", NT | DF | AC | ID | IOPL | RF | VM, false),
    ];
    for (name, bits, kept) in cases {
        let report = run(programs::flags(), bits);
        let TaskExit::Exited(flags) = report.exit else {
            panic!("{name}: {:?}", report.exit);
        };
        let flags = flags as u64;
        assert_ne!(flags, 100, "{name}: write did not write it all");
        assert_eq!(
            flags & IF,
            IF,
            "{name}: interrupts on in ring 3: {flags:#x}"
        );
        assert_eq!(
            flags & (IOPL | RF | VM),
            0,
            "{name}: privileged flags: {flags:#x}"
        );
        if kept {
            assert_eq!(
                flags & bits,
                bits,
                "{name}: the task's own flag: {flags:#x}"
            );
        }
    }
    // TF: the task single-steps itself; the first trap kills it and the kernel goes on.
    let report = run(programs::flags(), TF);
    assert_killed(&report, "debug exception");
    check_memory();
}

#[test_case]
fn wait_tells_exit_statuses_from_errors() {
    // Statuses that were error numbers (-ECHILD is -10) or the old "killed" value.
    for status in [-10i64, -1000, 0, 7, i64::MIN] {
        let report = run(programs::wait_status(), status as u64);
        assert_eq!(report.exit, TaskExit::Exited(status), "status {status}");
    }
    // A killed child: wait says so, apart from any status.
    let report = run(programs::wait_status(), 0x4b11);
    assert_eq!(report.exit, TaskExit::Exited(0x4b11), "see wait_status");
    check_memory();
}

#[test_case]
fn copy_on_write_is_not_refused_by_the_resident_limit() {
    let start_free = settled_free_pages();
    let limit = &kernel::tunables::USER_MAX_RESIDENT_PCT;
    limit.set(1).expect("in range");
    let allowed = page_alloc::managed_pages() / 100;
    // The code page and `allowed - 1` data pages: both sides are at their limit after the
    // clone, and each copy-on-write copy replaces a page, it does not add one.
    let report = run(programs::fill_clone(), allowed - 1);
    limit.set(limit.default).expect("in range");
    assert_eq!(
        report.exit,
        TaskExit::Exited(0),
        "see fill_clone's statuses"
    );
    assert_eq!(report.counters.resident, allowed, "{:?}", report.counters);
    assert_eq!(settled_free_pages(), start_free);
    check_memory();
}

#[test_case]
fn check_memory_needs_the_diagnostics_capability() {
    // Without it the child's first check fails (status 13), so the parent exits 20.
    let report = run(programs::cow_clone(), 1);
    assert_eq!(
        report.exit,
        TaskExit::Exited(20),
        "see cow_clone's statuses"
    );
    // Clone passes the capability on: the child's checks pass too.
    let report = run_with(programs::cow_clone(), 1, Capabilities::DIAGNOSTICS);
    assert_eq!(report.exit, TaskExit::Exited(0), "see cow_clone's statuses");
    // Without checks the program runs for anyone (the console's `run cow_clone`).
    assert_eq!(run(programs::cow_clone(), 0).exit, TaskExit::Exited(0));
    // What a call costs the kernel: a walk of all memory with interrupts off.
    let start = Instant::now();
    check_memory();
    log::info!(
        "check_memory: {} us for {} MiB managed",
        start.elapsed().as_micros(),
        page_alloc::managed_pages() / 256
    );
}

#[test_case]
fn frame_of_needs_the_diagnostics_capability_and_names_the_frame() {
    const EPERM: i64 = -1;
    const EFAULT: i64 = -14;
    // Without the capability: refused, whatever the address.
    let report = run(programs::frame_probe(), CODE_BASE);
    assert_eq!(report.exit, TaskExit::Exited(EPERM));
    // With it: the code page has a frame (a user page of RAM), an untouched stack page none
    // yet, and an address outside every region is refused.
    let caps = Capabilities::DIAGNOSTICS;
    let TaskExit::Exited(pfn) = run_with(programs::frame_probe(), CODE_BASE, caps).exit else {
        panic!("frame_probe was killed");
    };
    assert!(
        pfn > 0 && page_alloc::zone_of(pfn as u64).is_some(),
        "frame_of(code) = {pfn}"
    );
    let report = run_with(programs::frame_probe(), STACK_TOP - 16 * PAGE_SIZE, caps);
    assert_eq!(report.exit, TaskExit::Exited(0));
    let report = run_with(programs::frame_probe(), 0x2000_0000_0000, caps);
    assert_eq!(report.exit, TaskExit::Exited(EFAULT));
}

#[test_case]
fn discard_drops_pages_and_keeps_the_region() {
    let free_before = settled_free_pages();
    let shared = AddressSpace::new().expect("a space");
    {
        let mut space = shared.lock();
        let flags = RegionFlags::READ | RegionFlags::WRITE;
        let start = space
            .map_anonymous(None, 64 * PAGE_SIZE, flags)
            .expect("region");
        for page in 0..64 {
            space
                .write_user(start + page * PAGE_SIZE, &(page + 1).to_le_bytes())
                .expect("write");
        }
        let regions = space.regions().count();
        // Every other page of the middle: a hole pattern that would split the region 16 times
        // over with munmap.
        let mut dropped = 0;
        for page in (16..48).step_by(2) {
            dropped += space
                .discard(start + page * PAGE_SIZE, PAGE_SIZE)
                .expect("discard");
        }
        assert_eq!(dropped, 16);
        assert_eq!(space.regions().count(), regions, "no region was split");
        assert_eq!(space.counters.resident, 64 - 16, "{:?}", space.counters);
        for page in 0..64 {
            let present = space.translate(start + page * PAGE_SIZE).is_some();
            let gone = (16..48).contains(&page) && page % 2 == 0;
            assert_eq!(present, !gone, "page {page}");
        }
        // A dropped page reads zero on its next touch; a kept one kept its data.
        let mut word = [0u8; 8];
        space
            .read_user(start + 16 * PAGE_SIZE, &mut word)
            .expect("read");
        assert_eq!(u64::from_le_bytes(word), 0);
        space
            .read_user(start + 17 * PAGE_SIZE, &mut word)
            .expect("read");
        assert_eq!(u64::from_le_bytes(word), 18);
        // Over a hole: refused, nothing dropped.
        assert!(space.discard(start + 64 * PAGE_SIZE, PAGE_SIZE).is_err());
        assert_eq!(space.counters.resident, 64 - 15);
    }
    check_memory();
    drop(shared);
    assert_eq!(settled_free_pages(), free_before, "every page came back");
}

/// A small fragmenting workload (2 tasks of 8 MiB), filled and fragmented with the proactive
/// task paused.
fn small_fragment_workload() -> (kernel::fragment::Workload, kernel::fragment::Totals) {
    use kernel::fragment::{self, Plan, Workload};
    fragment::with_compaction_paused(|| {
        let plan = Plan {
            tasks: 2,
            pages_per_task: 2048,
            free_pages: page_alloc::free_pages(),
        };
        let workload = Workload::start(plan, 0x7e57).expect("tasks start");
        assert_eq!(workload.fill().expect("fill"), 4096);
        let totals = workload.fragment().expect("fragment");
        (workload, totals)
    })
}

#[test_case]
fn fragmenter_tasks_free_three_of_every_four_pages_of_each_block() {
    let (workload, totals) = small_fragment_workload();
    assert_eq!(totals.kept + totals.freed, 4096, "{totals:?}");
    // The kernel's view: every page still mapped sits at a frame number that is a multiple of
    // 4 (what frame_of told the task), and about a quarter stayed.
    let mut present = 0;
    for (space, start) in workload.data_regions().expect("regions") {
        let space = space.lock();
        for page in 0..2048 {
            if let Some((pfn, _)) = space.translate(start + page * PAGE_SIZE) {
                assert_eq!(pfn % 4, 0, "kept page at pfn {pfn:#x}");
                present += 1;
            }
        }
    }
    assert_eq!(present, totals.kept);
    assert!(
        (800..=1300).contains(&totals.kept),
        "{} of 4096 kept: not a quarter",
        totals.kept
    );
    check_memory();
    // Moved pages keep their contents: compaction moves them, the tasks find every signature.
    let moved = kernel::mm::compaction::compact_all().migrated;
    let verified = workload.verify().expect("every signature");
    assert_eq!(verified.verified, totals.kept);
    kernel::println!(
        "kept {} of 4096 pages, compaction moved {moved}, all verified",
        totals.kept
    );
    assert!(
        moved > 0,
        "compaction moved nothing: the check proved nothing"
    );
    check_memory();
}

#[test_case]
fn fragmenter_verification_finds_a_page_that_changed() {
    let (workload, totals) = small_fragment_workload();
    // Change one word of one kept page behind the task's back: its check must see it.
    let (space, start) = workload.data_regions().expect("regions").remove(0);
    {
        let mut space = space.lock();
        let kept = (0..2048)
            .map(|page| start + page * PAGE_SIZE)
            .find(|&address| space.translate(address).is_some())
            .expect("a kept page");
        space.write_user(kept + 8 * 511, &[0xff; 8]).expect("write");
    }
    drop(space);
    let problem = workload
        .verify()
        .expect_err("a changed page goes unnoticed");
    assert!(
        problem.contains("1 pages with a wrong signature"),
        "{problem}"
    );
    assert!(problem.contains("Exited(103)"), "{problem}");
    assert!(totals.kept > 0);
    check_memory();
}

/// Pages held by user tasks and kernel stacks now, once finished tasks are gone.
fn task_pages() -> (u64, u64) {
    settled_free_pages();
    let census = checker::check().expect("memory check");
    (
        census.allocated_by_owner[Owner::UserAnon as usize],
        census.allocated_by_owner[Owner::Stack as usize],
    )
}

/// After many tasks: every user page and kernel stack is back, and free memory is where it
/// was but for the kernel page tables of new stack slots (one per 32 slots, kept for reuse).
fn assert_tasks_left_nothing(before: (u64, u64), start_free: u64, slack: u64) {
    assert_eq!(task_pages(), before, "(user pages, stack pages) held");
    let free = settled_free_pages();
    assert!(
        free <= start_free && free + slack >= start_free,
        "free pages {free}, {start_free} before (slack {slack})"
    );
}

/// Waits until no task runs (children of a clone bomb are let go and end on their own).
fn wait_for_no_tasks() {
    let start = Instant::now();
    while user::stats().live > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(50),
            "{} tasks still run",
            user::stats().live
        );
        task::sleep(Duration::from_millis(5));
    }
}

#[test_case]
fn a_clone_bomb_meets_the_task_limit_and_the_kernel_goes_on() {
    let (start_free, before_pages) = (settled_free_pages(), task_pages());
    let max = &kernel::tunables::USER_MAX_TASKS;
    max.set(64).expect("in range");
    let before = user::stats();
    // 2^12 tasks if nothing stopped them.
    let start = Instant::now();
    let report = run(programs::clone_bomb(), 12);
    wait_for_no_tasks();
    let elapsed = start.elapsed();
    max.set(max.default).expect("in range");
    let after = user::stats();
    let started = after.started - before.started;
    log::info!(
        "clone bomb: {started} tasks started, {} clones refused, over in {elapsed:?}, {:?}",
        after.clones_refused - before.clones_refused,
        report.exit
    );
    assert!(matches!(
        report.exit,
        TaskExit::Exited(0) | TaskExit::Exited(11)
    ));
    assert!(started < 4096, "the limit stopped it: {started} tasks");
    assert!(
        after.clones_refused > before.clones_refused,
        "clones were refused"
    );
    assert_eq!(after.killed, before.killed, "nobody was killed");
    assert_tasks_left_nothing(before_pages, start_free, 8);
    check_memory();
    // The kernel goes on: a task runs as before.
    assert_eq!(run(programs::memory_walk(), 4).exit, TaskExit::Exited(4));
}

#[test_case]
fn a_clone_bomb_out_of_memory_gets_errors_and_the_kernel_goes_on() {
    use kernel::mm::page_alloc::{AllocRequest, Pages};
    let (start_free, before_pages) = (settled_free_pages(), task_pages());
    let max = &kernel::tunables::USER_MAX_TASKS;
    max.set(max.max).expect("in range");
    // Leave about 24 MiB free: room for a few hundred tasks, not for 2^14.
    let mut held: alloc::vec::Vec<Pages> = alloc::vec::Vec::new();
    while page_alloc::free_pages() > 6144 + 512 {
        match page_alloc::alloc(AllocRequest::new(9)) {
            Some(pages) => held.push(pages),
            None => break,
        }
    }
    let before = user::stats();
    let start = Instant::now();
    let report = run(programs::clone_bomb(), 14);
    wait_for_no_tasks();
    let elapsed = start.elapsed();
    max.set(max.default).expect("in range");
    for pages in held {
        page_alloc::free(pages).expect("free");
    }
    let started = user::stats().started - before.started;
    log::info!(
        "clone bomb in 24 MiB: {started} tasks started, {} clones refused, over in {elapsed:?}, {:?}",
        user::stats().clones_refused - before.clones_refused,
        report.exit
    );
    assert!(started < 1 << 14, "memory stopped it: {started} tasks");
    assert!(
        user::stats().clones_refused > before.clones_refused,
        "clones were refused"
    );
    assert_eq!(user::stats().killed, before.killed, "nobody was killed");
    // Up to one stack slot per page of the 24 MiB: a page table per 32 slots.
    assert_tasks_left_nothing(before_pages, start_free, 6144 / 32 + 8);
    check_memory();
    assert_eq!(run(programs::memory_walk(), 4).exit, TaskExit::Exited(4));
}

/// Starts `program`, lets it get going, asks it to die and returns its report.
fn kill_after_start(program: programs::Program, argument: u64) -> TaskReport {
    let handle = user::spawn(program.name, &program, argument).expect("task starts");
    task::sleep(Duration::from_millis(20));
    assert!(
        handle.task().space().is_some(),
        "still runs before the kill"
    );
    user::kill(handle.pid(), "killed by the test").expect("the task runs");
    let asked = Instant::now();
    let report = match handle.join_timeout(Duration::from_secs(5)) {
        Ok(report) => report,
        Err(_) => panic!("'{}' still runs 5 s after its kill", program.name),
    };
    log::info!(
        "'{}' died {:?} after its kill",
        program.name,
        asked.elapsed()
    );
    report
}

#[test_case]
fn a_task_spinning_in_ring3_dies_when_killed() {
    let killed_before = user::stats().killed;
    // `run jump_to 4194304`: a jump to itself, no system call ever.
    let report = kill_after_start(programs::jump_to(), CODE_BASE);
    assert_killed(&report, "killed by the test");
    assert_eq!(user::stats().killed, killed_before + 1);
    check_memory();
}

#[test_case]
fn a_sleeping_task_wakes_to_die_when_killed() {
    let report = kill_after_start(programs::sleep_forever(), 0);
    assert_killed(&report, "killed by the test");
}

#[test_case]
fn a_task_waiting_for_its_child_wakes_to_die_when_killed() {
    let report = kill_after_start(programs::wait_forever(), 0);
    assert_killed(&report, "killed by the test");
    // Its child was let go and sleeps on: it can be killed by its pid.
    let children: alloc::vec::Vec<_> = user::running_tasks()
        .into_iter()
        .filter(|(_, name)| name == "wait_forever-child")
        .collect();
    assert_eq!(children.len(), 1, "{children:?}");
    user::kill(children[0].0, "killed by the test").expect("runs");
    wait_for_no_tasks();
    check_memory();
}

#[test_case]
fn killing_no_task_is_an_error() {
    assert_eq!(
        user::kill(999_999, "nobody"),
        Err(user::KillError::NoSuchTask)
    );
    // A finished task cannot be killed either.
    let report = run(programs::memory_walk(), 1);
    assert_eq!(
        user::kill(report.pid, "late"),
        Err(user::KillError::NoSuchTask)
    );
}

/// Console input: one Ctrl-C (byte 3) once `delay` has passed, nothing before or after.
fn ctrl_c_after(delay: Duration) -> impl FnMut() -> Option<u8> {
    let start = Instant::now();
    let mut sent = false;
    move || {
        if sent || start.elapsed() < delay {
            return None;
        }
        sent = true;
        Some(3)
    }
}

#[test_case]
fn console_kill_and_ctrl_c_end_runaway_tasks() {
    use kernel::console::{execute, execute_with_input};
    // In the background, then `kill ID`.
    let (started, _) = execute("run sleep_forever 0 &");
    assert!(started.contains("background"), "{started}");
    task::sleep(Duration::from_millis(10));
    let pid: u32 = started
        .split_whitespace()
        .nth(1)
        .and_then(|word| word.parse().ok())
        .expect("a pid");
    let (tasks, _) = execute("tasks");
    assert!(tasks.contains("sleep_forever"), "{tasks}");
    let (killed, _) = execute(&alloc::format!("kill {pid}"));
    assert!(killed.contains("kill requested"), "{killed}");
    wait_for_no_tasks();
    assert!(execute("kill 999999").0.contains("NoSuchTask"));
    assert!(execute("kill x").0.contains("usage"));
    // In the foreground: Ctrl-C (byte 3) typed while it spins kills it and its children.
    let mut ctrl_c = ctrl_c_after(Duration::from_millis(50));
    let (report, _) = execute_with_input("run jump_to 4194304", &mut ctrl_c);
    assert!(
        report.contains("Killed") && report.contains("Ctrl-C"),
        "{report}"
    );
    let mut ctrl_c = ctrl_c_after(Duration::from_millis(50));
    let (report, _) = execute_with_input("run wait_forever", &mut ctrl_c);
    assert!(
        report.contains("Killed") && report.contains("Ctrl-C"),
        "{report}"
    );
    wait_for_no_tasks();
    check_memory();
}

/// Holds memory so that about `left` pages stay free (kernel pages, given back by the caller).
fn hold_all_but(left: u64) -> alloc::vec::Vec<page_alloc::Pages> {
    use kernel::mm::page_alloc::AllocRequest;
    let mut held = alloc::vec::Vec::new();
    for order in [9u8, 0] {
        while page_alloc::free_pages() > left + (1 << order) {
            match page_alloc::alloc(AllocRequest::new(order).without_balloon_deflate()) {
                Some(pages) => held.push(pages),
                None => break,
            }
        }
    }
    held
}

#[test_case]
fn out_of_memory_kills_the_largest_task_and_the_others_finish() {
    let (start_free, before_pages) = (settled_free_pages(), task_pages());
    let held = hold_all_but(12_000);
    let before = user::stats();
    // The hog takes half of what is left and keeps it; the walkers then need more than the
    // rest between them.
    let hog_program = programs::hog();
    let hog = user::spawn("hog", &hog_program, 6000).expect("starts");
    while hog
        .task()
        .space()
        .is_some_and(|space| space.lock().counters.resident < 6001)
    {
        task::sleep(Duration::from_millis(5));
    }
    let walk = programs::memory_walk();
    let start = Instant::now();
    let walkers: alloc::vec::Vec<_> = (0..2)
        .map(|_| user::spawn("walker", &walk, 3000).expect("starts"))
        .collect();
    let hog_report = hog.join_timeout(Duration::from_secs(30));
    let walker_reports: alloc::vec::Vec<_> = walkers.into_iter().map(|w| w.join()).collect();
    log::info!(
        "out of memory: hog killed and walkers done in {:?}",
        start.elapsed()
    );
    for pages in held {
        page_alloc::free(pages).expect("free");
    }
    let hog_report = hog_report.unwrap_or_else(|_| panic!("the hog was not killed"));
    assert_killed(&hog_report, "out of memory");
    for report in walker_reports {
        assert_eq!(report.exit, TaskExit::Exited(3000), "the walkers finish");
    }
    let after = user::stats();
    assert_eq!(after.oom_kill, before.oom_kill + 1);
    assert_eq!(after.killed, before.killed + 1);
    check_memory();
    assert_tasks_left_nothing(before_pages, start_free, 0);
}

#[test_case]
fn out_of_memory_kills_the_faulting_task_when_it_is_the_largest() {
    let (start_free, before_pages) = (settled_free_pages(), task_pages());
    let held = hold_all_but(4000);
    let before = user::stats();
    let report = run(programs::memory_walk(), 8000);
    for pages in held {
        page_alloc::free(pages).expect("free");
    }
    assert_killed(&report, "out of memory");
    assert_eq!(user::stats().oom_kill, before.oom_kill + 1);
    check_memory();
    assert_tasks_left_nothing(before_pages, start_free, 0);
    // The kernel goes on.
    assert_eq!(run(programs::memory_walk(), 4).exit, TaskExit::Exited(4));
}

#[test_case]
fn a_system_call_with_a_bad_stack_pointer_returns_to_it() {
    for rsp in [
        0x8000_0000_0000_0000u64,
        0xffff_8000_0000_0000,
        KERNEL_SECRET.as_ptr() as u64,
        0,
        1,
    ] {
        let report = run(programs::odd_stack(), rsp);
        assert_eq!(report.exit, TaskExit::Exited(0), "rsp {rsp:#x}");
    }
    check_memory();
    assert_eq!(
        KERNEL_SECRET.load(Relaxed),
        0x5ec2_e75e_c2e7_5ec2,
        "kernel data unchanged"
    );
}

#[test_case]
fn a_single_step_trap_due_at_syscall_is_taken_in_ring3() {
    let report = run(programs::trap_syscall(), 0);
    assert_killed(&report, "debug exception");
    check_memory();
}

#[test_case]
fn user_pages_leave_the_kernel_its_reserve() {
    use kernel::mm::page_alloc::AllocRequest;
    use kernel::mm::space::FaultError;
    // Enough left that every zone starts above its low watermark.
    let held = hold_all_but(6000);
    page_alloc::drain_per_cpu_caches();
    let space = AddressSpace::new().expect("space");
    let flags = RegionFlags::READ | RegionFlags::WRITE;
    let base = space
        .lock()
        .map_anonymous(None, 8000 * PAGE_SIZE, flags)
        .expect("region");
    let mut pages = 0;
    let error = loop {
        assert!(pages < 8000, "6000 free pages gave 8000 user pages");
        match space.lock().write_user(base + pages * PAGE_SIZE, &[1]) {
            Ok(()) => pages += 1,
            Err(error) => break error,
        }
    };
    assert_eq!(error, FaultError::OutOfMemory);
    // Memory is full for tasks, not for the kernel: what lies between the zones' low and min
    // watermarks is left for its heap, page tables and stacks (less what per-CPU lists hold).
    let reserve: u64 = page_alloc::all_zones()
        .iter()
        .map(|zone| zone.watermarks.low - zone.watermarks.min)
        .sum();
    let want = (reserve / 2) as usize;
    let kernel: alloc::vec::Vec<_> = (0..want)
        .map_while(|_| page_alloc::alloc(AllocRequest::new(0)))
        .collect();
    let got = kernel.len();
    for pages in kernel {
        page_alloc::free(pages).expect("free");
    }
    drop(space);
    for pages in held {
        page_alloc::free(pages).expect("free");
    }
    log::info!(
        "user pages stopped after {pages}; the kernel then got {got} of {want} pages (reserve {reserve})"
    );
    assert!(want >= 16, "a reserve worth testing: {reserve} pages");
    assert_eq!(got, want, "the kernel's reserve");
    check_memory();
}

#[test_case]
fn tasks_keep_their_data_while_compaction_moves_their_pages() {
    use core::sync::atomic::AtomicBool;
    use kernel::mm::compaction;
    // A kernel thread compacts every zone over and over while tasks fault, write, read back,
    // clone (copy-on-write) and exit: every task still sees its own data.
    static STOP: AtomicBool = AtomicBool::new(false);
    STOP.store(false, Relaxed);
    let compactor = task::spawn("compactor", || {
        let mut moved = 0;
        while !STOP.load(Relaxed) {
            moved += compaction::compact_all().migrated;
            task::yield_now();
        }
        moved
    })
    .expect("thread starts");
    let before = compaction::stats();
    // Short time slices: the compactor runs between the tasks' faults, not only after them.
    let slice = kernel::tunables::SCHED_TIMESLICE_MS.get();
    kernel::tunables::SCHED_TIMESLICE_MS
        .set(1)
        .expect("in range");
    for _ in 0..3 {
        let walkers: alloc::vec::Vec<_> = (0..4u64)
            .map(|i| {
                let program = programs::memory_walk();
                user::spawn_with(
                    program.name,
                    &program,
                    4096 + 1024 * i,
                    Capabilities::empty(),
                )
                .expect("task starts")
            })
            .collect();
        let cloner = {
            let program = programs::fill_clone();
            user::spawn_with(program.name, &program, 256, Capabilities::empty())
                .expect("task starts")
        };
        for (i, walker) in walkers.into_iter().enumerate() {
            let Ok(report) = walker.join_timeout(Duration::from_secs(60)) else {
                panic!("a walker did not end within 60 s");
            };
            assert_eq!(report.exit, TaskExit::Exited(4096 + 1024 * i as i64));
        }
        let Ok(report) = cloner.join_timeout(Duration::from_secs(60)) else {
            panic!("the cloner did not end within 60 s");
        };
        assert_eq!(report.exit, TaskExit::Exited(0));
    }
    STOP.store(true, Relaxed);
    kernel::tunables::SCHED_TIMESLICE_MS
        .set(slice)
        .expect("in range");
    let moved = compactor.join();
    let after = compaction::stats();
    kernel::println!(
        "compaction moved {moved} pages under running tasks ({} not moved)",
        after.pgmigrate_fail - before.pgmigrate_fail
    );
    assert!(moved > 0, "nothing was moved: the test proved nothing");
    check_memory();
}

#[test_case]
fn ksm_merges_two_tasks_pages_and_their_writes_copy() {
    use kernel::mm::ksm;
    use kernel::tunables;
    let pages = 64;
    let sleep = tunables::KSM_SLEEP_MILLISECS.get();
    tunables::KSM_SLEEP_MILLISECS.set(2).expect("in range");
    let before = ksm::stats();
    tunables::KSM_RUN.set(1).expect("ksm.run=1");
    let report = run(programs::ksm_twins(), pages);
    tunables::KSM_RUN.set(0).expect("ksm.run=0");
    tunables::KSM_SLEEP_MILLISECS.set(sleep).expect("in range");
    ksm::wait_idle();
    let after = ksm::stats();
    assert_eq!(
        report.exit,
        TaskExit::Exited(0),
        "see ksm_twins' statuses; {after:?}"
    );
    assert!(after.merges - before.merges >= pages, "{after:?}");
    // The child's writes and the parent's unmerge: one copy of a KSM page each.
    assert_eq!(after.cow_ksm - before.cow_ksm, 2 * pages, "{after:?}");
    assert_eq!(after.pages_shared, before.pages_shared, "{after:?}");
    check_memory();
}

#[test_case]
fn ksm_spawned_tasks_merge_only_within_their_merge_domain() {
    use kernel::mm::ksm;
    let pages = 32u64;
    // Three tasks with the same pages: two in merge domain 5, one in domain 6.
    let spawn = |name: &str, domain: u32| {
        user::spawn_in_domain(
            name,
            &programs::ksm_fill(),
            pages,
            Capabilities::empty(),
            domain,
        )
        .expect("spawned")
    };
    let tasks = [spawn("fill-a", 5), spawn("fill-b", 5), spawn("fill-c", 6)];
    let spaces: alloc::vec::Vec<_> = tasks
        .iter()
        .map(|handle| handle.task().space().expect("a running task's space"))
        .collect();
    assert_eq!(
        spaces
            .iter()
            .map(|space| space.lock().merge_domain())
            .collect::<alloc::vec::Vec<_>>(),
        [5, 5, 6]
    );
    // ksmd is stopped (ksm.run=0): passes by hand until it has looked at every task's pages
    // (they filled and marked them mergeable), then two more.
    let started = Instant::now();
    while !spaces
        .iter()
        .all(|space| ksm::space_stats(space).ksm_rmap_items == pages)
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the tasks did not fill"
        );
        task::sleep(Duration::from_millis(5));
        ksm::scan_full_passes(1);
    }
    ksm::scan_full_passes(2);
    let merged: alloc::vec::Vec<u64> = spaces
        .iter()
        .map(|space| ksm::space_stats(space).ksm_merging_pages)
        .collect();
    assert_eq!(merged, [pages, pages, 0], "pages merged per task");
    for handle in tasks {
        user::kill(handle.pid(), "killed by the test").expect("the task runs");
        let report = handle.join();
        assert!(matches!(report.exit, TaskExit::Killed(_)), "{report:?}");
    }
    drop(spaces);
    ksm::wait_idle();
    check_memory();
}

#[test_case]
fn console_runs_a_task_in_a_merge_domain_and_shows_its_ksm_stat() {
    use kernel::console::execute;
    use kernel::mm::ksm;
    let (started, _) = execute("run ksm_fill 8 domain=9 &");
    assert!(started.contains("background"), "{started}");
    let pid: u32 = started
        .split_whitespace()
        .nth(1)
        .and_then(|word| word.parse().ok())
        .expect("a pid");
    let line = alloc::format!(
        "task {pid} ksm_fill: ksm_rmap_items 8 ksm_merging_pages 0 ksm_zero_pages 0 ksm_process_profit {}",
        -(8 * ksm::RMAP_ITEM_BYTES as i64)
    );
    // ksmd is stopped (ksm.run=0): passes by hand until it has looked at the task's pages.
    let started = Instant::now();
    while !execute("ksm").0.contains(&line) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no '{line}' in:\n{}",
            execute("ksm").0
        );
        task::sleep(Duration::from_millis(5));
        ksm::scan_full_passes(1);
    }
    let space = user::task_spaces()
        .into_iter()
        .find(|(id, _, _)| *id == pid)
        .map(|(_, _, space)| space)
        .expect("the task's space");
    assert_eq!(space.lock().merge_domain(), 9);
    drop(space);
    assert!(
        execute("run ksm_fill 8 domain=x")
            .0
            .contains("domain= takes a number")
    );
    assert!(
        execute(&alloc::format!("kill {pid}"))
            .0
            .contains("kill requested")
    );
    wait_for_no_tasks();
    check_memory();
}
