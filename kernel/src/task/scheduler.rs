//! The scheduler: thread records, the ready queue, timed wake-ups, the context-switch protocol
//! and preemption on the timer tick.
//!
//! Owns every kernel thread's record and stack. The only way in from elsewhere is the public
//! functions below and the wait-queue hooks (`prepare_wait`, `commit_wait`, `wake`).
//!
//! Protocol: every switch happens with interrupts off. The outgoing thread records its new state
//! and stack pointer; the incoming one runs [`finish_switch`], which puts the outgoing thread on
//! the ready queue or frees it if it exited. A wait is two steps (`prepare_wait` hands out a
//! token, `commit_wait` sleeps on it) so that a wake-up arriving between them is not lost.

use crate::arch::{self, context};
use crate::mm::stack::KernelStack;
use crate::sync::{IrqMutex, IrqMutexGuard};
use crate::time::Instant;
use crate::tunables;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use core::cmp::Reverse;
use core::time::Duration;
use x86_64::instructions::interrupts;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThreadId(u64);

impl ThreadId {
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Ready,
    Sleeping,
    Blocked,
    Dead,
}

/// Why a blocked thread runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WakeReason {
    Woken,
    TimedOut,
}

/// Names one wait of one thread; stale tokens (from an earlier wait) wake nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaitToken {
    thread: ThreadId,
    generation: u64,
}

struct Thread {
    id: ThreadId,
    name: String,
    state: State,
    saved_rsp: u64,
    /// `None` for the boot thread, which runs on the boot stack.
    _stack: Option<KernelStack>,
    entry: Option<Box<dyn FnOnce() + Send>>,
    wait_generation: u64,
    wake_reason: WakeReason,
    /// A wake-up for the current wait arrived before the thread committed to it.
    wake_pending: bool,
    /// The user address space (PML4) this thread runs in; `None`: the kernel's tables.
    address_space: Option<u64>,
    /// Its ring-3 entry stack (TSS.RSP0), part of its context while it runs a task.
    kernel_entry_stack: u64,
}

/// Counters of the scheduler since boot.
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedulerStats {
    /// Timer interrupts taken (the timer is one-shot: it fires only for a deadline or the end
    /// of a time slice, never while the kernel is idle with nothing to wake).
    pub timer_interrupts: u64,
    pub context_switches: u64,
    /// Switches forced by the timer tick on a thread that had used up its time slice.
    pub preemptions: u64,
    pub threads_spawned: u64,
    pub threads_exited: u64,
    pub live_threads: usize,
}

struct Scheduler {
    threads: BTreeMap<ThreadId, Box<Thread>>,
    ready: VecDeque<ThreadId>,
    /// (deadline in ns, sequence, thread, generation), earliest first.
    timers: BinaryHeap<Reverse<(u64, u64, ThreadId, u64)>>,
    current: ThreadId,
    idle: Option<ThreadId>,
    /// The thread that just switched out, waiting for `finish_switch`.
    handoff: Option<ThreadId>,
    next_id: u64,
    timer_sequence: u64,
    /// When the running thread's time slice began (ns since boot).
    slice_start_ns: u64,
    /// The deadline the one-shot timer is armed for, if any.
    armed_deadline: Option<u64>,
    stats: SchedulerStats,
}

static SCHEDULER: IrqMutex<Option<Scheduler>> = IrqMutex::new(None);

type Guard = IrqMutexGuard<'static, Option<Scheduler>>;

impl Scheduler {
    fn thread(&mut self, id: ThreadId) -> &mut Thread {
        self.threads.get_mut(&id).expect("thread record exists")
    }

    fn add_thread(
        &mut self,
        name: &str,
        stack: Option<KernelStack>,
        saved_rsp: u64,
        state: State,
    ) -> ThreadId {
        let id = ThreadId(self.next_id);
        self.next_id += 1;
        let thread = Thread {
            id,
            name: name.to_string(),
            state,
            saved_rsp,
            _stack: stack,
            entry: None,
            wait_generation: 0,
            wake_reason: WakeReason::Woken,
            wake_pending: false,
            address_space: None,
            kernel_entry_stack: 0,
        };
        self.threads.insert(id, Box::new(thread));
        id
    }

