//! Locks for kernel data shared with interrupt handlers and preempting threads, and the kernel's
//! lock order.
//!
//! [`IrqMutex`] is a spin lock (correct across CPUs) that also disables interrupts on the
//! holding CPU while held, so that neither an interrupt handler nor a preempting thread on the
//! same CPU can spin forever on a lock its own CPU holds. This is what every lock in the kernel
//! that may be taken with preemption enabled must be, unless no interrupt handler ever takes it
//! outside a thread switch: then [`PreemptMutex`] (preemption off, interrupts on) does, as for
//! the page allocator's zones and per-CPU lists, where `cli`/`sti` cost more than the work.
//!
//! # The lock order
//!
//! Locks that the memory manager's paths nest carry a [`LockClass`]; a thread may take a lock
//! only while every class it already holds comes *before* it in this list (outermost first):
//!
//! | class | what it guards | may allocate from the heap under it |
//! | --- | --- | --- |
//! | `Space` | one address space (regions, page tables) | yes |
//! | `SpaceRegistry` | the id → space table | yes |
//! | `Rmap` | the reverse map's side table | yes |
//! | `Ksm` | KSM's stable and unstable trees (`mm::ksm`) | yes |
//! | `Balloon` | the balloon's page list | yes |
//! | `Heap` | the kernel heap (it maps and frees pages) | (it is the heap) |
//! | `KernelTables` | the kernel half of the page tables | no |
//! | `PerCpuCache` | the per-CPU lists (a `PreemptMutex`) | no |
//! | `Zone` | one zone's free lists (a `PreemptMutex`) | no |
//! | `Scheduler` | threads, ready queue, timers, every wait queue's waiters | no |
//! | `Serial` | COM1 | no |
//!
//! Consequences the kernel relies on:
//! - the scheduler's lock is a leaf below the allocator: anything may wake a thread, also code
//!   that runs under the heap's or a zone's lock (a free that triggers free page reporting, the
//!   heap giving pages back, deflate-on-OOM). Nothing allocates, frees heap memory or calls out
//!   under the scheduler's lock, and wait queues have no lock of their own (their waiters live
//!   in the scheduler's thread records), so waking never needs memory;
//! - heap growth and shrinking take page-table and allocator locks, so none of those may
//!   allocate from the heap;
//! - a thread never blocks holding a classed lock.
//!
//! The classes held are recorded in every build (two atomic operations per lock; the
//! allocator asks [`held_classes`] whether it may compact memory before failing), and debug
//! builds check all of it: taking a lock whose class is not after every held class, or
//! switching threads with one held, panics with both classes named (a deadlock found at the
//! first run instead of a hang under load). `try_lock` is not checked: it cannot deadlock.
//! The record of held classes is global because the kernel runs on one CPU (no other thread
//! runs while any of these locks is held: interrupts or preemption are off, and an interrupt
//! handler's own locks are released before it returns); with more CPUs it becomes per-CPU data.
//! [`PreemptMutex`]es are recorded in debug builds only (see there).
//!
//! Locks without a class (`IrqMutex::new`) guard data no allocator path touches (task tables,
//! test bookkeeping, device registers).

use core::ops::{Deref, DerefMut};
use core::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU32,
    Ordering::{Relaxed, SeqCst},
    compiler_fence,
};
use x86_64::instructions::interrupts;

/// Where a lock sits in the kernel's lock order (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LockClass {
    Space = 1,
    SpaceRegistry = 2,
    Rmap = 3,
    Ksm = 4,
    Balloon = 5,
    Heap = 6,
    KernelTables = 7,
    PerCpuCache = 8,
    Zone = 9,
    Scheduler = 10,
    Serial = 11,
}

impl LockClass {
    /// Classes whose instances may be held together (in the documented order of instances:
    /// address spaces by id; zones lowest first).
    fn nests(self) -> bool {
        matches!(self, LockClass::Space | LockClass::Zone)
    }
}

/// Bit `c` set: a lock of class `c` is held (debug builds).
static HELD_CLASSES: AtomicU32 = AtomicU32::new(0);
/// How many locks of each class are held (for classes that nest).
static HELD_DEPTH: [AtomicU8; 16] = [const { AtomicU8::new(0) }; 16];
/// Set by the panic path: it takes locks in any order to print.
static CHECKS_OFF: AtomicBool = AtomicBool::new(false);

