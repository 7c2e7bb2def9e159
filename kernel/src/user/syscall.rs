//! The system calls of ring-3 tasks, reached through the `syscall` instruction.
//!
//! Convention (as Linux's): the number in `rax`, arguments in `rdi`, `rsi`, `rdx`, the result in
//! `rax`; a negative result is an error number (`-EINVAL`, ...). Every other register is kept.
//! Owns nothing: each call borrows the current task and its address space for its duration.
//!
//! | nr | call | arguments | result |
//! | -- | ---- | --------- | ------ |
//! | 0 | exit | status | does not return |
//! | 1 | write | buffer, length (at most 4096) | bytes written to the console |
//! | 2 | mmap | length, protection (1 read, 2 write, 4 execute) | address of the new region |
//! | 3 | munmap | address, length | 0 |
//! | 4 | madvise | address, length, advice (4 dontneed: drop the pages, keep the region; 12 mergeable, 13 unmergeable) | 0 |
//! | 5 | yield | | 0 |
//! | 6 | sleep | nanoseconds | 0 |
//! | 7 | clock | | nanoseconds since boot |
//! | 8 | clone | | the child's pid in the parent, 0 in the child; `-EAGAIN` when `user.max_tasks` tasks run, `-ENOMEM` when memory is short |
//! | 9 | wait | child pid, status address (0: none) | [`WAIT_EXITED`] (its exit status written there as an i64) or [`WAIT_KILLED`] (0 written) |
//! | 10 | page_map_count | address | how many mappings share the page there (0: none yet) |
//! | 11 | check_memory | | 0 if the frame-state and reverse-map checkers pass, `-EIO` if not; `-EPERM` without [`Capabilities::DIAGNOSTICS`] |
//! | 12 | frame_of | address | the frame number (pfn) mapped there, 0 if nothing is mapped yet; `-EFAULT` outside the task's regions; `-EPERM` without [`Capabilities::DIAGNOSTICS`] |
//! | 13 | memory_merge | 1 on, 0 off (Linux's `PR_SET_MEMORY_MERGE`: every region, now and later, mergeable; off unmerges), 2 asks | 0, or the state for 2; `-ENOMEM` if unmerging ran out of memory |
//! | 14 | event | name, length (at most 32: `a-z`, `0-9`, `_`) | 0 after printing `EVENT {"name":NAME,"t_ns":T,"pid":P}` at column 0; `-EPERM` without [`Capabilities::DIAGNOSTICS`] |
//!
//! Calls 10, 11, 12 and 14 are diagnostics (like Linux's `/proc/self/pagemap`) for the tests' and
//! scenarios' programs (`event` lets a scenario's task mark its progress in the tools' format,
//! which no ordinary task may forge).
//! `check_memory` walks all memory with interrupts off, so only tasks spawned with the
//! diagnostics capability (the tests') may call it: it is not made preemptible because it proves
//! a consistent picture of every zone, list and mapping at one instant, which it could not do
//! while the kernel changes them under it. `frame_of` tells physical addresses, which a task
//! has no business knowing (Linux hides the frame numbers of pagemap from unprivileged
//! readers since 4.0 for the same reason): the same capability gates it. The fragmenting
//! workload (`scenario=fragment`) uses it to free 3 of every 4 pages of each 2 MiB block.

use super::{Capabilities, SYSTEM_CALLS};
use crate::arch::user_entry::UserRegisters;
use crate::mm::space::{FaultError, RegionFlags, SpaceError};
use crate::mm::{checker, rmap, space};
use core::sync::atomic::Ordering::Relaxed;
use core::time::Duration;

pub const SYS_EXIT: u64 = 0;
pub const SYS_WRITE: u64 = 1;
pub const SYS_MMAP: u64 = 2;
pub const SYS_MUNMAP: u64 = 3;
pub const SYS_MADVISE: u64 = 4;
pub const SYS_YIELD: u64 = 5;
pub const SYS_SLEEP: u64 = 6;
pub const SYS_CLOCK: u64 = 7;
pub const SYS_CLONE: u64 = 8;
pub const SYS_WAIT: u64 = 9;
pub const SYS_PAGE_MAP_COUNT: u64 = 10;
pub const SYS_CHECK_MEMORY: u64 = 11;
pub const SYS_FRAME_OF: u64 = 12;
pub const SYS_MEMORY_MERGE: u64 = 13;
pub const SYS_EVENT: u64 = 14;

pub const EPERM: i64 = 1;
pub const EIO: i64 = 5;
pub const ECHILD: i64 = 10;
pub const EAGAIN: i64 = 11;
pub const ENOMEM: i64 = 12;
pub const EFAULT: i64 = 14;
pub const EINVAL: i64 = 22;
pub const ENOSYS: i64 = 38;