    fn add_timer(&mut self, deadline: Instant, thread: ThreadId, generation: u64) {
        self.timer_sequence += 1;
        self.timers.push(Reverse((
            deadline.as_nanos(),
            self.timer_sequence,
            thread,
            generation,
        )));
        self.arm_timer();
    }

    /// Arms the one-shot timer for the earliest of: the next timed wake-up, and the end of the
    /// running thread's slice if another thread is waiting for the CPU. Leaves an earlier
    /// arming alone (an early interrupt only finds nothing to do and re-arms).
    fn arm_timer(&mut self) {
        let mut next = self.timers.peek().map(|Reverse((deadline, ..))| *deadline);
        if !self.ready.is_empty() && Some(self.current) != self.idle {
            let slice_end = self.slice_start_ns + tunables::sched_timeslice_ns();
            next = Some(next.map_or(slice_end, |deadline| deadline.min(slice_end)));
        }
        let Some(deadline) = next else { return };
        if self.armed_deadline.is_some_and(|armed| armed <= deadline) {
            return;
        }
        self.armed_deadline = Some(deadline);
        let now = crate::time::uptime_ns().unwrap_or(0);
        arch::apic::arm_oneshot(deadline.saturating_sub(now));
    }

    /// Makes a blocked or sleeping thread runnable if `generation` names its current wait.
    fn wake_thread(&mut self, id: ThreadId, generation: u64, reason: WakeReason) -> bool {
        let Some(thread) = self.threads.get_mut(&id) else {
            return false;
        };
        if thread.wait_generation != generation {
            return false;
        }
        match thread.state {
            State::Blocked | State::Sleeping => {
                thread.state = State::Ready;
                thread.wake_reason = reason;
                self.ready.push_back(id);
                self.arm_timer();
                true
            }
            State::Running | State::Ready if reason == WakeReason::Woken => {
                thread.wake_pending = true;
                true
            }
            _ => false,
        }
    }

    fn expire_timers(&mut self, now: u64) {
        while let Some(&Reverse((deadline, _, id, generation))) = self.timers.peek() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            self.wake_thread(id, generation, WakeReason::TimedOut);
        }
    }
}

/// Makes the running boot flow the thread "main" and creates the idle thread.
pub fn init() {
    let mut guard = SCHEDULER.lock();
    assert!(guard.is_none(), "scheduler initialised twice");
    let mut scheduler = Scheduler {
        threads: BTreeMap::new(),
        ready: VecDeque::with_capacity(64),
        timers: BinaryHeap::with_capacity(64),
        current: ThreadId(0),
        idle: None,
        handoff: None,
        next_id: 0,
        timer_sequence: 0,
        slice_start_ns: 0,
        armed_deadline: None,
        stats: SchedulerStats {
            live_threads: 0,
            ..Default::default()
        },
    };
    scheduler.current = scheduler.add_thread("main", None, 0, State::Running);
    // At boot, before anything else runs: a kernel without an idle thread cannot go on.
    let (stack, rsp) = new_stack().expect("boot: no memory for the idle thread's stack");
    let idle = scheduler.add_thread("idle", Some(stack), rsp, State::Ready);
    scheduler.thread(idle).entry = Some(Box::new(idle_loop));
    scheduler.idle = Some(idle);
    *guard = Some(scheduler);
}

/// Why a kernel thread could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnError {
    /// No memory (or no stack slot) for its stack; `KernelStack::new` has logged which.
    NoStack,
}

fn new_stack() -> Result<(KernelStack, u64), SpawnError> {
    let mut stack = KernelStack::new().ok_or(SpawnError::NoStack)?;
    let rsp = context::prepare_stack(stack.words(), thread_start);
    Ok((stack, rsp))
}