/// Stops lock-order checking (the panic path).
pub fn disable_lock_order_checks() {
    CHECKS_OFF.store(true, Relaxed);
}

/// The classes held now (bit per class), for tests and the switch check.
pub fn held_classes() -> u32 {
    HELD_CLASSES.load(Relaxed)
}

/// Whether the heap may be used now: no lock is held whose class forbids it.
pub fn may_allocate() -> bool {
    held_classes() >> (LockClass::KernelTables as u32) == 0
}

fn class_name(bit: u32) -> &'static str {
    const NAMES: [&str; 12] = [
        "?",
        "Space",
        "SpaceRegistry",
        "Rmap",
        "Ksm",
        "Balloon",
        "Heap",
        "KernelTables",
        "PerCpuCache",
        "Zone",
        "Scheduler",
        "Serial",
    ];
    NAMES.get(bit as usize).copied().unwrap_or("?")
}

/// The highest class held, by name (for messages).
pub fn innermost_held() -> &'static str {
    let held = held_classes();
    if held == 0 {
        "none"
    } else {
        class_name(31 - held.leading_zeros())
    }
}

fn note_acquire(class: LockClass) {
    let bit = class as u32;
    let held = HELD_CLASSES.load(Relaxed);
    let later_held = held >> (bit + 1) != 0;
    let same_held = held & (1 << bit) != 0;
    if cfg!(debug_assertions)
        && !CHECKS_OFF.load(Relaxed)
        && (later_held || (same_held && !class.nests()))
    {
        CHECKS_OFF.store(true, Relaxed);
        panic!(
            "lock order: taking a {:?} lock while holding a {} lock",
            class,
            innermost_held()
        );
    }
    // Plain loads and stores, not read-modify-writes: there is one CPU, and an interrupt
    // handler that lands between a load and its store releases what it takes before returning
    // (it switches threads only when no lock is held), so the value stored is still right.
    let depth = &HELD_DEPTH[bit as usize];
    depth.store(depth.load(Relaxed) + 1, Relaxed);
    HELD_CLASSES.store(held | (1 << bit), Relaxed);
}

fn note_release(class: LockClass) {
    let bit = class as u32;
    let depth = HELD_DEPTH[bit as usize].load(Relaxed).saturating_sub(1);
    HELD_DEPTH[bit as usize].store(depth, Relaxed);
    if depth == 0 {
        // As in note_acquire: interrupts are still off here.
        HELD_CLASSES.store(HELD_CLASSES.load(Relaxed) & !(1 << bit), Relaxed);
    }
}

/// Debug check: the heap is about to be used (allocation or free). Panics if a lock is held
/// under which the heap must not be used.
pub fn check_heap_use(what: &str) {
    if cfg!(debug_assertions) && !CHECKS_OFF.load(Relaxed) && !may_allocate() {
        CHECKS_OFF.store(true, Relaxed);
        panic!(
            "lock order: heap {what} while holding a {} lock",
            innermost_held()
        );
    }
}

/// Debug check: the current thread is about to switch away; it must hold no classed lock
/// (the scheduler's own lock is released just before the switch).
pub fn check_no_locks_held_at_switch() {
    if cfg!(debug_assertions) && !CHECKS_OFF.load(Relaxed) && held_classes() != 0 {
        CHECKS_OFF.store(true, Relaxed);
        panic!(
            "lock order: a thread switched away holding a {} lock",
            innermost_held()
        );
    }
}

/// A spin lock that keeps interrupts off on the holding CPU.
pub struct IrqMutex<T> {
    inner: spin::Mutex<T>,
    class: Option<LockClass>,
}

/// Proof that an [`IrqMutex`] is held; interrupts come back as they were when it drops.
pub struct IrqMutexGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    interrupts_were_enabled: bool,
    class: Option<LockClass>,
}

