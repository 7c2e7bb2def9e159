//! Every tunable of the kernel, in one place. Each is set from the kernel command line as
//! `mechanism.name=value` (see [`crate::cmdline`]) and is readable at run time.
//! A value outside a tunable's range is refused with a logged error and the default stays.

use core::sync::atomic::{AtomicU64, Ordering};

pub struct Tunable {
    pub name: &'static str,
    pub help: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
    value: AtomicU64,
    /// Called after every successful `set`, so that a change takes effect at once (whatever
    /// sets it: the command line, the console's `set`, a test).
    on_change: Option<fn()>,
}

impl Tunable {
    const fn new(name: &'static str, default: u64, min: u64, max: u64, help: &'static str) -> Self {
        Self {
            name,
            help,
            default,
            min,
            max,
            value: AtomicU64::new(default),
            on_change: None,
        }
    }

    /// The same tunable, with `hook` run after each change of its value.
    const fn on_change(self, hook: fn()) -> Self {
        Self {
            on_change: Some(hook),
            ..self
        }
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    /// Sets the value if it is in range.
    pub fn set(&self, value: u64) -> Result<(), TunableError> {
        if value < self.min || value > self.max {
            return Err(TunableError::OutOfRange {
                min: self.min,
                max: self.max,
            });
        }
        self.value.store(value, Ordering::Relaxed);
        if let Some(hook) = self.on_change {
            hook();
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunableError {
    Unknown,
    NotANumber,
    OutOfRange { min: u64, max: u64 },
}

impl core::fmt::Display for TunableError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Self::Unknown => f.write_str("no such tunable"),
            Self::NotANumber => f.write_str("not a number"),
            Self::OutOfRange { min, max } => write!(f, "out of range {min}..={max}"),
        }
    }
}

pub static SCHED_TIMESLICE_MS: Tunable = Tunable::new(
    "sched.timeslice_ms",
    10,
    1,
    1000,
    "how long a thread runs before another ready one preempts it",
);

pub static TEST_TIME_LIMIT_S: Tunable = Tunable::new(
    "test.time_limit_s",
    60,
    1,
    3600,
    "test kernels: how long one test may run before the run is declared hung",
);

pub static REPORTING_ENABLED: Tunable = Tunable::new(
    "reporting.enabled",
    1,
    0,
    1,
    "free page reporting: 1 gives free memory back to the host, 0 keeps it",
)
.on_change(crate::mm::reporting::tunables_changed);

pub static REPORTING_MIN_ORDER: Tunable = Tunable::new(
    "reporting.min_order",
    9,
    5,
    10,
    "smallest free block reported to the host (9: 2 MiB, what a host with huge pages can drop)",
)
.on_change(crate::mm::reporting::tunables_changed);

pub static REPORTING_DELAY_MS: Tunable = Tunable::new(
    "reporting.delay_ms",
    50,
    0,
    10_000,
    "wait after the trigger before a pass (lets a burst of frees settle; Linux waits 2000)",
);

pub static REPORTING_CAPACITY: Tunable = Tunable::new(
    "reporting.capacity",
    32,
    1,
    32,
    "blocks per report (the device's reporting queue holds 32)",
);

pub static REPORTING_HIGH_WATER_MIB: Tunable = Tunable::new(
    "reporting.high_water_mib",
    32,
    1,
    1 << 20,
    "unreported free memory (MiB, in blocks of the minimum order and up) that wakes the worker",
)
.on_change(crate::mm::reporting::tunables_changed);

pub static REPORTING_BUDGET: Tunable = Tunable::new(
    "reporting.budget",
    64,
    1,
    100_000,
    "reports per pass before the worker yields (another pass follows after the delay)",
);

pub static BALLOON_TIMEOUT_MS: Tunable = Tunable::new(
    "balloon.timeout_ms",
    5000,
    10,
    600_000,
    "how long the balloon device may take to acknowledge a request before it counts as dead (reset, not used again)",
);

pub static SCENARIO_RECLAIM_MIB: Tunable = Tunable::new(
    "scenario.reclaim_mib",
    1024,
    1,
    1 << 20,
    "scenario=reclaim: how much memory to touch and free",
);

pub static SCENARIO_IDLE_MS: Tunable = Tunable::new(
    "scenario.idle_ms",
    6000,
    0,
    3_600_000,
    "scenario=reclaim: how long to stay idle after freeing (the host watches meanwhile)",
);

pub static SCENARIO_PHASED_MIB: Tunable = Tunable::new(
    "scenario.phased_mib",
    1200,
    4,
    1 << 20,
    "scenario=phased: the grow (the other phases are proportional)",
);

pub static SCENARIO_PHASED_UNIT_MS: Tunable = Tunable::new(
    "scenario.phased_unit_ms",
    1000,
    10,
    60_000,
    "scenario=phased: the time unit of the holds (grow 5, fragment 20, regrow 5, ...)",
);

pub static USER_MAX_RESIDENT_PCT: Tunable = Tunable::new(
    "user.max_resident_pct",
    50,
    1,
    100,
    "most memory one user address space may hold, in percent of managed memory",
);

pub static USER_MAX_TASKS: Tunable = Tunable::new(
    "user.max_tasks",
    512,
    1,
    65_536,
    "most user tasks alive at once (spawn and clone fail beyond it; each costs at least 64 KiB)",
);

pub static COMPACTION_PROACTIVENESS: Tunable = Tunable::new(
    "compaction.proactiveness",
    50,
    0,
    100,
    "how hard the background task keeps memory in whole 2 MiB blocks: it starts when the \
     fragmentation score passes 110 - this and stops at 100 - this (0: off)",
)
// Takes effect at once: the background task looks again with the new value.
.on_change(crate::mm::compaction::poke);

pub static COMPACTION_STRANDED_HIGH_MIB: Tunable = Tunable::new(
    "compaction.stranded_high_mib",
    32,
    1,
    1 << 20,
    "free memory in pieces below reporting.min_order (which the host cannot get back) that \
     starts the background task whatever the score",
)
// Takes effect at once: the background task looks again with the new value.
.on_change(crate::mm::compaction::poke);

pub static COMPACTION_STRANDED_LOW_MIB: Tunable = Tunable::new(
    "compaction.stranded_low_mib",
    8,
    0,
    1 << 20,
    "the background task stops once stranded free memory is below this (and the score at its \
     low mark)",
)
// Takes effect at once: the background task looks again with the new value.
.on_change(crate::mm::compaction::poke);

pub static COMPACTION_MAX_USED_PCT: Tunable = Tunable::new(
    "compaction.max_used_pct",
    30,
    1,
    100,
    "the background task moves pages only out of 2 MiB pageblocks at most this full (emptying a \
     quarter-full block copies 128 pages per 2 MiB given back; a fuller block, still being \
     freed, would be copied only to be freed); 100: any block. Direct compaction and the \
     console's compact take any block",
)
// Takes effect at once: the background task looks again with the new value.
.on_change(crate::mm::compaction::poke);

pub static COMPACTION_EXTFRAG_THRESHOLD: Tunable = Tunable::new(
    "compaction.extfrag_threshold",
    500,
    0,
    1000,
    "a failed allocation above order 3 compacts only if the fragmentation index exceeds this \
     (below it the memory is short, not in pieces)",
);

pub static SCENARIO_FRAGMENT_MIB: Tunable = Tunable::new(
    "scenario.fragment_mib",
    1920,
    1,
    1 << 22,
    "scenario=fragment and bench=fragmentation: memory the tasks fill before freeing 3 of every \
     4 pages of each 2 MiB block (sized for a 2 GiB guest; capped at free memory less a reserve)",
);

pub static SCENARIO_FRAGMENT_IDLE_MS: Tunable = Tunable::new(
    "scenario.fragment_idle_ms",
    8000,
    0,
    3_600_000,
    "scenario=fragment: how long to stay idle after the free (compaction and reporting work \
     meanwhile, the host watches) before the tasks verify their pages",
);

pub static BENCH_FRAGMENTATION_WATCH_MS: Tunable = Tunable::new(
    "bench.fragmentation_watch_ms",
    3000,
    100,
    600_000,
    "bench=fragmentation: how long the score is sampled (every 100 ms) after each fragmenting \
     workload before the 2 MiB allocations start",
);

pub static SOAK_SECONDS: Tunable = Tunable::new(
    "soak.seconds",
    45,
    1,
    86_400,
    "scenario=soak: how long tasks churn memory (phases start until then)",
);

pub static SOAK_SEED: Tunable = Tunable::new(
    "soak.seed",
    1,
    0,
    u64::MAX,
    "scenario=soak: seed of the tasks' sizes, rounds, clones and the soak's kills",
);

pub static SOAK_TASKS: Tunable = Tunable::new(
    "soak.tasks",
    4,
    1,
    64,
    "scenario=soak: most tasks started together in one phase (each may clone)",
);

pub static KSM_RUN: Tunable = Tunable::new(
    "ksm.run",
    0,
    0,
    2,
    "KSM scanner: 0 stops it (merged pages stay merged), 1 runs it, 2 stops it and unmerges \
     every merged page",
)
.on_change(crate::mm::ksm::poke);

pub static KSM_PAGES_TO_SCAN: Tunable = Tunable::new(
    "ksm.pages_to_scan",
    KSM_DEFAULT_PAGES_TO_SCAN,
    1,
    1 << 24,
    "pages the KSM scanner looks at per wake (default from the measured cost per page: about \
     4 ms of work per 20 ms sleep, so the scanner takes at most ~20% of the CPU)",
)
.on_change(crate::mm::ksm::poke);

/// See `mm::ksm`'s module documentation for the measurement behind it.
pub const KSM_DEFAULT_PAGES_TO_SCAN: u64 = 2000;

pub static KSM_SLEEP_MILLISECS: Tunable = Tunable::new(
    "ksm.sleep_millisecs",
    20,
    0,
    600_000,
    "how long the KSM scanner sleeps between wakes (0: it only yields)",
)
.on_change(crate::mm::ksm::poke);

pub static KSM_USE_ZERO_PAGES: Tunable = Tunable::new(
    "ksm.use_zero_pages",
    0,
    0,
    1,
    "1: zero-filled mergeable pages map the shared zero page instead of a KSM page",
)
.on_change(crate::mm::ksm::poke);

pub static KSM_MAX_PAGE_SHARING: Tunable = Tunable::new(
    "ksm.max_page_sharing",
    256,
    2,
    1 << 20,
    "most mappings of one KSM page; beyond it identical pages form another KSM copy",
)
.on_change(crate::mm::ksm::poke);

pub static KSM_SMART_SCAN: Tunable = Tunable::new(
    "ksm.smart_scan",
    1,
    0,
    1,
    "1: pages that stayed unmerged through three looks are looked at less often (Linux's smart scan)",
)
.on_change(crate::mm::ksm::poke);

pub static SCENARIO_KSM_MIB: Tunable = Tunable::new(
    "scenario.ksm_mib",
    64,
    1,
    1 << 16,
    "scenario=ksm: how much memory each of the four spaces fills with the same content \
     (bench=ksm: each of its spaces)",
);

pub static SCENARIO_KSM_INTERLEAVE: Tunable = Tunable::new(
    "scenario.ksm_interleave",
    0,
    0,
    1,
    "scenario=ksm: 1 fills the spaces page by page in turn, so the duplicates KSM frees lie \
     between the pages that stay (compaction must move KSM pages for the host to see it)",
);

pub static MM_DEFERRED_INIT: Tunable = Tunable::new(
    "mm.deferred_init",
    1,
    0,
    1,
    "1: boot initialises each zone's frame records only until it has 32 MiB free above its high \
     watermark and the thread pgdatinit does the rest after boot (allocations that find a zone \
     short initialise more at once); 0: all at boot, before the main thread (boot time grows \
     with memory). Read once, at boot",
);

/// All tunables, for the command line and the console.
pub static ALL: &[&Tunable] = &[
    &SCHED_TIMESLICE_MS,
    &MM_DEFERRED_INIT,
    &TEST_TIME_LIMIT_S,
    &REPORTING_ENABLED,
    &REPORTING_MIN_ORDER,
    &REPORTING_DELAY_MS,
    &REPORTING_CAPACITY,
    &REPORTING_HIGH_WATER_MIB,
    &REPORTING_BUDGET,
    &BALLOON_TIMEOUT_MS,
    &SCENARIO_RECLAIM_MIB,
    &SCENARIO_IDLE_MS,
    &SCENARIO_PHASED_MIB,
    &SCENARIO_PHASED_UNIT_MS,
    &USER_MAX_RESIDENT_PCT,
    &USER_MAX_TASKS,
    &COMPACTION_PROACTIVENESS,
    &COMPACTION_STRANDED_HIGH_MIB,
    &COMPACTION_STRANDED_LOW_MIB,
    &COMPACTION_MAX_USED_PCT,
    &COMPACTION_EXTFRAG_THRESHOLD,
    &SCENARIO_FRAGMENT_MIB,
    &SCENARIO_FRAGMENT_IDLE_MS,
    &BENCH_FRAGMENTATION_WATCH_MS,
    &SOAK_SECONDS,
    &SOAK_SEED,
    &SOAK_TASKS,
    &KSM_RUN,
    &KSM_PAGES_TO_SCAN,
    &KSM_SLEEP_MILLISECS,
    &KSM_USE_ZERO_PAGES,
    &KSM_MAX_PAGE_SHARING,
    &KSM_SMART_SCAN,
    &SCENARIO_KSM_MIB,
    &SCENARIO_KSM_INTERLEAVE,
];

pub fn find(name: &str) -> Option<&'static Tunable> {
    ALL.iter().copied().find(|tunable| tunable.name == name)
}

/// Parses and sets `name=value`.
pub fn set_from_str(name: &str, value: &str) -> Result<u64, TunableError> {
    let tunable = find(name).ok_or(TunableError::Unknown)?;
    let value: u64 = value.parse().map_err(|_| TunableError::NotANumber)?;
    tunable.set(value)?;
    Ok(value)
}

/// The time slice in nanoseconds.
pub fn sched_timeslice_ns() -> u64 {
    SCHED_TIMESLICE_MS.get() * 1_000_000
}
