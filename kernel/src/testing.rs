//! The in-guest test framework (`custom_test_frameworks`).
//!
//! Each test runs in its own kernel thread with a time limit. A test fails by panicking: the
//! panic handler sees that the panicking thread is the running test, records the message and
//! ends only that thread, so the run continues and closes with `N passed, N failed`. The kernel
//! exits with failure if any test failed or timed out.

use crate::sync::IrqMutex;
use crate::task::{self, ThreadId, WaitQueue};
use crate::time::Instant;
use alloc::string::{String, ToString};
use core::panic::PanicInfo;
use core::time::Duration;

/// How long one test may run (the `test.time_limit_s` tunable).
fn time_limit() -> Duration {
    Duration::from_secs(crate::tunables::TEST_TIME_LIMIT_S.get())
}

/// Anything the runner can run: a `#[test_case]` function.
pub trait Testable: Sync {
    fn name(&self) -> &'static str;
    fn run(&self);
}

impl<T: Fn() + Sync> Testable for T {
    fn name(&self) -> &'static str {
        core::any::type_name::<T>()
    }
    fn run(&self) {
        self()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Running,
    Passed,
    Failed(String),
}

struct CurrentTest {
    thread: Option<ThreadId>,
    outcome: Outcome,
}

static CURRENT: IrqMutex<CurrentTest> = IrqMutex::new(CurrentTest {
    thread: None,
    outcome: Outcome::Running,
});
static DONE: WaitQueue = WaitQueue::new();

/// Runs every test and exits QEMU with the overall result.
pub fn run_tests(tests: &[&'static dyn Testable]) -> ! {
    let filter = crate::cmdline::value("test");
    let skip = crate::cmdline::value("skip");
    let selected: alloc::vec::Vec<_> = tests
        .iter()
        .filter(|test| filter.is_none_or(|text| test.name().contains(text)))
        .filter(|test| skip.is_none_or(|text| !test.name().contains(text)))
        .collect();
    let skipped = tests.len() - selected.len();
    // Tests start on initialised memory, with no background thread writing records (which
    // would share the CPU with tests that time things), unless the kernel holds the worker to
    // test deferred memory itself.
    if !crate::mm::deferred_init::is_held() {
        if !crate::mm::deferred_init::wait_until_done(core::time::Duration::from_secs(60)) {
            log::warn!("deferred init not done after 60 s: tests start anyway");
        }
        // Its end asks free page reporting for a pass over the new memory: let it finish too,
        // as the kernels' mains do for the first pass.
        let start = crate::time::Instant::now();
        while !crate::mm::reporting::is_idle()
            && start.elapsed() < core::time::Duration::from_secs(10)
        {
            crate::task::sleep(core::time::Duration::from_millis(5));
        }
    }
    crate::println!("running {} tests ({skipped} filtered out)", selected.len());

    let (mut passed, mut failed) = (0, 0);
    for test in selected {
        if run_one(*test) {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    crate::println!("{passed} passed, {failed} failed");
    crate::qemu::exit(if failed == 0 {
        crate::qemu::ExitCode::Success
    } else {
        crate::qemu::ExitCode::Failure
    })
}

fn run_one(test: &'static dyn Testable) -> bool {
    let name = test.name().strip_prefix("kernel::").unwrap_or(test.name());
    *CURRENT.lock() = CurrentTest {
        thread: None,
        outcome: Outcome::Running,
    };
    let start = Instant::now();
    let spawned = task::spawn(name, move || {
        CURRENT.lock().thread = Some(task::current_id());
        test.run();
        CURRENT.lock().outcome = Outcome::Passed;
        DONE.wake_all();
    });
    let handle = match spawned {
        Ok(handle) => handle,
        Err(error) => {
            crate::println!("test {name} ... FAILED: no thread to run it in ({error:?})");
            return false;
        }
    };
    let finished =
        DONE.wait_until_timeout(|| CURRENT.lock().outcome != Outcome::Running, time_limit());
    let elapsed = start.elapsed();
    let time = format_args!(
        "{}.{:03} ms",
        elapsed.as_micros() / 1000,
        elapsed.as_micros() % 1000
    );
    let outcome = core::mem::replace(&mut CURRENT.lock().outcome, Outcome::Running);
    match (finished, outcome) {
        (task::WaitResult::Satisfied, Outcome::Passed) => {
            handle.join();
            crate::println!("test {name} ... ok ({time})");
            true
        }
        (_, Outcome::Failed(message)) => {
            crate::println!("test {name} ... FAILED ({time})\n    {message}");
            false
        }
        _ => {
            crate::println!(
                "test {name} ... FAILED: no result within {}s (hung?)",
                time_limit().as_secs()
            );
            // The thread is stuck; nothing more can be trusted to finish: report and stop.
            crate::println!("0 passed, 1 failed");
            crate::qemu::exit(crate::qemu::ExitCode::Failure)
        }
    }
}

/// Called first by the panic handler: if the panicking thread is the running test, records the
/// failure and ends that thread (never returns). Otherwise returns, and the panic is fatal.
pub fn absorb_test_panic(info: &PanicInfo) {
    // A thread that panicked holding a lock can never release it: going on would hang the
    // next user of that lock (and recording the failure allocates). Such a panic is fatal.
    if crate::sync::held_classes() != 0 || !crate::sync::preemptible() {
        return;
    }
    let Some(current) = crate::task::scheduler::try_current_id() else {
        return;
    };
    let Some(mut state) = CURRENT.try_lock() else {
        return;
    };
    if state.thread != Some(current) || state.outcome != Outcome::Running {
        return;
    }
    let location = info.location().map(|l| l.to_string()).unwrap_or_default();
    state.outcome = Outcome::Failed(alloc::format!("panicked at {location}: {}", info.message()));
    drop(state);
    DONE.wake_all();
    task::exit_current()
}

/// Takes free pages until the allocator refuses (2 MiB blocks first, so the list stays short),
/// at most `most` blocks, without deflating the balloon or compacting: for tests of what
/// happens when memory is exhausted. The caller frees them.
pub fn take_free_memory(most: usize) -> alloc::vec::Vec<crate::mm::page_alloc::Pages> {
    use crate::mm::buddy::MigrateType;
    use crate::mm::page_alloc::{self, AllocRequest};
    let mut held = alloc::vec::Vec::with_capacity(most);
    for order in [9u8, 0] {
        let request = AllocRequest::new(order)
            .kind(MigrateType::Movable)
            .without_balloon_deflate()
            .without_compaction(true);
        while held.len() < held.capacity() {
            match page_alloc::alloc(request) {
                Some(block) => held.push(block),
                None => break,
            }
        }
    }
    held
}
