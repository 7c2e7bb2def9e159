//! The fragmenting workload of `scenario=fragment` and `bench=fragmentation`: ring-3 tasks
//! (the `fragmenter` program) fill most of free memory with signed pages, then free 3 of every
//! 4 pages of each 2 MiB physical block, and later check that every page they kept still
//! carries its signature (compaction moves pages: a moved page must keep its contents).
//!
//! The tasks choose what to free themselves: each asks the frame behind each of its pages
//! (the `frame_of` diagnostic, like Linux's pagemap; they are spawned with the diagnostics
//! capability) and drops with `madvise(DONTNEED)` the pages whose frame number is not a
//! multiple of 4. Every 2 MiB block the tasks filled is then a quarter used, in single pages
//! spread over all of it: free memory in pieces of 4 and 8 KiB that neither a 2 MiB
//! allocation nor free page reporting can use until compaction moves the survivors together.
//!
//! The kernel drives the phases through a control block in each task's memory (the lowest
//! page of its stack region, which the program never reaches): it writes a command, the task
//! runs the phase and writes back what it did (see the program's comment in
//! [`crate::user::programs`]).
//!
//! Owns nothing global: a [`Workload`] owns its tasks; dropping it kills those still running.

use crate::mm::page_alloc;
use crate::task;
use crate::time::Instant;
use crate::tunables;
use crate::user::{self, Capabilities, STACK_BYTES, STACK_TOP, TaskExit, TaskHandle, programs};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

/// The control block: the lowest page of the task's stack region.
const CONTROL: u64 = STACK_TOP - STACK_BYTES;
/// Words of the control block (see the `fragmenter` program).
const COMMAND: u64 = 0;
const PAGES: u64 = 1;
const SEED: u64 = 2;
const DONE: u64 = 3;
const KEPT: u64 = 4;
const FREED: u64 = 5;
const VERIFIED: u64 = 6;
const BAD: u64 = 7;
const DATA: u64 = 8;

/// Phases (commands and what the task reports done).
const FILL: u64 = 1;
const FRAGMENT: u64 = 2;
const VERIFY: u64 = 3;
const EXIT: u64 = 4;

/// Longest a phase may take (a 2 GiB fill under TCG takes seconds, not minutes).
const PHASE_LIMIT: Duration = Duration::from_secs(600);

/// How the workload is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub tasks: u64,
    pub pages_per_task: u64,
    /// Free pages when it was planned.
    pub free_pages: u64,
}

impl Plan {
    pub fn total_pages(&self) -> u64 {
        self.tasks * self.pages_per_task
    }
}

/// Free memory the workload leaves alone: the zones' high watermarks (the kernel's), room for
/// the tasks' page tables and stacks, and 16 MiB for the kernel's own needs meanwhile.
fn reserve_pages(free: u64) -> u64 {
    let high: u64 = page_alloc::all_zones()
        .iter()
        .map(|zone| zone.watermarks.high)
        .sum();
    high + free / 64 + 4096
}

/// Plans a fill of `mib` MiB (`scenario.fragment_mib`), capped at free memory less a reserve,
/// over at least 4 tasks, each well under `user.max_resident_pct` of memory.
pub fn plan(mib: u64) -> Plan {
    let free = page_alloc::free_pages();
    let cap = free.saturating_sub(reserve_pages(free));
    let wanted = mib * 256;
    if wanted > cap {
        log::info!(
            "fragment: {mib} MiB asked, {} MiB filled (free memory less the kernel's reserve)",
            cap / 256
        );
    }
    let total = wanted.min(cap);
    let per_space =
        page_alloc::managed_pages() * tunables::USER_MAX_RESIDENT_PCT.get() / 100 * 9 / 10;
    let tasks = total.div_ceil(per_space.max(1)).max(4);
    Plan {
        tasks,
        pages_per_task: total / tasks,
        free_pages: free,
    }
}

/// What the tasks did, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub filled: u64,
    pub kept: u64,
    pub freed: u64,
    pub verified: u64,
    pub bad: u64,
}

/// The running workload: its tasks, waiting for the next command.
pub struct Workload {
    tasks: Vec<TaskHandle>,
    plan: Plan,
}

impl Workload {
    /// Spawns the tasks of `plan` (each signs its pages with `seed` and its index); they wait.
    pub fn start(plan: Plan, seed: u64) -> Result<Workload, String> {
        let program = programs::fragmenter();
        let mut workload = Workload {
            tasks: Vec::with_capacity(plan.tasks as usize),
            plan,
        };
        for index in 0..plan.tasks {
            let handle =
                user::spawn_with("fragmenter", &program, CONTROL, Capabilities::DIAGNOSTICS)
                    .map_err(|error| {
                        format!("fragmenter {index} did not start: {}", error.reason())
                    })?;
            workload.tasks.push(handle);
            let task_seed = seed ^ (index << 56);
            workload.write(index as usize, PAGES, plan.pages_per_task)?;
            workload.write(index as usize, SEED, task_seed)?;
        }
        Ok(workload)
    }

    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// Each task's address space and the start of its data region (after the fill), for
    /// tests that look at or tamper with the pages.
    pub fn data_regions(&self) -> Result<Vec<(crate::mm::space::SharedSpace, u64)>, String> {
        (0..self.tasks.len())
            .map(|task| {
                let space = self.tasks[task]
                    .task()
                    .space()
                    .ok_or_else(|| format!("fragmenter {task} ended early"))?;
                Ok((space, self.read(task, DATA)?))
            })
            .collect()
    }

