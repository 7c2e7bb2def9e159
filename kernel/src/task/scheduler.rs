//! The scheduler: thread records, the ready queue, timed wake-ups, wait-queue waiters, the
//! context-switch protocol and preemption on the timer tick.
//!
//! Owns every kernel thread's record and stack. The only way in from elsewhere is the public
//! functions below and the wait-queue hooks (`prepare_wait`, `commit_wait`, `cancel_wait`,
//! `wake_queue`).
//!
//! Protocol: every switch happens with interrupts off. The outgoing thread records its new state
//! and stack pointer; the incoming one runs [`finish_switch`], which puts the outgoing thread on
//! the ready queue or frees it if it exited. A wait is two steps (`prepare_wait` registers the
//! thread as a waiter of its queue, `commit_wait` sleeps) so that a wake-up arriving between
//! them is not lost.
//!
//! The scheduler's lock is the innermost lock of the kernel but for the serial port (see
//! [`crate::sync`]): nothing under it allocates or frees heap memory or calls out, so any code,
//! including the allocator's and the heap's own paths, may wake a thread. Its containers get
//! their room before the lock is taken ([`reserve_room`]): the thread table, the ready queue
//! and the timer heap always hold one entry per thread, and the timer heap drops stale entries
//! when full instead of growing.

use crate::arch::{self, context};
use crate::mm::stack::KernelStack;
use crate::sync::{IrqMutex, IrqMutexGuard, LockClass};
use crate::time::Instant;
use crate::tunables;
use alloc::boxed::Box;
use alloc::collections::{BinaryHeap, VecDeque};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use core::time::Duration;
use x86_64::instructions::interrupts;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThreadId(u64);

impl ThreadId {
    pub fn as_u64(self) -> u64 {
        self.0
    }
    /// The id whose [`ThreadId::as_u64`] is `id` (for code that stores ids in atomics).
    pub fn from_u64(id: u64) -> ThreadId {
        ThreadId(id)
    }
}

/// A thread's name, stored inline so that reading it never allocates (the panic path and the
/// console read it). Longer names are cut at a character boundary.
#[derive(Clone, Copy)]
pub struct ThreadName {
    bytes: [u8; 31],
    len: u8,
}

impl ThreadName {
    fn new(name: &str) -> ThreadName {
        let mut len = name.len().min(31);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; 31];
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        ThreadName {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("?")
    }
}

impl Default for ThreadName {
    /// "?": a thread whose name cannot be read.
    fn default() -> ThreadName {
        ThreadName::new("?")
    }
}

impl core::fmt::Display for ThreadName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::fmt::Debug for ThreadName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
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

/// Identifies a wait queue: its address, stable while anyone waits on it (a waiter holds a
/// reference to the queue). Zero means "no queue".
pub(crate) type QueueKey = usize;

struct Thread {
    id: ThreadId,
    name: ThreadName,
    state: State,
    saved_rsp: u64,
    /// `None` for the boot thread, which runs on the boot stack.
    _stack: Option<KernelStack>,
    entry: Option<Box<dyn FnOnce() + Send>>,
    wait_generation: u64,
    wake_reason: WakeReason,
    /// A wake-up for the current wait arrived before the thread committed to it.
    wake_pending: bool,
    /// The wait queue this thread waits on (0: none), and its place in that queue's line.
    waiting_on: QueueKey,
    wait_ticket: u64,
    /// The user address space (PML4) this thread runs in; `None`: the kernel's tables.
    address_space: Option<u64>,
    /// Its ring-3 entry stack (TSS.RSP0), part of its context while it runs a task.
    kernel_entry_stack: u64,
    /// CPU time used, up to its last switch out (ns).
    run_ns: u64,
}

/// Counters of the scheduler since boot.
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedulerStats {
    /// Timer interrupts taken (the timer is one-shot: it fires only for a deadline or the end
    /// of a time slice, never while the kernel is idle with nothing to wake).
    pub timer_interrupts: u64,
    /// Timer interrupts that found the scheduler's lock taken, or a preemption-only lock held
    /// (`sync::PreemptMutex`), and were retried shortly after.
    pub ticks_deferred: u64,
    pub context_switches: u64,
    /// Switches forced by the timer tick on a thread that had used up its time slice.
    pub preemptions: u64,
    pub threads_spawned: u64,
    pub threads_exited: u64,
    pub live_threads: usize,
}

