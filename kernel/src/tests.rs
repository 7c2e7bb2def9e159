//! In-guest tests of the foundation: exceptions, the clock, threads, the heap and the command
//! line. Run by `cargo test` in the kernel built as a test kernel.

use crate::arch::{extable, hpet::Hpet, idt};
use crate::sync::IrqMutex;
use crate::task::{self, WaitQueue, WaitResult};
use crate::time::Instant;
use crate::{cmdline, tunables};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;
use x86_64::structures::idt::PageFaultErrorCode;

#[test_case]
fn breakpoint_exception_returns_to_the_caller() {
    let before = idt::BREAKPOINTS.load(Ordering::Relaxed);
    x86_64::instructions::interrupts::int3();
    assert_eq!(idt::BREAKPOINTS.load(Ordering::Relaxed), before + 1);
}

#[test_case]
fn read_of_unmapped_address_reaches_page_fault_handler_with_that_address() {
    // The identity map is gone after boot, so nothing is mapped in the lower half.
    let address = 0x0000_1234_5678_9ab8u64;
    let before = idt::PAGE_FAULTS.load(Ordering::Relaxed);
    let fault = extable::probe_read_u64(address).expect_err("unmapped address must fault");
    assert_eq!(fault.address, address);
    let error = PageFaultErrorCode::from_bits_truncate(fault.error_code);
    assert!(
        !error.contains(PageFaultErrorCode::PROTECTION_VIOLATION),
        "not-present fault: {error:?}"
    );
    assert!(
        !error.contains(PageFaultErrorCode::CAUSED_BY_WRITE),
        "read fault: {error:?}"
    );
    assert!(
        !error.contains(PageFaultErrorCode::USER_MODE),
        "kernel fault: {error:?}"
    );
    assert_eq!(idt::PAGE_FAULTS.load(Ordering::Relaxed), before + 1);
}

#[test_case]
fn write_fault_is_decoded_as_a_write() {
    let address = 0x0000_0000_0000_0040u64;
    // SAFETY: nothing is mapped at this lower-half address, so the write cannot land.
    let fault = unsafe { extable::probe_write_u64(address, 7) }.expect_err("null page must fault");
    assert_eq!(fault.address, address);
    let error = PageFaultErrorCode::from_bits_truncate(fault.error_code);
    assert!(
        error.contains(PageFaultErrorCode::CAUSED_BY_WRITE),
        "{error:?}"
    );
}

#[test_case]
fn probe_of_mapped_memory_reads_the_value() {
    let value = Box::new(0x1122_3344_5566_7788u64);
    assert_eq!(
        extable::probe_read_u64(&*value as *const u64 as u64),
        Ok(0x1122_3344_5566_7788)
    );
}

#[test_case]
fn clock_is_monotonic() {
    let mut last = Instant::now();
    for _ in 0..10_000 {
        let now = Instant::now();
        assert!(now >= last);
        last = now;
    }
}

#[test_case]
fn clock_advances_at_the_calibrated_rate_against_the_hpet() {
    let hpet = Hpet::probe().expect("q35 has an HPET");
    let (clock_start, hpet_start) = (Instant::now(), hpet.now_ns());
    task::sleep(Duration::from_millis(300));
    let (clock_ns, hpet_ns) = (
        clock_start.elapsed().as_nanos() as u64,
        hpet.now_ns() - hpet_start,
    );
    let ratio_permille = clock_ns * 1000 / hpet_ns;
    assert!(
        (970..=1030).contains(&ratio_permille),
        "clock {clock_ns} ns against HPET {hpet_ns} ns"
    );
}

#[test_case]
fn an_idle_kernel_takes_one_timer_interrupt_per_wake_up_and_wakes_on_time() {
    // A good tenant does not wake the host's CPU for nothing: sleeping 300 ms with nothing else
    // to do costs the timer interrupt that ends the sleep (a periodic 1 kHz tick took 300).
    let before = task::scheduler::stats().timer_interrupts;
    let start = Instant::now();
    task::sleep(Duration::from_millis(300));
    let slept = start.elapsed();
    let interrupts = task::scheduler::stats().timer_interrupts - before;
    assert!(
        interrupts <= 2,
        "{interrupts} timer interrupts during an idle 300 ms sleep"
    );
    assert!(slept >= Duration::from_millis(300), "woke early: {slept:?}");
    assert!(slept < Duration::from_millis(310), "woke late: {slept:?}");
}