pub const PROT_READ: u64 = 1;
pub const PROT_WRITE: u64 = 2;
pub const PROT_EXEC: u64 = 4;
pub const MADV_DONTNEED: u64 = 4;
pub const MADV_MERGEABLE: u64 = 12;
pub const MADV_UNMERGEABLE: u64 = 13;
/// What `wait` returns for a child that called `exit` (its status is at the status address).
pub const WAIT_EXITED: u64 = 0;
/// What `wait` returns for a child that was killed.
pub const WAIT_KILLED: u64 = 1;
/// Longest single `write`.
pub const WRITE_MAX: usize = 4096;

/// Runs the system call in `registers` and stores its result in `rax`.
pub fn dispatch(registers: &mut UserRegisters) {
    SYSTEM_CALLS.fetch_add(1, Relaxed);
    // The gate turned interrupts off; a system call may sleep, and is preemptible.
    x86_64::instructions::interrupts::enable();
    let [a, b, c] = [registers.rdi, registers.rsi, registers.rdx];
    let result: Result<u64, i64> = match registers.rax {
        SYS_EXIT => super::exit_current(a as i64),
        SYS_WRITE => write(a, b),
        SYS_MMAP => mmap(a, b),
        SYS_MUNMAP => with_space(|space| space.unmap(a, b).map(|()| 0).map_err(space_errno)),
        SYS_MADVISE => madvise(a, b, c),
        SYS_YIELD => {
            crate::task::yield_now();
            Ok(0)
        }
        SYS_SLEEP => {
            super::sleep_current(Duration::from_nanos(a));
            Ok(0)
        }
        SYS_CLOCK => Ok(crate::time::uptime_ns().unwrap_or(0)),
        SYS_CLONE => super::clone_current(registers)
            .map(u64::from)
            .map_err(spawn_errno),
        SYS_WAIT => wait(a, b),
        SYS_PAGE_MAP_COUNT => with_space(|space| {
            // Only the task's own regions: never a kernel page's counts.
            if space.region_at(a).is_none() {
                return Err(EFAULT);
            }
            Ok(space
                .translate(a & !(crate::mm::PAGE_SIZE - 1))
                .map_or(0, |(pfn, _)| u64::from(rmap::map_count(pfn))))
        }),
        SYS_CHECK_MEMORY => check_memory(),
        SYS_FRAME_OF => frame_of(a),
        SYS_EVENT => event(a, b),
        SYS_MEMORY_MERGE => with_space(|space| match a {
            0 | 1 => space.set_merge_any(a == 1).map(|()| 0).map_err(space_errno),
            2 => Ok(u64::from(space.merge_any())),
            _ => Err(EINVAL),
        }),
        _ => Err(ENOSYS),
    };
    registers.rax = match result {
        Ok(value) => value,
        Err(errno) => (-errno) as u64,
    };
    // The frame goes back to ring 3 through IRETQ: only flags the task may set survive.
    registers.sanitize_rflags();
    // A task asked to die (while it slept, waited or ran this call) dies here.
    super::on_return_to_user();
}

/// Runs `f` on the current task's address space, under its lock.
fn with_space(f: impl FnOnce(&mut space::AddressSpace) -> Result<u64, i64>) -> Result<u64, i64> {
    let space = super::current_task()
        .and_then(|task| task.space())
        .ok_or(EFAULT)?;
    let mut guard = space.lock();
    f(&mut guard)
}

fn spawn_errno(error: super::SpawnError) -> i64 {
    match error {
        super::SpawnError::TooManyTasks => EAGAIN,
        super::SpawnError::Space(error) => space_errno(error),
        super::SpawnError::Fault(_)
        | super::SpawnError::LowMemory
        | super::SpawnError::Thread(_) => ENOMEM,
    }
}

fn space_errno(error: SpaceError) -> i64 {
    match error {
        SpaceError::OutOfMemory => ENOMEM,
        SpaceError::BadRange | SpaceError::Overlap => EINVAL,
        // Linux's answer for advice or unmapping over a hole.
        SpaceError::NotMapped => ENOMEM,
    }
}

fn write(buffer: u64, len: u64) -> Result<u64, i64> {
    let len = usize::try_from(len).map_err(|_| EINVAL)?;
    if len > WRITE_MAX {
        return Err(EINVAL);
    }
    let mut bytes = alloc::vec![0u8; len];
    with_space(|space| {
        space
            .read_user(buffer, &mut bytes)
            .map_err(|error| match error {
                FaultError::OutOfMemory | FaultError::ResidentLimit => ENOMEM,
                _ => EFAULT,
            })?;
        Ok(0)
    })?;
    let text = alloc::string::String::from_utf8_lossy(&bytes);
    let (pid, name) = super::current_task()
        .map(|task| (task.pid, task.name.clone()))
        .unwrap_or_default();
    log::info!("[task {pid} '{name}'] {}", text.trim_end_matches('\n'));
    Ok(len as u64)
}

