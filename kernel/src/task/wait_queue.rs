//! Wait queues: a thread waits until a condition holds, and whoever makes it hold wakes the
//! queue. The waiter registers before it checks the condition, so a wake-up between the check
//! and the sleep is never lost.
//!
//! A queue owns no list and no lock: its waiters are recorded in the scheduler's thread records
//! (the queue's address names it there), and the queue keeps only a count so that waking a
//! queue nobody waits on costs one atomic load. Waiting and waking therefore never allocate,
//! and a wake-up may come from anywhere, under any lock (see [`crate::sync`]).

use super::scheduler::{self, WakeReason};
use crate::time::Instant;
use core::sync::atomic::{AtomicU32, Ordering::SeqCst};
use core::time::Duration;
use x86_64::instructions::interrupts;

pub struct WaitQueue {
    /// Threads between `prepare_wait` and the end of their wait. Also gives the queue a size,
    /// so that two queues never share an address.
    waiters: AtomicU32,
}

/// How a bounded wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitResult {
    Satisfied,
    TimedOut,
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WaitQueue {
    pub const fn new() -> Self {
        Self {
            waiters: AtomicU32::new(0),
        }
    }

    fn key(&self) -> scheduler::QueueKey {
        self as *const WaitQueue as usize
    }

    /// Blocks until `condition` returns true (it is re-checked after every wake-up).
    pub fn wait_until(&self, condition: impl FnMut() -> bool) {
        self.wait(condition, None);
    }

    /// Blocks until `condition` holds or `timeout` passes.
    pub fn wait_until_timeout(
        &self,
        condition: impl FnMut() -> bool,
        timeout: Duration,
    ) -> WaitResult {
        self.wait(condition, Some(Instant::now() + timeout))
    }

    fn wait(&self, mut condition: impl FnMut() -> bool, deadline: Option<Instant>) -> WaitResult {
        loop {
            if condition() {
                return WaitResult::Satisfied;
            }
            let reason = interrupts::without_interrupts(|| {
                // Counted before the condition is checked again (SeqCst on both sides): a waker
                // that changes the condition after this check sees the count.
                self.waiters.fetch_add(1, SeqCst);
                let token = scheduler::prepare_wait(self.key());
                let reason = if condition() {
                    scheduler::cancel_wait(token);
                    None
                } else {
                    Some(scheduler::commit_wait(token, deadline))
                };
                self.waiters.fetch_sub(1, SeqCst);
                reason
            });
            match reason {
                None => return WaitResult::Satisfied,
                Some(WakeReason::TimedOut) if !condition() => return WaitResult::TimedOut,
                Some(_) => {}
            }
        }
    }

    /// Wakes the longest-waiting thread; false if none was waiting.
    pub fn wake_one(&self) -> bool {
        self.waiters.load(SeqCst) != 0 && scheduler::wake_queue(self.key(), false) > 0
    }

    /// Wakes every waiting thread and returns how many. Allocates and frees nothing and takes
    /// only the scheduler's lock, so it may run where the heap must not be used: under the
    /// heap's own lock, in the allocator's out-of-memory path, in an interrupt handler.
    pub fn wake_all(&self) -> usize {
        if self.waiters.load(SeqCst) == 0 {
            return 0;
        }
        scheduler::wake_queue(self.key(), true)
    }
}