fn with_scheduler<R>(f: impl FnOnce(&mut Scheduler) -> R) -> R {
    let mut guard = SCHEDULER.lock();
    f(guard.as_mut().expect("scheduler initialised"))
}

/// Switches from the current thread, which takes `new_state`, to the next runnable one.
/// Interrupts must already be off (they stay off until the caller's frame restores them).
fn switch_away(mut guard: Guard, new_state: State) {
    debug_assert!(!interrupts::are_enabled());
    let scheduler = guard.as_mut().expect("scheduler initialised");
    let current = scheduler.current;
    let idle = scheduler.idle.expect("idle thread exists");
    let next = match scheduler.ready.pop_front() {
        Some(next) => next,
        None if new_state == State::Ready => return,
        None => idle,
    };
    if next == current {
        scheduler.thread(current).state = State::Running;
        return;
    }
    scheduler.thread(current).state = new_state;
    scheduler.thread(next).state = State::Running;
    scheduler.handoff = Some(current);
    scheduler.current = next;
    scheduler.slice_start_ns = crate::time::uptime_ns().unwrap_or(0);
    scheduler.stats.context_switches += 1;
    scheduler.arm_timer();
    scheduler.thread(current).kernel_entry_stack = arch::gdt::kernel_entry_stack();
    let incoming = scheduler.thread(next);
    arch::gdt::set_kernel_entry_stack(incoming.kernel_entry_stack);
    crate::mm::paging::activate(
        incoming
            .address_space
            .unwrap_or_else(crate::mm::paging::kernel_pml4_phys),
    );
    let save: *mut u64 = &mut scheduler.thread(current).saved_rsp;
    let load = scheduler.thread(next).saved_rsp;
    drop(guard);
    // SAFETY: interrupts are off; `save` points into the outgoing thread's boxed record, which
    // is freed only by `finish_switch` after this switch completed; `load` was saved by `switch`
    // or prepared by `prepare_stack` for a stack owned by the incoming thread's record.
    unsafe { context::switch(save, load) };
    finish_switch();
}

/// Runs on the incoming thread right after a switch: settles the outgoing thread.
fn finish_switch() {
    let dead = with_scheduler(|scheduler| {
        let previous = scheduler.handoff.take()?;
        let state = scheduler.thread(previous).state;
        match state {
            State::Ready if Some(previous) != scheduler.idle => {
                scheduler.ready.push_back(previous);
                scheduler.arm_timer();
            }
            State::Dead => {
                scheduler.stats.threads_exited += 1;
                return scheduler.threads.remove(&previous);
            }
            _ => {}
        }
        None
    });
    // The exited thread's stack is freed here, on another stack, outside the scheduler lock.
    drop(dead);
}

/// First code of every new thread (entered with interrupts off, from `prepare_stack`).
extern "C" fn thread_start() -> ! {
    finish_switch();
    let entry = with_scheduler(|scheduler| {
        let current = scheduler.current;
        scheduler.thread(current).entry.take()
    });
    interrupts::enable();
    if let Some(entry) = entry {
        entry();
    }
    exit_current()
}

fn idle_loop() {
    loop {
        interrupts::disable();
        let work = with_scheduler(|scheduler| !scheduler.ready.is_empty());
        if work {
            interrupts::enable();
            yield_now();
        } else {
            // STI;HLT: atomically re-enables interrupts and waits for the next one.
            interrupts::enable_and_hlt();
        }
    }
}

/// The result of a thread, delivered to [`JoinHandle::join`].
struct JoinSlot<T> {
    value: IrqMutex<Option<T>>,
    finished: super::WaitQueue,
}

/// Owns the right to collect a spawned thread's result.
pub struct JoinHandle<T> {
    id: ThreadId,
    slot: Arc<JoinSlot<T>>,
}