    fn write(&self, task: usize, word: u64, value: u64) -> Result<(), String> {
        let space = self.tasks[task]
            .task()
            .space()
            .ok_or_else(|| format!("fragmenter {task} ended early"))?;
        space
            .lock()
            .write_user(CONTROL + word * 8, &value.to_ne_bytes())
            .map_err(|error| format!("fragmenter {task}: control block: {}", error.reason()))
    }

    fn read(&self, task: usize, word: u64) -> Result<u64, String> {
        let space = self.tasks[task]
            .task()
            .space()
            .ok_or_else(|| format!("fragmenter {task} ended early"))?;
        let mut bytes = [0u8; 8];
        space
            .lock()
            .read_user(CONTROL + word * 8, &mut bytes)
            .map_err(|error| format!("fragmenter {task}: control block: {}", error.reason()))?;
        Ok(u64::from_ne_bytes(bytes))
    }

    /// Tells every task to run `phase` and waits until all have done it.
    fn run_phase(&self, phase: u64) -> Result<(), String> {
        for task in 0..self.tasks.len() {
            self.write(task, COMMAND, phase)?;
        }
        let start = Instant::now();
        for task in 0..self.tasks.len() {
            while self.read(task, DONE)? < phase {
                if start.elapsed() > PHASE_LIMIT {
                    return Err(format!("fragmenter {task} did not finish phase {phase}"));
                }
                task::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    fn sum(&self, word: u64) -> Result<u64, String> {
        (0..self.tasks.len())
            .map(|task| self.read(task, word))
            .sum()
    }

    /// The tasks map and sign their pages.
    pub fn fill(&self) -> Result<u64, String> {
        self.run_phase(FILL)?;
        Ok(self.plan.total_pages())
    }

    /// The tasks free 3 of every 4 pages of each 2 MiB block. Pages freed into the per-CPU
    /// cache are drained to the buddy lists, so the score counts them.
    pub fn fragment(&self) -> Result<Totals, String> {
        self.run_phase(FRAGMENT)?;
        page_alloc::drain_per_cpu_caches();
        Ok(Totals {
            filled: self.plan.total_pages(),
            kept: self.sum(KEPT)?,
            freed: self.sum(FREED)?,
            ..Totals::default()
        })
    }

    /// The tasks check every page they kept and exit: an error names any task that found a
    /// wrong signature (or a kept page gone) or failed otherwise.
    pub fn verify(mut self) -> Result<Totals, String> {
        self.run_phase(VERIFY)?;
        let totals = Totals {
            filled: self.plan.total_pages(),
            kept: self.sum(KEPT)?,
            freed: self.sum(FREED)?,
            verified: self.sum(VERIFIED)?,
            bad: self.sum(BAD)?,
        };
        for task in 0..self.tasks.len() {
            self.write(task, COMMAND, EXIT)?;
        }
        let mut problems = Vec::new();
        for (index, handle) in self.tasks.drain(..).enumerate() {
            match handle.join_timeout(Duration::from_secs(60)) {
                Ok(report) if report.exit == TaskExit::Exited(0) => {}
                Ok(report) => problems.push(format!("fragmenter {index}: {:?}", report.exit)),
                Err(handle) => {
                    let _ = user::kill(handle.pid(), "fragment: did not exit after verifying");
                    problems.push(format!("fragmenter {index} did not exit"));
                }
            }
        }
        if totals.bad > 0 || totals.verified != totals.kept {
            problems.push(format!(
                "{} pages with a wrong signature, {} verified of {} kept",
                totals.bad, totals.verified, totals.kept
            ));
        }
        if problems.is_empty() {
            Ok(totals)
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Drop for Workload {
    /// Tasks still waiting (a phase failed) are killed and waited for: their memory comes back.
    fn drop(&mut self) {
        for handle in self.tasks.drain(..) {
            let _ = user::kill(handle.pid(), "fragment: workload abandoned");
            if handle.join_timeout(Duration::from_secs(30)).is_err() {
                log::error!("fragment: a fragmenter task did not end after its kill");
            }
        }
    }
}

/// Runs `f` with the proactive compaction task paused (`compaction.proactiveness` 0), then
/// restores the value it had and pokes the task (so it looks at once).
pub fn with_compaction_paused<R>(f: impl FnOnce() -> R) -> R {
    let configured = tunables::COMPACTION_PROACTIVENESS.get();
    let _ = tunables::COMPACTION_PROACTIVENESS.set(0);
    let result = f();
    let _ = tunables::COMPACTION_PROACTIVENESS.set(configured);
    crate::mm::compaction::poke();
    result
}
