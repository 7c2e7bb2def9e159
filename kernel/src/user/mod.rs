//! Ring-3 tasks: a task is a kernel thread that runs a user program in its own address space.
//!
//! Owns the task records: which thread runs which task, exit statuses, the parent/child links
//! made by `clone`, capabilities, kill requests, the task limit (`user.max_tasks`), the OOM
//! killer's choice of victim, and the task counters. Memory belongs to [`crate::mm::space`];
//! entering and leaving ring 3 to [`crate::arch::user_entry`]; the system calls are in
//! [`syscall`], the programs in [`programs`].
//!
//! Life of a task: [`spawn`] (or `clone`) takes a place under `user.max_tasks`, checks that
//! memory is not down to the kernel's reserve, builds its address space (the program's code at
//! [`CODE_BASE`], read-execute; a stack below [`STACK_TOP`], read-write, faulted in on demand)
//! and starts a thread that binds the space and enters ring 3; any of these failing is an error
//! for the caller, never a panic. The thread comes back to the kernel when the task calls
//! `exit` or is killed: for a fault it has no right to or any other exception (at once), or on
//! request ([`kill`]: the console's `kill` and Ctrl-C, the OOM killer), when it is next on its
//! way back to ring 3 (the end of a system call, a timer interrupt or page fault from ring 3;
//! a sleep or `wait` is woken for it). It then records a [`TaskReport`], tears the address
//! space down and wakes whoever waits for it.
//!
//! Out of memory: a user page fault that finds no page (after the allocator asked the balloon)
//! kills the task with the largest resident set; the faulting task retries once the victim's
//! memory is back, or is the victim itself.

pub mod programs;
pub mod syscall;

use crate::arch::idt::{FaultResolution, PageFault};
use crate::arch::user_entry::{self, UserRegisters};
use crate::mm::PAGE_SIZE;
use crate::mm::space::{
    AddressSpace, FaultError, RegionFlags, SharedSpace, SpaceCounters, SpaceError,
};
use crate::sync::IrqMutex;
use crate::task::{self, ThreadId, WaitQueue, WaitResult};
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use core::time::Duration;
use programs::Program;

/// Where a program's code is loaded (read-execute).
pub const CODE_BASE: u64 = 0x0040_0000;
/// One past the top of a task's stack; the stack grows down from here.
pub const STACK_TOP: u64 = 0x0000_7fff_ff00_0000;
/// Size of a task's stack region (pages arrive on first touch).
pub const STACK_BYTES: u64 = 64 * 1024;

/// A task's number, unique since boot.
pub type Pid = u32;

bitflags::bitflags! {
    /// What a task may do beyond the ordinary system calls. Given at spawn, inherited by clone.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Capabilities: u8 {
        /// The `check_memory` diagnostic: it walks all memory with interrupts off (2.3 ms for
        /// 2 GiB under TCG, and more with many tasks mapped), so any task could stall the
        /// kernel at will with it, in a loop. Only tasks the kernel starts for testing get it.
        const DIAGNOSTICS = 1 << 0;
    }
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskExit {
    /// It called `exit` with this status.
    Exited(i64),
    /// The kernel killed it, for this reason.
    Killed(String),
}

/// What a finished task leaves behind: how it ended and its address space's counters just
/// before teardown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskReport {
    pub pid: Pid,
    pub exit: TaskExit,
    pub counters: SpaceCounters,
    /// Bytes of its regions advised mergeable at exit.
    pub mergeable_bytes: u64,
}

/// Task counters since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskStats {
    pub started: u64,
    pub exited: u64,
    pub killed: u64,
    pub system_calls: u64,
    /// Tasks running now.
    pub live: u64,
    /// Clones refused (task limit or memory).
    pub clones_refused: u64,
    /// Tasks killed by the OOM killer (also counted in `killed`).
    pub oom_kill: u64,
}

static STARTED: AtomicU64 = AtomicU64::new(0);
static EXITED: AtomicU64 = AtomicU64::new(0);
static KILLED: AtomicU64 = AtomicU64::new(0);
pub(crate) static SYSTEM_CALLS: AtomicU64 = AtomicU64::new(0);
static NEXT_PID: AtomicU32 = AtomicU32::new(1);
static CLONES_REFUSED: AtomicU64 = AtomicU64::new(0);
static OOM_KILLS: AtomicU64 = AtomicU64::new(0);
/// When a refused clone was last logged (ns since boot; 0: never).
static LAST_REFUSAL_LOG_NS: AtomicU64 = AtomicU64::new(0);