impl<T> JoinHandle<T> {
    pub fn id(&self) -> ThreadId {
        self.id
    }

    pub fn is_finished(&self) -> bool {
        self.slot.value.lock().is_some()
    }

    /// Waits for the thread to return and gives its result.
    pub fn join(self) -> T {
        self.slot
            .finished
            .wait_until(|| self.slot.value.lock().is_some());
        self.slot
            .value
            .lock()
            .take()
            .expect("result present once finished")
    }

    /// Waits at most `timeout`; `Err(self)` if the thread has not returned by then.
    pub fn join_timeout(self, timeout: Duration) -> Result<T, Self> {
        let outcome = self
            .slot
            .finished
            .wait_until_timeout(|| self.slot.value.lock().is_some(), timeout);
        match outcome {
            super::WaitResult::Satisfied => {
                Ok(self.slot.value.lock().take().expect("result present"))
            }
            super::WaitResult::TimedOut => Err(self),
        }
    }
}

/// Starts a kernel thread running `f`; it is runnable at once. Fails (and `f` is dropped) when
/// there is no memory for its stack.
pub fn spawn<F, T>(name: &str, f: F) -> Result<JoinHandle<T>, SpawnError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let slot = Arc::new(JoinSlot {
        value: IrqMutex::new(None),
        finished: super::WaitQueue::new(),
    });
    let thread_slot = slot.clone();
    let entry: Box<dyn FnOnce() + Send> = Box::new(move || {
        let value = f();
        *thread_slot.value.lock() = Some(value);
        thread_slot.finished.wake_all();
    });
    let (stack, rsp) = new_stack()?;
    let id = with_scheduler(|scheduler| {
        let id = scheduler.add_thread(name, Some(stack), rsp, State::Ready);
        // Room for every thread in the ready queue, so that waking one never allocates.
        let threads = scheduler.threads.len();
        scheduler
            .ready
            .reserve(threads.saturating_sub(scheduler.ready.len()));
        scheduler.thread(id).entry = Some(entry);
        scheduler.ready.push_back(id);
        scheduler.arm_timer();
        scheduler.stats.threads_spawned += 1;
        id
    });
    Ok(JoinHandle { id, slot })
}

/// Gives the CPU to the next ready thread, if any.
pub fn yield_now() {
    interrupts::without_interrupts(|| switch_away(SCHEDULER.lock(), State::Ready));
}

/// Sleeps for at least `duration` (the tick sets the resolution).
pub fn sleep(duration: Duration) {
    let deadline = Instant::now() + duration;
    interrupts::without_interrupts(|| {
        let mut guard = SCHEDULER.lock();
        let scheduler = guard.as_mut().expect("scheduler initialised");
        let current = scheduler.current;
        let thread = scheduler.thread(current);
        thread.wait_generation += 1;
        let generation = thread.wait_generation;
        scheduler.add_timer(deadline, current, generation);
        switch_away(guard, State::Sleeping);
    });
}

/// Runs the current thread in the user address space whose top-level table is `pml4_phys`
/// (loaded now and on every switch back to this thread), or in the kernel's tables (`None`).
/// The space must outlive the binding: unbind before dropping it.
pub fn bind_address_space(pml4_phys: Option<u64>) {
    interrupts::without_interrupts(|| {
        with_scheduler(|scheduler| {
            let current = scheduler.current;
            scheduler.thread(current).address_space = pml4_phys;
        });
        crate::mm::paging::activate(pml4_phys.unwrap_or_else(crate::mm::paging::kernel_pml4_phys));
    });
}

/// Ends the current thread. Its stack is freed by the next thread to run.
pub fn exit_current() -> ! {
    interrupts::disable();
    switch_away(SCHEDULER.lock(), State::Dead);
    unreachable!("a dead thread was scheduled again");
}

