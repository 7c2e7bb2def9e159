//! Wait queues: a thread waits until a condition holds, and whoever makes it hold wakes the
//! queue. The waiter registers before it checks the condition, so a wake-up between the check
//! and the sleep is never lost.

use super::scheduler::{self, WaitToken, WakeReason};
use crate::sync::IrqMutex;
use crate::time::Instant;
use alloc::collections::VecDeque;
use core::time::Duration;
use x86_64::instructions::interrupts;

pub struct WaitQueue {
    waiters: IrqMutex<VecDeque<WaitToken>>,
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
            waiters: IrqMutex::new(VecDeque::new()),
        }
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
                let token = scheduler::prepare_wait();
                self.waiters.lock().push_back(token);
                if condition() {
                    self.forget(token);
                    return None;
                }
                let reason = scheduler::commit_wait(token, deadline);
                if reason == WakeReason::TimedOut {
                    self.forget(token);
                }
                Some(reason)
            });
            match reason {
                None => return WaitResult::Satisfied,
                Some(WakeReason::TimedOut) if !condition() => return WaitResult::TimedOut,
                Some(_) => {}
            }
        }
    }

    fn forget(&self, token: WaitToken) {
        self.waiters.lock().retain(|waiting| *waiting != token);
    }

    /// Wakes the longest-waiting thread; false if none was waiting.
    pub fn wake_one(&self) -> bool {
        loop {
            let Some(token) = self.waiters.lock().pop_front() else {
                return false;
            };
            if scheduler::wake(token) {
                return true;
            }
        }
    }

    /// Wakes every waiting thread and returns how many. Allocates and frees nothing (the
    /// waiters are popped in place), so it may run where the heap must not be used: under the
    /// heap's own lock, in the allocator's out-of-memory path, in an interrupt handler.
    pub fn wake_all(&self) -> usize {
        let waiting = self.waiters.lock().len();
        let mut woken = 0;
        for _ in 0..waiting {
            let Some(token) = self.waiters.lock().pop_front() else {
                break;
            };
            if scheduler::wake(token) {
                woken += 1;
            }
        }
        woken
    }
}