pub fn stats() -> TaskStats {
    let started = STARTED.load(Relaxed);
    let exited = EXITED.load(Relaxed);
    let killed = KILLED.load(Relaxed);
    TaskStats {
        started,
        exited,
        killed,
        system_calls: SYSTEM_CALLS.load(Relaxed),
        live: started - exited - killed,
        clones_refused: CLONES_REFUSED.load(Relaxed),
        oom_kill: OOM_KILLS.load(Relaxed),
    }
}

/// One task.
pub struct Task {
    pid: Pid,
    name: String,
    /// The address space while the task lives; taken at exit for teardown.
    space: IrqMutex<Option<SharedSpace>>,
    /// Set by `exit` or a kill just before the thread leaves ring 3.
    exit: IrqMutex<Option<TaskExit>>,
    report: IrqMutex<Option<TaskReport>>,
    finished: WaitQueue,
    /// Children made by `clone` and not yet waited for.
    children: IrqMutex<Vec<Arc<Task>>>,
    capabilities: Capabilities,
    /// Why the task is to die, once someone asked ([`kill`]): it dies on its next way back to
    /// ring 3 (end of a system call, a timer interrupt or fault from ring 3).
    kill_reason: IrqMutex<Option<String>>,
    /// Woken when a kill is requested: the task's interruptible waits (sleep) wait here.
    interrupt: WaitQueue,
}

impl Task {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a kill was requested and the task has not died yet.
    pub fn kill_pending(&self) -> bool {
        self.kill_reason.lock().is_some() && self.report.lock().is_none()
    }

    /// The task's address space, while it runs.
    pub fn space(&self) -> Option<SharedSpace> {
        self.space.lock().clone()
    }

    fn wait(&self, timeout: Option<Duration>) -> Option<TaskReport> {
        let done = || self.report.lock().is_some();
        match timeout {
            None => self.finished.wait_until(done),
            Some(timeout) => {
                if self.finished.wait_until_timeout(done, timeout) == WaitResult::TimedOut {
                    return None;
                }
            }
        }
        self.report.lock().clone()
    }
}

/// The right to wait for a task spawned by the kernel.
pub struct TaskHandle {
    task: Arc<Task>,
}

impl TaskHandle {
    pub fn pid(&self) -> Pid {
        self.task.pid
    }

    pub fn task(&self) -> &Arc<Task> {
        &self.task
    }

    /// Waits for the task to end.
    pub fn join(self) -> TaskReport {
        self.task.wait(None).expect("a report once finished")
    }

    /// Waits at most `timeout`; `Err(self)` if the task still runs.
    pub fn join_timeout(self, timeout: Duration) -> Result<TaskReport, TaskHandle> {
        match self.task.wait(Some(timeout)) {
            Some(report) => Ok(report),
            None => Err(self),
        }
    }
}

/// Why a task could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnError {
    Space(SpaceError),
    Fault(FaultError),
    /// `user.max_tasks` tasks run already.
    TooManyTasks,
    /// Free memory is down to what the kernel keeps for itself (see [`memory_for_a_task`]).
    LowMemory,
    /// No kernel thread for it (no memory for its stack).
    Thread(task::SpawnError),
}

impl SpawnError {
    pub fn reason(&self) -> &'static str {
        match self {
            SpawnError::Space(_) => "no address space",
            SpawnError::Fault(error) => error.reason(),
            SpawnError::TooManyTasks => "too many tasks (user.max_tasks)",
            SpawnError::LowMemory => "memory is low",
            SpawnError::Thread(_) => "no memory for a kernel thread",
        }
    }
}

/// Tasks started and not yet finished: the count `user.max_tasks` limits. A start takes its
/// place here before it allocates anything.
static LIVE: AtomicU64 = AtomicU64::new(0);

/// Takes a place for one more task, or fails when `user.max_tasks` run already.
fn reserve_task_place() -> Result<(), SpawnError> {
    let max = crate::tunables::USER_MAX_TASKS.get();
    LIVE.fetch_update(Relaxed, Relaxed, |live| (live < max).then_some(live + 1))
        .map(|_| ())
        .map_err(|_| SpawnError::TooManyTasks)
}

/// Pages beyond the zones' high watermarks that must be free for a task to start: a start costs
/// a kernel stack, page tables and heap (which grows 64 pages at a time), and the kernel's own
/// allocations must not be the ones that fail when tasks multiply.
const TASK_START_RESERVE_PAGES: u64 = 256;