impl<T> IrqMutex<T> {
    /// A lock outside the lock order (no allocator path takes it).
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
            class: None,
        }
    }

    /// A lock with its place in the lock order.
    pub const fn with_class(value: T, class: LockClass) -> Self {
        Self {
            inner: spin::Mutex::new(value),
            class: Some(class),
        }
    }

    pub fn lock(&self) -> IrqMutexGuard<'_, T> {
        let interrupts_were_enabled = interrupts::are_enabled();
        interrupts::disable();
        if let Some(class) = self.class {
            note_acquire(class);
        }
        IrqMutexGuard {
            guard: Some(self.inner.lock()),
            interrupts_were_enabled,
            class: self.class,
        }
    }

    pub fn try_lock(&self) -> Option<IrqMutexGuard<'_, T>> {
        let interrupts_were_enabled = interrupts::are_enabled();
        interrupts::disable();
        match self.inner.try_lock() {
            Some(guard) => {
                if let Some(class) = self.class {
                    // Recorded so that what is taken under it is checked; never refused.
                    HELD_DEPTH[class as usize].fetch_add(1, Relaxed);
                    HELD_CLASSES.fetch_or(1 << class as u32, Relaxed);
                }
                Some(IrqMutexGuard {
                    guard: Some(guard),
                    interrupts_were_enabled,
                    class: self.class,
                })
            }
            None => {
                if interrupts_were_enabled {
                    interrupts::enable();
                }
                None
            }
        }
    }

    /// Releases the lock whoever holds it: only for the panic path, which must print even if
    /// it interrupted a holder that will never run again.
    ///
    /// # Safety
    /// The previous holder must never touch the protected data again.
    pub unsafe fn force_unlock(&self) {
        // SAFETY: forwarded to the caller.
        unsafe { self.inner.force_unlock() }
    }
}

impl<T> Deref for IrqMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("guard is present until drop")
    }
}

impl<T> DerefMut for IrqMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("guard is present until drop")
    }
}

impl<T> Drop for IrqMutexGuard<'_, T> {
    fn drop(&mut self) {
        // Release the lock before interrupts come back on.
        drop(self.guard.take());
        if let Some(class) = self.class {
            note_release(class);
        }
        if self.interrupts_were_enabled {
            interrupts::enable();
        }
    }
}

// ---- Preemption-only locks ------------------------------------------------------------------

/// Sections of this CPU that must not be preempted: one per [`PreemptMutex`] held. While it is
/// non-zero the timer's tick switches no thread (it tries again shortly: see
/// `task::scheduler::timer_tick`), so a holder is never switched away from its lock.
///
/// Plain loads and stores, no read-modify-write: only this CPU touches it, and an interrupt that
/// lands between a load and its store either changes nothing or switches threads, which it does
/// only at zero, and every other thread is back at zero before it can be switched away from.
/// With more CPUs it becomes per-CPU data.
static PREEMPT_OFF: AtomicU32 = AtomicU32::new(0);

/// Whether the timer may switch threads now (no [`PreemptMutex`] is held on this CPU).
#[inline]
pub fn preemptible() -> bool {
    PREEMPT_OFF.load(Relaxed) == 0
}

#[inline]
fn preempt_disable() {
    PREEMPT_OFF.store(PREEMPT_OFF.load(Relaxed) + 1, Relaxed);
    // The interrupt handler is the only other reader: keep the section after the store.
    compiler_fence(SeqCst);
}

#[inline]
fn preempt_enable() {
    compiler_fence(SeqCst);
    PREEMPT_OFF.store(PREEMPT_OFF.load(Relaxed) - 1, Relaxed);
}

/// A spin lock that keeps its holder from being preempted but leaves interrupts on: for data
/// that no interrupt handler touches except through a thread switch, which a held lock rules out
/// (the allocator's zones and per-CPU lists: the timer's tick frees a dead thread's stack only
/// after switching threads, and it switches none while one of these is held).
///
/// Cheaper than [`IrqMutex`] where it counts: no saving, clearing and restoring of the interrupt
/// flag, which under QEMU's TCG ends a translation block every time interrupts come back on
/// (about 30 ns a lock). Debug builds check its place in the lock order ([`LockClass`]) like an
/// `IrqMutex`'s; release builds do not record it in [`held_classes`] (its classes are the
/// allocator's innermost ones, under which nothing allocates: ask [`preemptible`] instead).
pub struct PreemptMutex<T> {
    inner: spin::Mutex<T>,
    class: LockClass,
}

/// A preemption-off section holding a lock of `class`: taking it disables preemption (and records
/// the class in debug builds); dropping it undoes both. The guards of [`PreemptMutex`] and
/// [`LocalLock`] hold one as their last field, so it drops after the lock is released.
struct PreemptOff {
    class: LockClass,
}