struct Scheduler {
    /// Every thread, in id order (ids only grow, so a new thread goes at the end). Boxed: a
    /// record stays where it is while a switch saves its stack pointer into it, and removing
    /// one moves pointers only.
    #[allow(clippy::vec_box)]
    threads: Vec<Box<Thread>>,
    ready: VecDeque<ThreadId>,
    /// (deadline in ns, sequence, thread, generation), earliest first.
    timers: BinaryHeap<Reverse<(u64, u64, ThreadId, u64)>>,
    current: ThreadId,
    idle: Option<ThreadId>,
    /// The thread that just switched out, waiting for `finish_switch`.
    handoff: Option<ThreadId>,
    next_id: u64,
    timer_sequence: u64,
    next_ticket: u64,
    /// When the running thread's time slice began (ns since boot).
    slice_start_ns: u64,
    /// The deadline the one-shot timer is armed for, if any.
    armed_deadline: Option<u64>,
    stats: SchedulerStats,
}

static SCHEDULER: IrqMutex<Option<Scheduler>> = IrqMutex::with_class(None, LockClass::Scheduler);
/// Timer interrupts that found the lock taken (kept outside it: they could not take it).
static TICKS_DEFERRED: AtomicU64 = AtomicU64::new(0);
/// How soon a tick that found the lock taken is retried.
const TICK_RETRY_NS: u64 = 50_000;

type Guard = IrqMutexGuard<'static, Option<Scheduler>>;

impl Scheduler {
    fn position(&self, id: ThreadId) -> Option<usize> {
        self.threads
            .binary_search_by_key(&id, |thread| thread.id)
            .ok()
    }

    fn get(&mut self, id: ThreadId) -> Option<&mut Thread> {
        let at = self.position(id)?;
        Some(&mut self.threads[at])
    }

    fn thread(&mut self, id: ThreadId) -> &mut Thread {
        self.get(id).expect("thread record exists")
    }

    /// Whether the containers can take `more` threads without allocating.
    fn has_room_for(&self, more: usize) -> bool {
        let wanted = self.threads.len() + more;
        self.threads.capacity() >= wanted
            && self.ready.capacity() >= wanted
            && self.timers.capacity() >= wanted
    }

    /// Adds a thread record made outside the lock. The caller made room ([`reserve_room`]).
    fn add_thread(&mut self, mut thread: Box<Thread>) -> ThreadId {
        debug_assert!(self.has_room_for(1), "room reserved before the lock");
        let id = ThreadId(self.next_id);
        self.next_id += 1;
        thread.id = id;
        self.threads.push(thread);
        id
    }