/// Whether memory allows another task (a clone bomb stops here, with the kernel unharmed).
fn memory_for_a_task() -> bool {
    let keep: u64 = crate::mm::page_alloc::all_zones()
        .iter()
        .map(|zone| zone.watermarks.high)
        .sum();
    crate::mm::page_alloc::free_pages() >= keep + TASK_START_RESERVE_PAGES
}

/// Every task started and not yet finished, by pid (for [`kill`]).
static TASKS: IrqMutex<BTreeMap<Pid, Weak<Task>>> = IrqMutex::new(BTreeMap::new());
/// Tasks asked to die that have not finished yet: while 0, the ring-3 return paths skip the
/// check.
static KILLS_PENDING: AtomicU64 = AtomicU64::new(0);

/// Why a kill request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillError {
    /// No task with this pid runs.
    NoSuchTask,
}

/// Asks task `pid` to die for `reason`. It dies the next time it is on its way back to ring 3:
/// at once if it sleeps or waits in a system call (it is woken), at the next timer interrupt
/// if it runs in ring 3. A second kill before it died keeps the first reason.
pub fn kill(pid: Pid, reason: &str) -> Result<(), KillError> {
    let task = TASKS
        .lock()
        .get(&pid)
        .and_then(Weak::upgrade)
        .ok_or(KillError::NoSuchTask)?;
    {
        let mut pending = task.kill_reason.lock();
        if task.report.lock().is_some() {
            return Err(KillError::NoSuchTask);
        }
        if pending.is_none() {
            *pending = Some(reason.to_string());
            KILLS_PENDING.fetch_add(1, Relaxed);
            log::info!("task {pid} '{}': kill requested: {reason}", task.name);
        }
    }
    // Wake it wherever it waits for us: an interruptible sleep, or `wait` for a child.
    task.interrupt.wake_all();
    for child in task.children.lock().iter() {
        child.finished.wake_all();
    }
    Ok(())
}

/// [`kill`] for `pid` and every descendant it has not waited for (the console's Ctrl-C).
/// Returns how many tasks were asked to die.
pub fn kill_family(pid: Pid, reason: &str) -> Result<usize, KillError> {
    let root = TASKS
        .lock()
        .get(&pid)
        .and_then(Weak::upgrade)
        .ok_or(KillError::NoSuchTask)?;
    let mut family = alloc::vec![root];
    let mut index = 0;
    while index < family.len() {
        let children: Vec<Arc<Task>> = family[index].children.lock().clone();
        family.extend(children);
        index += 1;
    }
    Ok(family
        .iter()
        .filter(|task| kill(task.pid, reason).is_ok())
        .count())
}

/// Called on every way back to ring 3 that can be interrupted (the end of a system call, a
/// timer interrupt or page fault from ring 3): a task asked to die dies here.
pub fn on_return_to_user() {
    if KILLS_PENDING.load(Relaxed) == 0 {
        return;
    }
    let Some(task) = current_task() else {
        return;
    };
    let reason = task.kill_reason.lock().clone();
    if let Some(reason) = reason {
        kill_current(reason);
    }
}

/// Which task each thread runs.
static RUNNING: IrqMutex<BTreeMap<ThreadId, Arc<Task>>> = IrqMutex::new(BTreeMap::new());

/// The task the current thread runs, if any.
pub fn current_task() -> Option<Arc<Task>> {
    let thread = task::scheduler::current_id();
    RUNNING.lock().get(&thread).cloned()
}

/// Starts `program` in a new task, with `argument` in its first register (`rdi`) and no
/// capabilities.
pub fn spawn(name: &str, program: &Program, argument: u64) -> Result<TaskHandle, SpawnError> {
    spawn_with(name, program, argument, Capabilities::empty())
}

/// [`spawn`] with `capabilities` (the tests give diagnostics to their programs).
pub fn spawn_with(
    name: &str,
    program: &Program,
    argument: u64,
    capabilities: Capabilities,
) -> Result<TaskHandle, SpawnError> {
    spawn_in_domain(name, program, argument, capabilities, 0)
}

/// [`spawn_with`] in KSM merge domain `merge_domain`: KSM merges the task's pages only with
/// pages of tasks in the same domain (a write to a merged page is slower, so merging tells a
/// task what others hold: a domain bounds who can learn it). Clones inherit the domain; the
/// default, 0, is one domain for all (Linux's behaviour).
pub fn spawn_in_domain(
    name: &str,
    program: &Program,
    argument: u64,
    capabilities: Capabilities,
    merge_domain: u32,
) -> Result<TaskHandle, SpawnError> {
    reserve_task_place()?;
    let started = build_and_start(name, program, argument, capabilities, merge_domain);
    if started.is_err() {
        LIVE.fetch_sub(1, Relaxed);
    }
    started
}