impl PreemptOff {
    #[inline]
    fn enter(class: LockClass) -> PreemptOff {
        preempt_disable();
        PreemptOff::entered(class)
    }

    /// As [`PreemptOff::enter`], for a caller that has disabled preemption already.
    #[inline]
    fn entered(class: LockClass) -> PreemptOff {
        if cfg!(debug_assertions) {
            note_acquire(class);
        }
        PreemptOff { class }
    }
}

impl Drop for PreemptOff {
    #[inline]
    fn drop(&mut self) {
        if cfg!(debug_assertions) {
            note_release(self.class);
        }
        preempt_enable();
    }
}

/// Proof that a [`PreemptMutex`] is held; preemption comes back when it drops.
pub struct PreemptMutexGuard<'a, T> {
    guard: spin::MutexGuard<'a, T>,
    /// Dropped after `guard` (fields drop in declaration order): the lock is released before
    /// preemption comes back.
    _preempt: PreemptOff,
}

impl<T> PreemptMutex<T> {
    pub const fn with_class(value: T, class: LockClass) -> Self {
        Self {
            inner: spin::Mutex::new(value),
            class,
        }
    }

    #[inline]
    pub fn lock(&self) -> PreemptMutexGuard<'_, T> {
        let preempt = PreemptOff::enter(self.class);
        PreemptMutexGuard {
            guard: self.inner.lock(),
            _preempt: preempt,
        }
    }
}

impl<T> Deref for PreemptMutexGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for PreemptMutexGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

// ---- Local locks: data of this CPU alone ---------------------------------------------------

/// Data of this CPU alone (the page allocator's per-CPU lists), protected by keeping the holder
/// from being preempted: no atomic read-modify-write at all, as Linux's `local_lock` outside
/// PREEMPT_RT.
///
/// Sound because, on this CPU, nothing else can run between taking and releasing it: preemption
/// is off (the timer switches no thread meanwhile, see [`preemptible`]), a holder never blocks
/// (debug builds check that no classed lock is held at a switch), and no interrupt handler takes
/// it except after switching threads (the timer's tick frees a dead thread's stack in the thread
/// it switched to), which it does only when no such lock is held. Taking it again while it is
/// held (a bug: a handler breaking that rule, a nested call) panics instead of handing out a
/// second `&mut`. With more CPUs each CPU gets its own instance, touched by that CPU alone.
pub struct LocalLock<T> {
    held: AtomicBool,
    class: LockClass,
    value: core::cell::UnsafeCell<T>,
}

// SAFETY: at most one `LocalGuard` exists at a time (see the type's documentation: one CPU,
// preemption off while held, re-entry refused), so sharing the lock between threads never
// gives two of them access to `T` at once; `T: Send` because the threads take turns with it.
unsafe impl<T: Send> Sync for LocalLock<T> {}

/// Proof that a [`LocalLock`] is held; preemption comes back when it drops.
pub struct LocalGuard<'a, T> {
    lock: &'a LocalLock<T>,
    /// Dropped after the guard's own `drop` has cleared the flag.
    _preempt: PreemptOff,
}

impl<T> LocalLock<T> {
    pub const fn with_class(value: T, class: LockClass) -> Self {
        Self {
            held: AtomicBool::new(false),
            class,
            value: core::cell::UnsafeCell::new(value),
        }
    }

    #[inline]
    pub fn lock(&self) -> LocalGuard<'_, T> {
        // The re-entry check comes before the lock order's (debug builds), so a second taker is
        // named as such.
        preempt_disable();
        if self.held.load(Relaxed) {
            local_lock_reentered(self.class);
        }
        self.held.store(true, Relaxed);
        LocalGuard {
            lock: self,
            _preempt: PreemptOff::entered(self.class),
        }
    }
}

#[cold]
#[inline(never)]
fn local_lock_reentered(class: LockClass) -> ! {
    panic!("a {class:?} local lock was taken again on its CPU while held")
}

impl<T> Deref for LocalGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (see `LocalLock`), and it lives no longer than the
        // lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for LocalGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for LocalGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // Every access through the guard stays before the release; preemption comes back when
        // `_preempt` drops, after this.
        compiler_fence(SeqCst);
        self.lock.held.store(false, Relaxed);
    }
}
