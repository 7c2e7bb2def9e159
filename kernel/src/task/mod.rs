//! Kernel threads: spawn, sleep, yield, wait queues, and preemption on the timer tick.
//!
//! One CPU for now. The scheduler's state is behind an [`crate::sync::IrqMutex`], and a thread
//! that switches out is handed to the next one to finish the bookkeeping (`finish_switch`), as
//! Linux's `finish_task_switch` does, so no thread is made runnable before its context is saved.

pub mod scheduler;
pub mod wait_queue;

pub use scheduler::{
    JoinHandle, SchedulerStats, SpawnError, ThreadId, current_id, current_name, exit_current,
    sleep, spawn, yield_now,
};
pub use wait_queue::{WaitQueue, WaitResult};