fn build_and_start(
    name: &str,
    program: &Program,
    argument: u64,
    capabilities: Capabilities,
    merge_domain: u32,
) -> Result<TaskHandle, SpawnError> {
    if !memory_for_a_task() {
        return Err(SpawnError::LowMemory);
    }
    let space = AddressSpace::new().map_err(SpawnError::Space)?;
    {
        let mut space = space.lock();
        // Nothing is mapped yet: nothing to unmerge, this cannot fail.
        space
            .set_merge_domain(merge_domain)
            .map_err(SpawnError::Space)?;
        let code_bytes = (program.code.len() as u64).div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
        let code_flags = RegionFlags::READ | RegionFlags::EXECUTE;
        space
            .map_anonymous(Some(CODE_BASE), code_bytes, code_flags)
            .map_err(SpawnError::Space)?;
        space
            .load(CODE_BASE, program.code)
            .map_err(SpawnError::Fault)?;
        let stack_flags = RegionFlags::READ | RegionFlags::WRITE;
        space
            .map_anonymous(Some(STACK_TOP - STACK_BYTES), STACK_BYTES, stack_flags)
            .map_err(SpawnError::Space)?;
    }
    let registers = UserRegisters::at_entry(CODE_BASE, STACK_TOP, argument);
    let task = start(name, space, registers, capabilities)?;
    Ok(TaskHandle { task })
}

/// Starts a task thread for `space` at `registers` (its place in [`LIVE`] is taken already).
fn start(
    name: &str,
    space: SharedSpace,
    registers: UserRegisters,
    capabilities: Capabilities,
) -> Result<Arc<Task>, SpawnError> {
    let task = Arc::new(Task {
        pid: NEXT_PID.fetch_add(1, Relaxed),
        name: name.to_string(),
        space: IrqMutex::new(Some(space)),
        exit: IrqMutex::new(None),
        report: IrqMutex::new(None),
        finished: WaitQueue::new(),
        children: IrqMutex::new(Vec::new()),
        capabilities,
        kill_reason: IrqMutex::new(None),
        interrupt: WaitQueue::new(),
    });
    TASKS.lock().insert(task.pid, Arc::downgrade(&task));
    let runner = task.clone();
    // The join handle is not needed: the task's own report says when it is done. On failure
    // the closure, and with it the space, is dropped here.
    let thread = task::spawn(name, move || run(runner, registers));
    if let Err(error) = thread {
        // The caller reports it (clone: rate-limited, a bomb must not flood the console).
        TASKS.lock().remove(&task.pid);
        return Err(SpawnError::Thread(error));
    }
    STARTED.fetch_add(1, Relaxed);
    Ok(task)
}

/// The body of a task thread.
fn run(task: Arc<Task>, registers: UserRegisters) {
    let pml4 = task
        .space()
        .map(|space| space.lock().pml4_phys())
        .expect("a new task has its space");
    let thread = task::scheduler::current_id();
    RUNNING.lock().insert(thread, task.clone());
    task::scheduler::bind_address_space(Some(pml4));
    let killed_before_start = task.kill_reason.lock().clone();
    match killed_before_start {
        Some(reason) => {
            log::warn!("task {} '{}' killed: {reason}", task.pid, task.name);
            *task.exit.lock() = Some(TaskExit::Killed(reason));
        }
        None => user_entry::run_in_user_mode(&registers),
    }
    // Back from ring 3 for good (exit or kill), with interrupts off.
    x86_64::instructions::interrupts::enable();
    task::scheduler::bind_address_space(None);
    RUNNING.lock().remove(&thread);
    let exit = task
        .exit
        .lock()
        .take()
        .unwrap_or_else(|| TaskExit::Killed("left ring 3 without an exit status".to_string()));
    let space = task.space.lock().take();
    let (counters, mergeable_bytes) = match &space {
        Some(space) => {
            let space = space.lock();
            let mergeable = space
                .regions()
                .filter(|region| region.flags.contains(RegionFlags::MERGEABLE))
                .map(|region| region.len)
                .sum();
            (space.counters, mergeable)
        }
        None => (SpaceCounters::default(), 0),
    };
    // Teardown: the last reference to the space frees its pages and tables (a walker holding
    // it for a moment frees it instead, when it lets go).
    drop(space);
    // Children nobody waited for are let go; they run on and clean up after themselves.
    task.children.lock().clear();
    // Counted once the space is gone: `live` covers teardown.
    match &exit {
        TaskExit::Exited(_) => EXITED.fetch_add(1, Relaxed),
        TaskExit::Killed(_) => KILLED.fetch_add(1, Relaxed),
    };
    {
        // Under the kill lock: a kill either comes before the report (and is counted off here)
        // or sees it and is refused.
        let pending = task.kill_reason.lock();
        if pending.is_some() {
            KILLS_PENDING.fetch_sub(1, Relaxed);
        }
        *task.report.lock() = Some(TaskReport {
            pid: task.pid,
            exit,
            counters,
            mergeable_bytes,
        });
    }
    TASKS.lock().remove(&task.pid);
    LIVE.fetch_sub(1, Relaxed);
    task.finished.wake_all();
}