/// `wait`: the status goes to user memory and the result says how the child ended, so that no
/// exit status (-10, -1000, ...) can be mistaken for an error number.
fn wait(pid: u64, status_address: u64) -> Result<u64, i64> {
    let pid = u32::try_from(pid).map_err(|_| ECHILD)?;
    if !super::has_child(pid) {
        return Err(ECHILD);
    }
    let write_status = |status: i64| {
        if status_address == 0 {
            return Ok(0);
        }
        with_space(|space| {
            space
                .write_user(status_address, &status.to_ne_bytes())
                .map(|()| 0)
                .map_err(|error| match error {
                    FaultError::OutOfMemory | FaultError::ResidentLimit => ENOMEM,
                    _ => EFAULT,
                })
        })
    };
    // A bad status address fails before the child is reaped, so its status is not lost.
    write_status(0)?;
    match super::wait_child(pid) {
        Some(super::TaskExit::Exited(status)) => write_status(status).map(|_| WAIT_EXITED),
        Some(super::TaskExit::Killed(_)) => Ok(WAIT_KILLED),
        None => Err(ECHILD),
    }
}

fn mmap(len: u64, protection: u64) -> Result<u64, i64> {
    if protection & !(PROT_READ | PROT_WRITE | PROT_EXEC) != 0 {
        return Err(EINVAL);
    }
    let mut flags = RegionFlags::empty();
    flags.set(RegionFlags::READ, protection & PROT_READ != 0);
    flags.set(RegionFlags::WRITE, protection & PROT_WRITE != 0);
    flags.set(RegionFlags::EXECUTE, protection & PROT_EXEC != 0);
    let len = len
        .checked_next_multiple_of(crate::mm::PAGE_SIZE)
        .ok_or(EINVAL)?;
    with_space(|space| space.map_anonymous(None, len, flags).map_err(space_errno))
}

fn madvise(address: u64, len: u64, advice: u64) -> Result<u64, i64> {
    if advice == MADV_DONTNEED {
        return with_space(|space| space.discard(address, len).map(|_| 0).map_err(space_errno));
    }
    let mergeable = match advice {
        MADV_MERGEABLE => true,
        MADV_UNMERGEABLE => false,
        _ => return Err(EINVAL),
    };
    with_space(|space| {
        space
            .advise_mergeable(address, len, mergeable)
            .map(|()| 0)
            .map_err(space_errno)
    })
}

fn has_diagnostics() -> bool {
    super::current_task().is_some_and(|task| task.capabilities.contains(Capabilities::DIAGNOSTICS))
}

/// Longest name `event` prints.
pub const EVENT_NAME_MAX: usize = 32;

/// Prints an `EVENT` line named by the task (its pid added).
fn event(name: u64, len: u64) -> Result<u64, i64> {
    if !has_diagnostics() {
        return Err(EPERM);
    }
    let len = usize::try_from(len).map_err(|_| EINVAL)?;
    if len == 0 || len > EVENT_NAME_MAX {
        return Err(EINVAL);
    }
    let mut bytes = [0u8; EVENT_NAME_MAX];
    with_space(|space| {
        space
            .read_user(name, &mut bytes[..len])
            .map(|()| 0)
            .map_err(|_| EFAULT)
    })?;
    let name = &bytes[..len];
    if !name
        .iter()
        .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'_')
    {
        return Err(EINVAL);
    }
    let name = core::str::from_utf8(name).map_err(|_| EINVAL)?;
    let pid = super::current_task().map_or(0, |task| task.pid);
    let t_ns = crate::time::uptime_ns().unwrap_or(0);
    crate::println!("EVENT {{\"name\":\"{name}\",\"t_ns\":{t_ns},\"pid\":{pid}}}");
    Ok(0)
}

/// `frame_of`: the pfn behind `address` in the caller's own regions (0: nothing mapped yet).
fn frame_of(address: u64) -> Result<u64, i64> {
    if !has_diagnostics() {
        return Err(EPERM);
    }
    with_space(|space| {
        if space.region_at(address).is_none() {
            return Err(EFAULT);
        }
        Ok(space
            .translate(address & !(crate::mm::PAGE_SIZE - 1))
            .map_or(0, |(pfn, _)| pfn))
    })
}

fn check_memory() -> Result<u64, i64> {
    if !has_diagnostics() {
        return Err(EPERM);
    }
    match checker::check() {
        Ok(_) => Ok(0),
        Err(problem) => {
            log::error!("check_memory: {problem}");
            Err(EIO)
        }
    }
}