/// Starts a wait: the returned token must be published (to a wait queue) before `commit_wait`.
pub(crate) fn prepare_wait() -> WaitToken {
    with_scheduler(|scheduler| {
        let current = scheduler.current;
        let thread = scheduler.thread(current);
        thread.wait_generation += 1;
        thread.wake_pending = false;
        WaitToken {
            thread: current,
            generation: thread.wait_generation,
        }
    })
}

/// Blocks until `wake(token)` or `deadline`. Interrupts must be off.
pub(crate) fn commit_wait(token: WaitToken, deadline: Option<Instant>) -> WakeReason {
    let mut guard = SCHEDULER.lock();
    let scheduler = guard.as_mut().expect("scheduler initialised");
    debug_assert_eq!(scheduler.current, token.thread);
    let thread = scheduler.thread(token.thread);
    if thread.wake_pending {
        thread.wake_pending = false;
        return WakeReason::Woken;
    }
    if let Some(deadline) = deadline {
        scheduler.add_timer(deadline, token.thread, token.generation);
    }
    switch_away(guard, State::Blocked);
    with_scheduler(|scheduler| scheduler.thread(token.thread).wake_reason)
}

/// Wakes the wait `token` names; false if that wait is over (stale token) or the thread is gone.
pub(crate) fn wake(token: WaitToken) -> bool {
    with_scheduler(|scheduler| {
        scheduler.wake_thread(token.thread, token.generation, WakeReason::Woken)
    })
}

/// Called by the timer interrupt: wakes expired sleepers and preempts a thread whose slice is
/// used up when another is ready.
pub fn timer_tick() {
    let Some(mut guard) = SCHEDULER.try_lock() else {
        return;
    };
    let Some(scheduler) = guard.as_mut() else {
        return;
    };
    scheduler.stats.timer_interrupts += 1;
    scheduler.armed_deadline = None;
    let now = crate::time::uptime_ns().unwrap_or(0);
    scheduler.expire_timers(now);
    let on_idle = Some(scheduler.current) == scheduler.idle;
    let slice_over = now >= scheduler.slice_start_ns + tunables::sched_timeslice_ns();
    if !scheduler.ready.is_empty() && (on_idle || slice_over) {
        if !on_idle {
            scheduler.stats.preemptions += 1;
        }
        switch_away(guard, State::Ready);
    } else {
        scheduler.arm_timer();
    }
}

/// Starts the one-shot timer that drives timed wake-ups and preemption.
pub fn start_timer() {
    arch::apic::enable_oneshot();
    with_scheduler(|scheduler| scheduler.arm_timer());
}

pub fn current_id() -> ThreadId {
    with_scheduler(|scheduler| scheduler.current)
}

/// The current thread, or `None` before the scheduler exists or while its lock is held (for the
/// panic path).
pub fn try_current_id() -> Option<ThreadId> {
    let guard = SCHEDULER.try_lock()?;
    guard.as_ref().map(|scheduler| scheduler.current)
}

/// The current thread's name; `None` before the scheduler exists or if its lock is held (the
/// panic path calls this).
pub fn current_name() -> Option<String> {
    let guard = SCHEDULER.try_lock()?;
    let scheduler = guard.as_ref()?;
    scheduler
        .threads
        .get(&scheduler.current)
        .map(|thread| thread.name.clone())
}

pub fn stats() -> SchedulerStats {
    with_scheduler(|scheduler| SchedulerStats {
        live_threads: scheduler.threads.len(),
        ..scheduler.stats
    })
}

/// Name and state of every thread, for the console.
pub fn thread_list() -> alloc::vec::Vec<(u64, String, &'static str)> {
    with_scheduler(|scheduler| {
        scheduler
            .threads
            .values()
            .map(|thread| {
                let state = match thread.state {
                    State::Running => "running",
                    State::Ready => "ready",
                    State::Sleeping => "sleeping",
                    State::Blocked => "blocked",
                    State::Dead => "dead",
                };
                (thread.id.0, thread.name.clone(), state)
            })
            .collect()
    })
}