#[test_case]
fn sleepers_wake_in_deadline_order() {
    let order = Arc::new(IrqMutex::new(Vec::new()));
    let start = Instant::now();
    let sleepers: Vec<_> = [40u64, 10, 30, 20]
        .into_iter()
        .map(|ms| {
            let order = order.clone();
            task::spawn("sleeper", move || {
                task::sleep(Duration::from_millis(ms));
                let woke = start.elapsed();
                order.lock().push(ms);
                woke
            })
            .expect("thread starts")
        })
        .collect();
    let woke: Vec<Duration> = sleepers.into_iter().map(|handle| handle.join()).collect();
    assert_eq!(*order.lock(), [10, 20, 30, 40]);
    for (ms, woke) in [40u64, 10, 30, 20].into_iter().zip(woke) {
        assert!(
            woke >= Duration::from_millis(ms),
            "slept {ms} ms but woke after {woke:?}"
        );
    }
}

#[test_case]
fn busy_thread_is_preempted_by_the_timer() {
    let stop = Arc::new(AtomicBool::new(false));
    let busy_stop = stop.clone();
    let preemptions_before = task::scheduler::stats().preemptions;
    let busy = task::spawn("busy", move || {
        // Never yields: only a preempting tick can let the test thread run before the deadline.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !busy_stop.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    })
    .expect("thread starts");
    let start = Instant::now();
    task::yield_now();
    let back_after = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(
        busy.join(),
        "the busy thread ran to its deadline: the test thread was not scheduled"
    );
    assert!(
        back_after < Duration::from_millis(500),
        "took {back_after:?} to preempt"
    );
    assert!(task::scheduler::stats().preemptions > preemptions_before);
}

#[test_case]
fn wait_queue_wakes_a_waiter_when_the_condition_holds() {
    static QUEUE: WaitQueue = WaitQueue::new();
    static VALUE: AtomicU64 = AtomicU64::new(0);
    VALUE.store(0, Ordering::SeqCst);
    let waiter = task::spawn("waiter", || {
        QUEUE.wait_until(|| VALUE.load(Ordering::SeqCst) == 3);
        VALUE.load(Ordering::SeqCst)
    })
    .expect("thread starts");
    for value in 1..=3 {
        task::sleep(Duration::from_millis(5));
        VALUE.store(value, Ordering::SeqCst);
        QUEUE.wake_all();
    }
    assert_eq!(waiter.join(), 3);
}

#[test_case]
fn wait_queue_times_out_when_nobody_wakes_it() {
    let queue = WaitQueue::new();
    let start = Instant::now();
    let result = queue.wait_until_timeout(|| false, Duration::from_millis(20));
    assert_eq!(result, WaitResult::TimedOut);
    assert!(start.elapsed() >= Duration::from_millis(20));
    assert!(
        !queue.wake_one(),
        "a timed-out waiter leaves no entry behind"
    );
}

#[test_case]
fn join_returns_the_thread_result() {
    let handle = task::spawn("adder", || (1..=100u64).sum::<u64>()).expect("thread starts");
    assert_eq!(handle.join(), 5050);
}

#[test_case]
fn exited_threads_give_their_memory_back() {
    // Warm up so lazily grown structures (the thread map, queues) have their final size.
    for _ in 0..10 {
        task::spawn("warm", || ()).expect("thread starts").join();
    }
    task::yield_now();
    let used_before = crate::mm::heap::stats().used;
    let live_before = task::scheduler::stats().live_threads;
    for round in 0..20 {
        let handles: Vec<_> = (0..10)
            .map(|i| task::spawn("short", move || round * i).expect("thread starts"))
            .collect();
        for handle in handles {
            handle.join();
        }
    }
    // Dead threads are reaped by the next switch.
    task::yield_now();
    assert_eq!(task::scheduler::stats().live_threads, live_before);
    let used_after = crate::mm::heap::stats().used;
    assert!(
        used_after <= used_before + 1024,
        "heap grew from {used_before} to {used_after} bytes"
    );
}

#[test_case]
fn heap_allocates_frees_and_reuses() {
    let before = crate::mm::heap::stats().used;
    let mut blocks: Vec<Vec<u8>> = (0..64)
        .map(|i| alloc::vec![i as u8; 1000 + i * 37])
        .collect();
    for (i, block) in blocks.iter().enumerate() {
        assert!(block.iter().all(|&byte| byte == i as u8));
    }
    let big = alloc::vec![0xa5u8; 1 << 20];
    assert!(big.iter().all(|&byte| byte == 0xa5));
    drop(big);
    blocks.clear();
    blocks.shrink_to_fit();
    assert_eq!(crate::mm::heap::stats().used, before);
}

#[test_case]
fn heap_grows_beyond_its_bootstrap_region_with_pages_from_the_allocator() {
    let before = crate::mm::heap::stats();
    let big = alloc::vec![0x5au8; 24 << 20];
    assert!(big.iter().step_by(4096).all(|&byte| byte == 0x5a));
    let after = crate::mm::heap::stats();
    assert!(
        after.grown >= before.grown + (16 << 20),
        "grown region: {} -> {} bytes",
        before.grown,
        after.grown
    );
    drop(big);
}

#[test_case]
fn heap_exhaustion_returns_null_instead_of_hanging() {
    // More than the whole guest: the heap must refuse without taking memory for nothing.
    let grown_before = crate::mm::heap::stats().grown;
    let layout = core::alloc::Layout::from_size_align(4 << 30, 4096).expect("valid layout");
    // black_box keeps the compiler from eliding the allocation (and assuming it succeeded).
    // SAFETY: a non-zero-size layout; the result is checked and never dereferenced.
    let pointer = core::hint::black_box(unsafe { alloc::alloc::alloc(layout) });
    if !pointer.is_null() {
        // SAFETY: allocated just above with this layout.
        unsafe { alloc::alloc::dealloc(pointer, layout) };
    }
    assert!(
        pointer.is_null(),
        "a 4 GiB allocation succeeded in a 2 GiB guest"
    );
    assert_eq!(
        crate::mm::heap::stats().grown,
        grown_before,
        "a refused allocation took memory"
    );
}

#[test_case]
fn command_line_splits_words_and_rejects_bad_ones() {
    let (pairs, malformed) = cmdline::split("scenario=reclaim  sched.timeslice_ms=5 bare =x");
    assert_eq!(
        pairs,
        [("scenario", "reclaim"), ("sched.timeslice_ms", "5")]
    );
    assert_eq!(malformed, ["bare", "=x"]);
    assert_eq!(
        cmdline::apply("nonsense.key", "1"),
        Err(cmdline::WordError::UnknownKey("nonsense.key"))
    );
    assert!(matches!(
        cmdline::apply("sched.timeslice_ms", "abc"),
        Err(cmdline::WordError::BadValue { .. })
    ));
    assert!(matches!(
        cmdline::apply("sched.timeslice_ms", "0"),
        Err(cmdline::WordError::BadValue { .. })
    ));
    assert_eq!(
        tunables::SCHED_TIMESLICE_MS.get(),
        tunables::SCHED_TIMESLICE_MS.default
    );
    assert_eq!(cmdline::apply("sched.timeslice_ms", "20"), Ok(()));
    assert_eq!(tunables::SCHED_TIMESLICE_MS.get(), 20);
    tunables::SCHED_TIMESLICE_MS
        .set(tunables::SCHED_TIMESLICE_MS.default)
        .expect("default is in range");
}

#[test_case]
fn kernel_image_is_mapped_write_xor_execute() {
    use x86_64::structures::paging::PageTableFlags as Flags;
    let layout = boot::kernel_layout();
    let text = crate::mm::paging::translate_flags(layout.text.start).expect("text mapped");
    assert!(
        !text.contains(Flags::WRITABLE) && !text.contains(Flags::NO_EXECUTE),
        "text {text:?}"
    );
    let rodata = crate::mm::paging::translate_flags(layout.rodata.start).expect("rodata mapped");
    assert!(
        !rodata.contains(Flags::WRITABLE) && rodata.contains(Flags::NO_EXECUTE),
        "rodata {rodata:?}"
    );
    let data = crate::mm::paging::translate_flags(layout.data.start).expect("data mapped");
    assert!(
        data.contains(Flags::WRITABLE) && data.contains(Flags::NO_EXECUTE),
        "data {data:?}"
    );
    // A write to the kernel's own code is a protection violation, caught.
    // SAFETY: text is read-only, so the write cannot land.
    let fault =
        unsafe { extable::probe_write_u64(layout.text.start, 0) }.expect_err("text is read-only");
    let error = PageFaultErrorCode::from_bits_truncate(fault.error_code);
    assert!(
        error.contains(
            PageFaultErrorCode::PROTECTION_VIOLATION | PageFaultErrorCode::CAUSED_BY_WRITE
        )
    );
}

#[test_case]
fn direct_map_uses_large_pages_and_the_boot_stack_has_a_guard() {
    use x86_64::structures::paging::PageTableFlags as Flags;
    // Halfway up the RAM the allocator manages, whatever the guest's size.
    let end_pfn = crate::mm::page_alloc::all_zones()
        .last()
        .expect("a zone")
        .end_pfn;
    let middle_of_ram = crate::mm::phys_to_virt(end_pfn / 2 * crate::mm::PAGE_SIZE);
    let flags = crate::mm::paging::translate_flags(middle_of_ram).expect("RAM is direct-mapped");
    assert!(
        flags.contains(Flags::HUGE_PAGE | Flags::NO_EXECUTE),
        "{flags:?}"
    );
    let guard = boot::kernel_layout().boot_stack_guard;
    assert!(crate::mm::paging::translate_flags(guard).is_none());
    assert_eq!(
        extable::probe_read_u64(guard).map_err(|fault| fault.address),
        Err(guard)
    );
}

#[test_case]
fn thread_stacks_have_unmapped_guard_pages_and_are_freed() {
    let free_before = {
        crate::mm::page_alloc::drain_per_cpu_caches();
        crate::mm::page_alloc::free_pages()
    };
    let mut stack = crate::mm::stack::KernelStack::new().expect("memory for a stack");
    stack.words()[0] = 1;
    assert!(crate::mm::paging::translate_flags(stack.bottom()).is_some());
    assert_eq!(
        extable::probe_read_u64(stack.guard_page()).map_err(|fault| fault.address),
        Err(stack.guard_page())
    );
    assert!(crate::mm::stack::is_guard_page(stack.guard_page()));
    let bottom = stack.bottom();
    drop(stack);
    assert!(
        crate::mm::paging::translate_flags(bottom).is_none(),
        "a freed stack stays unmapped"
    );
    crate::mm::page_alloc::drain_per_cpu_caches();
    assert_eq!(crate::mm::page_alloc::free_pages(), free_before);
}

#[test_case]
fn spawning_a_thread_without_memory_for_its_stack_fails_cleanly() {
    use crate::mm::page_alloc::{self, AllocRequest};
    use crate::mm::stack::STACK_ORDER;
    // Take every block a stack could use, then ask for a thread.
    let mut held = Vec::new();
    while let Some(pages) =
        page_alloc::alloc(AllocRequest::new(STACK_ORDER).without_balloon_deflate())
    {
        held.push(pages);
    }
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let spawned = task::spawn("no stack", move || flag.store(true, Ordering::Relaxed));
    let refused = matches!(spawned, Err(task::SpawnError::NoStack));
    for pages in held {
        page_alloc::free(pages).expect("free");
    }
    assert!(
        refused,
        "spawn without memory: {:?}",
        spawned.map(|h| h.id())
    );
    task::yield_now();
    assert!(!ran.load(Ordering::Relaxed), "a refused thread never runs");
    // Memory back: threads start again.
    let handle = task::spawn("stack again", || 7).expect("thread starts");
    assert_eq!(handle.join(), 7);
}