/// Ends the current task with `status` (the `exit` system call).
pub(crate) fn exit_current(status: i64) -> ! {
    if let Some(task) = current_task() {
        *task.exit.lock() = Some(TaskExit::Exited(status));
    }
    user_entry::leave_user_mode()
}

/// Kills the current task for `reason`: called for an exception raised in ring 3. The kernel
/// goes on; the task's thread tears it down.
pub fn kill_current(reason: String) -> ! {
    match current_task() {
        Some(task) => {
            log::warn!("task {} '{}' killed: {reason}", task.pid, task.name);
            *task.exit.lock() = Some(TaskExit::Killed(reason));
        }
        None => panic!("exception in ring 3 on a thread that runs no task: {reason}"),
    }
    user_entry::leave_user_mode()
}

/// A page fault raised in ring 3: resolved by the task's address space, or fatal for the task.
pub fn handle_page_fault(fault: &PageFault) -> FaultResolution {
    let Some(space) = current_task().and_then(|task| task.space()) else {
        return FaultResolution::Fatal("page fault in ring 3 outside any task");
    };
    let outcome = space.lock().handle_fault(
        fault.address.as_u64(),
        fault.write(),
        fault.instruction_fetch(),
    );
    match outcome {
        Ok(_) => FaultResolution::Retry,
        Err(FaultError::OutOfMemory) => out_of_memory(),
        Err(error) => FaultResolution::Fatal(error.reason()),
    }
}

/// The OOM killer, for a task whose page fault found no memory (the balloon, asked by the
/// allocator, had nothing left to give either): the task with the largest resident set dies.
/// If that is the faulting task, its fault is fatal. Otherwise the faulting task waits until
/// the victim's memory is back and retries the fault (which may find another victim).
fn out_of_memory() -> FaultResolution {
    const FATAL: &str = "out of memory: the largest task (oom_kill)";
    let Some(current) = current_task() else {
        return FaultResolution::Fatal("out of memory");
    };
    let Some((victim, resident)) = largest_task() else {
        return FaultResolution::Fatal("out of memory");
    };
    if Arc::ptr_eq(&victim, &current) {
        OOM_KILLS.fetch_add(1, Relaxed);
        log::warn!(
            "oom_kill: task {} '{}' with {resident} resident pages (the largest, faulting itself)",
            current.pid,
            current.name
        );
        return FaultResolution::Fatal(FATAL);
    }
    // A victim already dying (for the OOM killer or anyone) is waited for, not killed twice.
    if !victim.kill_pending() {
        OOM_KILLS.fetch_add(1, Relaxed);
        log::warn!(
            "oom_kill: task {} '{}' with {resident} resident pages (task {} '{}' needs a page)",
            victim.pid,
            victim.name,
            current.pid,
            current.name
        );
        let reason =
            alloc::format!("out of memory: the largest task, {resident} resident pages (oom_kill)");
        // It may have finished meanwhile: its memory is back, which is all we need.
        let _ = kill(victim.pid, &reason);
    }
    // Wait, preemptible, until the victim has torn down its space. Bounded waits: a victim
    // spinning in ring 3 dies at a timer interrupt, and these keep one coming.
    x86_64::instructions::interrupts::enable();
    while victim.report.lock().is_none() && !current.kill_pending() {
        victim.finished.wait_until_timeout(
            || victim.report.lock().is_some() || current.kill_pending(),
            Duration::from_millis(10),
        );
    }
    x86_64::instructions::interrupts::disable();
    // Retried; if the faulting task was asked to die meanwhile, it dies on the way back.
    FaultResolution::Retry
}