    fn add_timer(&mut self, deadline: Instant, thread: ThreadId, generation: u64) {
        if self.timers.len() == self.timers.capacity() {
            // Full: drop the entries of waits that are over (at most one live entry per thread
            // remains, and there is room for one per thread), instead of growing under the lock.
            let threads = &self.threads;
            self.timers.retain(|Reverse((_, _, id, generation))| {
                threads
                    .binary_search_by_key(id, |thread| thread.id)
                    .is_ok_and(|at| threads[at].wait_generation == *generation)
            });
        }
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
        let Some(thread) = self.get(id) else {
            return false;
        };
        if thread.wait_generation != generation {
            return false;
        }
        match thread.state {
            State::Blocked | State::Sleeping => {
                thread.state = State::Ready;
                thread.wake_reason = reason;
                thread.waiting_on = 0;
                self.ready.push_back(id);
                self.arm_timer();
                true
            }
            State::Running | State::Ready if reason == WakeReason::Woken => {
                thread.wake_pending = true;
                thread.waiting_on = 0;
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

fn new_thread(name: &str, stack: Option<KernelStack>, saved_rsp: u64, state: State) -> Box<Thread> {
    Box::new(Thread {
        id: ThreadId(u64::MAX),
        name: ThreadName::new(name),
        state,
        saved_rsp,
        _stack: stack,
        entry: None,
        wait_generation: 0,
        wake_reason: WakeReason::Woken,
        wake_pending: false,
        waiting_on: 0,
        wait_ticket: 0,
        address_space: None,
        kernel_entry_stack: 0,
        run_ns: 0,
    })
}

/// Makes the running boot flow the thread "main" and creates the idle thread.
pub fn init() {
    let room = 64;
    let mut scheduler = Scheduler {
        threads: Vec::with_capacity(room),
        ready: VecDeque::with_capacity(room),
        timers: BinaryHeap::with_capacity(room),
        current: ThreadId(0),
        idle: None,
        handoff: None,
        next_id: 0,
        timer_sequence: 0,
        next_ticket: 0,
        slice_start_ns: 0,
        armed_deadline: None,
        stats: SchedulerStats::default(),
    };
    scheduler.current = scheduler.add_thread(new_thread("main", None, 0, State::Running));
    // At boot, before anything else runs: a kernel without an idle thread cannot go on.
    let (stack, rsp) = new_stack().expect("boot: no memory for the idle thread's stack");
    let mut idle = new_thread("idle", Some(stack), rsp, State::Ready);
    idle.entry = Some(Box::new(idle_loop));
    scheduler.idle = Some(scheduler.add_thread(idle));
    let mut guard = SCHEDULER.lock();
    assert!(guard.is_none(), "scheduler initialised twice");
    *guard = Some(scheduler);
}

/// Makes room in the scheduler's containers for `more` threads, allocating outside its lock:
/// bigger containers are made first, then swapped in under the lock, and the old ones are
/// freed after it.
fn reserve_room(more: usize) {
    loop {
        let (threads, ready, timers) = with_scheduler(|scheduler| {
            if scheduler.has_room_for(more) {
                (0, 0, 0)
            } else {
                (
                    scheduler.threads.capacity(),
                    scheduler.ready.capacity(),
                    scheduler.timers.capacity(),
                )
            }
        });
        if threads == 0 {
            return;
        }
        let wanted = (threads.max(ready).max(timers) + more).max(16) * 2;
        let mut new_threads: Vec<Box<Thread>> = Vec::with_capacity(wanted);
        let mut new_ready: VecDeque<ThreadId> = VecDeque::with_capacity(wanted);
        let mut new_timers = BinaryHeap::with_capacity(wanted);
        with_scheduler(|scheduler| {
            if scheduler.threads.capacity() < wanted {
                new_threads.append(&mut scheduler.threads);
                core::mem::swap(&mut new_threads, &mut scheduler.threads);
            }
            if scheduler.ready.capacity() < wanted {
                new_ready.extend(scheduler.ready.drain(..));
                core::mem::swap(&mut new_ready, &mut scheduler.ready);
            }
            if scheduler.timers.capacity() < wanted {
                // (BinaryHeap::append would keep the larger heap, with its small capacity.)
                new_timers.extend(scheduler.timers.drain());
                core::mem::swap(&mut new_timers, &mut scheduler.timers);
            }
        });
        // The old containers (now in the `new_*` names) are freed here, after the lock.
    }
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
    let now = crate::time::uptime_ns().unwrap_or(0);
    let ran = now.saturating_sub(scheduler.slice_start_ns);
    scheduler.thread(current).run_ns += ran;
    scheduler.slice_start_ns = now;
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
    crate::sync::check_no_locks_held_at_switch();
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
                let at = scheduler.position(previous)?;
                return Some(scheduler.threads.remove(at));
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
    let mut thread = new_thread(name, Some(stack), rsp, State::Ready);
    thread.entry = Some(entry);
    reserve_room(1);
    let id = with_scheduler(|scheduler| {
        let id = scheduler.add_thread(thread);
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

/// Starts a wait on the queue `queue`: the current thread becomes one of its waiters (at the
/// end of its line) before the caller checks its condition, so a wake-up that comes between
/// the check and [`commit_wait`] is kept.
pub(crate) fn prepare_wait(queue: QueueKey) -> WaitToken {
    with_scheduler(|scheduler| {
        let current = scheduler.current;
        scheduler.next_ticket += 1;
        let ticket = scheduler.next_ticket;
        let thread = scheduler.thread(current);
        thread.wait_generation += 1;
        thread.wake_pending = false;
        thread.waiting_on = queue;
        thread.wait_ticket = ticket;
        WaitToken {
            thread: current,
            generation: thread.wait_generation,
        }
    })
}

/// Ends a prepared wait that will not be committed (the condition already held).
pub(crate) fn cancel_wait(token: WaitToken) {
    with_scheduler(|scheduler| {
        if let Some(thread) = scheduler.get(token.thread)
            && thread.wait_generation == token.generation
        {
            thread.waiting_on = 0;
            thread.wake_pending = false;
        }
    })
}

/// Blocks until the wait `token` names is woken, or `deadline`. Interrupts must be off.
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
    with_scheduler(|scheduler| {
        let thread = scheduler.thread(token.thread);
        // A timeout leaves the queue too.
        thread.waiting_on = 0;
        thread.wake_reason
    })
}

/// Wakes the waiters of `queue`: all of them, or the one waiting longest. Returns how many
/// were woken. Allocates and frees nothing and takes no lock but the scheduler's, so it may run
/// anywhere: under the heap's or a zone's lock, in the allocator's out-of-memory path, in an
/// interrupt handler.
pub(crate) fn wake_queue(queue: QueueKey, all: bool) -> usize {
    with_scheduler(|scheduler| {
        let mut woken = 0;
        loop {
            let first = scheduler
                .threads
                .iter()
                .filter(|thread| thread.waiting_on == queue)
                .min_by_key(|thread| thread.wait_ticket)
                .map(|thread| (thread.id, thread.wait_generation));
            let Some((id, generation)) = first else {
                return woken;
            };
            if scheduler.wake_thread(id, generation, WakeReason::Woken) {
                woken += 1;
                if !all {
                    return woken;
                }
            } else {
                scheduler.thread(id).waiting_on = 0;
            }
        }
    })
}

/// Called by the timer interrupt: wakes expired sleepers and preempts a thread whose slice is
/// used up when another is ready. Inside a preemption-only section (`sync::PreemptMutex` held)
/// it does nothing but come back shortly. If the scheduler's lock is taken (another CPU, or a holder on
/// this one that an interrupt could not have reached: a bug this keeps from becoming a hang),
/// the tick is not lost: the one-shot timer is re-armed to try again shortly.
pub fn timer_tick() {
    // A thread holding a preemption-only lock (the allocator's) must not be switched away from
    // it: the tick comes back once the lock is surely released.
    if !crate::sync::preemptible() {
        TICKS_DEFERRED.fetch_add(1, Relaxed);
        arch::apic::arm_oneshot(TICK_RETRY_NS);
        return;
    }
    let Some(mut guard) = SCHEDULER.try_lock() else {
        TICKS_DEFERRED.fetch_add(1, Relaxed);
        arch::apic::arm_oneshot(TICK_RETRY_NS);
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

/// Test hook: delivers a timer tick while the scheduler's lock is held, after the one-shot
/// timer has fired (stopped), as a tick racing a holder on another CPU would find it.
#[cfg(test)]
pub(crate) fn tick_with_lock_taken() {
    interrupts::without_interrupts(|| {
        let guard = SCHEDULER.lock();
        arch::apic::stop_timer();
        timer_tick();
        drop(guard);
    });
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
/// panic path calls this: it allocates nothing).
pub fn current_name() -> Option<ThreadName> {
    let mut guard = SCHEDULER.try_lock()?;
    let scheduler = guard.as_mut()?;
    let current = scheduler.current;
    scheduler.get(current).map(|thread| thread.name)
}

/// CPU time thread `id` has used (ns), the running slice included; `None` once it is gone.
pub fn cpu_time_ns(id: ThreadId) -> Option<u64> {
    with_scheduler(|scheduler| {
        let running = scheduler.current == id;
        let since = scheduler.slice_start_ns;
        let thread = scheduler.get(id)?;
        let mut total = thread.run_ns;
        if running {
            total += crate::time::uptime_ns()
                .unwrap_or(since)
                .saturating_sub(since);
        }
        Some(total)
    })
}

pub fn stats() -> SchedulerStats {
    with_scheduler(|scheduler| SchedulerStats {
        live_threads: scheduler.threads.len(),
        ticks_deferred: TICKS_DEFERRED.load(Relaxed),
        ..scheduler.stats
    })
}

/// Name and state of every thread, for the console.
pub fn thread_list() -> Vec<(u64, String, &'static str)> {
    let mut records: Vec<(u64, ThreadName, &'static str)> = Vec::new();
    loop {
        let count = with_scheduler(|scheduler| scheduler.threads.len());
        records.reserve(count + 4);
        let complete = with_scheduler(|scheduler| {
            if scheduler.threads.len() > records.capacity() {
                return false;
            }
            for thread in &scheduler.threads {
                let state = match thread.state {
                    State::Running => "running",
                    State::Ready => "ready",
                    State::Sleeping => "sleeping",
                    State::Blocked => "blocked",
                    State::Dead => "dead",
                };
                records.push((thread.id.0, thread.name, state));
            }
            true
        });
        if complete {
            break;
        }
    }
    records
        .into_iter()
        .map(|(id, name, state)| (id, String::from(name.as_str()), state))
        .collect()
}