/// The live task with the most resident pages, and that count.
fn largest_task() -> Option<(Arc<Task>, u64)> {
    let tasks: Vec<Arc<Task>> = TASKS.lock().values().filter_map(Weak::upgrade).collect();
    tasks
        .into_iter()
        .filter_map(|task| {
            let resident = task.space()?.lock().counters.resident;
            Some((task, resident))
        })
        .max_by_key(|(_, resident)| *resident)
}

/// `clone`: a child task whose address space is a copy-on-write copy of the caller's, resuming
/// at the same place with `rax` = 0. Returns the child's pid.
/// Fails when `user.max_tasks` tasks run, or memory is short (see [`memory_for_a_task`]).
pub(crate) fn clone_current(registers: &UserRegisters) -> Result<Pid, SpawnError> {
    let parent = current_task().ok_or(SpawnError::Space(SpaceError::NotMapped))?;
    let child = reserve_task_place().and_then(|()| {
        let child = clone_of(&parent, registers);
        if child.is_err() {
            LIVE.fetch_sub(1, Relaxed);
        }
        child
    });
    match &child {
        Ok(child) => parent.children.lock().push(child.clone()),
        Err(error) => {
            let refused = CLONES_REFUSED.fetch_add(1, Relaxed) + 1;
            // At most one line a second: a clone bomb must not flood the console.
            let now = crate::time::uptime_ns().unwrap_or(0);
            let last = LAST_REFUSAL_LOG_NS.load(Relaxed);
            if (last == 0 || now.saturating_sub(last) >= 1_000_000_000)
                && LAST_REFUSAL_LOG_NS
                    .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                    .is_ok()
            {
                log::warn!(
                    "task {} '{}': clone refused: {} ({refused} clones refused since boot)",
                    parent.pid,
                    parent.name,
                    error.reason()
                );
            }
        }
    }
    child.map(|child| child.pid)
}

fn clone_of(parent: &Arc<Task>, registers: &UserRegisters) -> Result<Arc<Task>, SpawnError> {
    if !memory_for_a_task() {
        return Err(SpawnError::LowMemory);
    }
    let space = parent
        .space()
        .ok_or(SpawnError::Space(SpaceError::NotMapped))?;
    let child_space = space.lock().fork().map_err(SpawnError::Space)?;
    let mut child_registers = *registers;
    child_registers.rax = 0;
    // The saved flags are the caller's as SYSCALL found them (RF may be set, after a fault on
    // the SYSCALL's own fetch): the child enters ring 3 with only the flags a task may have.
    child_registers.sanitize_rflags();
    let name = alloc::format!("{}-child", parent.name);
    start(&name, child_space, child_registers, parent.capabilities)
}

/// Whether the caller has a child `pid` it has not waited for.
pub(crate) fn has_child(pid: Pid) -> bool {
    current_task().is_some_and(|parent| parent.children.lock().iter().any(|child| child.pid == pid))
}

/// `wait`: waits for the caller's child `pid` to end; `None` if it has no such child.
pub(crate) fn wait_child(pid: Pid) -> Option<TaskExit> {
    let parent = current_task()?;
    let child = parent
        .children
        .lock()
        .iter()
        .find(|child| child.pid == pid)
        .cloned()?;
    // A kill of the parent wakes it (see `kill`): it returns without the child's report.
    child
        .finished
        .wait_until(|| child.report.lock().is_some() || parent.kill_pending());
    let report = child.report.lock().clone()?;
    parent.children.lock().retain(|other| other.pid != pid);
    Some(report.exit)
}

/// `sleep`: sleeps `duration`, or less if the task is asked to die meanwhile.
pub(crate) fn sleep_current(duration: Duration) {
    match current_task() {
        Some(task) => {
            task.interrupt
                .wait_until_timeout(|| task.kill_pending(), duration);
        }
        None => task::sleep(duration),
    }
}

/// Pids and names of the tasks started and not finished, for the console.
/// Running tasks with their address spaces (console `ksm`'s per-task lines).
pub fn task_spaces() -> Vec<(Pid, String, SharedSpace)> {
    TASKS
        .lock()
        .values()
        .filter_map(Weak::upgrade)
        .filter_map(|task| Some((task.pid, task.name.clone(), task.space()?)))
        .collect()
}

pub fn running_tasks() -> Vec<(Pid, String)> {
    TASKS
        .lock()
        .values()
        .filter_map(Weak::upgrade)
        .map(|task| (task.pid, task.name.clone()))
        .collect()
}
