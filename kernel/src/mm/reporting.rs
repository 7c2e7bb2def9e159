//! Free page reporting: a kernel thread that tells the host which free blocks it may take back.
//!
//! Owns the reporting worker, its trigger and its counters. It reaches the free lists only
//! through the zone's allocator interface (take the last unreported block, isolate it, put it
//! back as reported: see [`super::buddy`]) and the host only through a [`ReportSink`] (the
//! virtio-balloon driver registers one).
//!
//! The cycle: a free that leaves a zone with at least `reporting.high_water_mib` of unreported
//! memory in blocks of `reporting.min_order` and up raises the trigger; after
//! `reporting.delay_ms` the worker isolates up to `reporting.capacity` unreported blocks (they
//! cannot be allocated while the host looks at them), reports them in one request, waits for
//! the host's acknowledgement, and puts them back behind the boundary as reported. It never
//! takes a zone below its high watermark, and after `reporting.budget` reports it starts a new
//! pass later instead of going on. A second later it looks once more unasked (a sweep, repeated
//! while sweeps find something), so the tail of a burst of frees, too small to raise the
//! trigger, does not stay with the host.

use super::buddy::{End, MAX_ORDER, MigrateType, ORDERS};
use super::frame::FrameFlags;
use super::page_alloc;
use crate::sync::IrqMutex;
use crate::task::{self, WaitQueue};
use crate::tunables;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use core::time::Duration;

/// Why a report did not reach the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportError {
    /// The device is gone or broken: reporting stops.
    DeviceGone,
    /// This report failed; the blocks go back unreported and a later pass tries again.
    Failed,
}

/// Where reports go: the host's side of free page reporting.
pub trait ReportSink: Send {
    /// Tells the host it may discard the memory of `blocks` (guest-physical start, length in
    /// bytes) and returns once it has acknowledged. The blocks are isolated meanwhile.
    fn report(&mut self, blocks: &[(u64, u64)]) -> Result<(), ReportError>;
}

/// Reporting counters since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportingStats {
    pub passes: u64,
    pub reports: u64,
    pub pages_reported: u64,
    pub bytes_reported: u64,
    pub failures: u64,
    /// Free pages in reported blocks now, per order.
    pub reported_pages_now: [u64; ORDERS],
}

static PASSES: AtomicU64 = AtomicU64::new(0);
static REPORTS: AtomicU64 = AtomicU64::new(0);
static PAGES_REPORTED: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);

static SINK: IrqMutex<Option<Box<dyn ReportSink>>> = IrqMutex::new(None);
static REQUESTED: AtomicBool = AtomicBool::new(false);
static WAKE: WaitQueue = WaitQueue::new();
static WORKER_STARTED: AtomicBool = AtomicBool::new(false);
/// A pass is running (for tests that wait for the worker to settle).
static ACTIVE: AtomicBool = AtomicBool::new(false);

pub fn stats() -> ReportingStats {
    let pages = PAGES_REPORTED.load(Relaxed);
    let mut now = [0; ORDERS];
    for zone in page_alloc::all_zones() {
        let area = zone.lock();
        for (order, pages) in now.iter_mut().enumerate() {
            *pages += area.reported_pages(order as u8);
        }
    }
    ReportingStats {
        passes: PASSES.load(Relaxed),
        reports: REPORTS.load(Relaxed),
        pages_reported: pages,
        bytes_reported: pages * super::PAGE_SIZE,
        failures: FAILURES.load(Relaxed),
        reported_pages_now: now,
    }
}

/// Starts reporting to `sink` (the worker thread starts on first use).
pub fn register(sink: Box<dyn ReportSink>) {
    *SINK.lock() = Some(sink);
    if !WORKER_STARTED.swap(true, Relaxed)
        && let Err(error) = task::spawn("reporting", worker)
    {
        log::error!("reporting: no worker thread ({error:?}): free pages are not reported");
        WORKER_STARTED.store(false, Relaxed);
    }
    refresh_triggers();
    request();
}

/// Stops reporting; returns the sink (after any pass in flight has finished with it).
pub fn unregister() -> Option<Box<dyn ReportSink>> {
    set_triggers(None);
    loop {
        if let Some(sink) = SINK.lock().take() {
            return Some(sink);
        }
        if !ACTIVE.load(Relaxed) {
            return None;
        }
        task::sleep(Duration::from_millis(1));
    }
}

pub fn is_registered() -> bool {
    SINK.lock().is_some() || ACTIVE.load(Relaxed)
}

/// Asks the worker for a pass (the zones' unlock calls this when a free crosses the trigger).
pub fn request() {
    REQUESTED.store(true, Relaxed);
    WAKE.wake_all();
}

/// Whether the worker has nothing requested and nothing running.
pub fn is_idle() -> bool {
    !REQUESTED.load(Relaxed) && !ACTIVE.load(Relaxed)
}

fn set_triggers(trigger: Option<(u8, u64)>) {
    for zone in page_alloc::all_zones() {
        zone.lock().set_report_trigger(trigger);
    }
}

/// Sets every zone's trigger from the tunables (off while reporting is disabled or no device is
/// registered). The worker calls it on every pass; call it after changing a tunable to have the
/// change take effect at once.
pub fn refresh_triggers() {
    if !is_registered() {
        set_triggers(None);
        return;
    }
    let trigger = (tunables::REPORTING_ENABLED.get() == 1).then(|| {
        let order = tunables::REPORTING_MIN_ORDER.get() as u8;
        let pages = tunables::REPORTING_HIGH_WATER_MIB.get() * 256;
        (order, pages)
    });
    set_triggers(trigger);
}

/// A reporting tunable changed (the command line, the console's `set`, a test): the triggers
/// follow at once, and when reporting is on a pass is requested, so memory freed while it was
/// off (when no free could raise the trigger) is reported now, not at the next large free.
/// Turning it off stops a pass in flight after its current report.
pub fn tunables_changed() {
    if !page_alloc::is_initialised() {
        // Boot's command line: `register` sets the triggers from the values.
        return;
    }
    refresh_triggers();
    if tunables::REPORTING_ENABLED.get() == 1 && is_registered() {
        request();
    }
}

/// How long after a requested pass the worker looks once more without a request: what was
/// freed after that pass, below `reporting.high_water_mib`, raises no trigger, and would stay
/// with the host until the next large free (the tail of a burst of frees: up to the high-water
/// mark per zone, for as long as the guest stays idle).
const SWEEP_AFTER: Duration = Duration::from_secs(1);

fn worker() {
    let mut sweep = false;
    loop {
        if sweep {
            let _ = WAKE.wait_until_timeout(|| REQUESTED.load(Relaxed), SWEEP_AFTER);
        } else {
            WAKE.wait_until(|| REQUESTED.load(Relaxed));
        }
        // A requested pass is followed by a sweep; a sweep by another only if it found
        // something (the burst is still going on).
        let requested = REQUESTED.load(Relaxed);
        if requested {
            task::sleep(Duration::from_millis(tunables::REPORTING_DELAY_MS.get()));
        }
        let reports_before = REPORTS.load(Relaxed);
        sweep = false;
        // Active before the request is cleared: `is_idle` never sees a gap.
        ACTIVE.store(true, Relaxed);
        REQUESTED.store(false, Relaxed);
        refresh_triggers();
        if tunables::REPORTING_ENABLED.get() == 0 {
            ACTIVE.store(false, Relaxed);
            continue;
        }
        let Some(mut sink) = SINK.lock().take() else {
            ACTIVE.store(false, Relaxed);
            continue;
        };
        PASSES.fetch_add(1, Relaxed);
        match run_pass(sink.as_mut()) {
            Ok(PassEnd::Done) => {
                *SINK.lock() = Some(sink);
                sweep = requested || REPORTS.load(Relaxed) > reports_before;
            }
            Ok(PassEnd::BudgetSpent) => {
                *SINK.lock() = Some(sink);
                request();
            }
            Ok(PassEnd::ReportFailed) => {
                // No retry loop against a failing host: the next free that crosses the
                // trigger starts the next pass (the blocks are unreported, so it will).
                log::warn!("free page reporting: a report failed; the blocks stay unreported");
                *SINK.lock() = Some(sink);
            }
            Err(_) => {
                log::error!("free page reporting: the device is gone; reporting stops");
                drop(sink);
                set_triggers(None);
            }
        }
        ACTIVE.store(false, Relaxed);
    }
}

/// How a pass ended.
enum PassEnd {
    /// Nothing left to report.
    Done,
    /// The budget ran out with work left: another pass follows.
    BudgetSpent,
    /// A report failed; its blocks went back unreported.
    ReportFailed,
}

/// One pass over every zone; `Err` only when the device is gone.
fn run_pass(sink: &mut dyn ReportSink) -> Result<PassEnd, ReportError> {
    let capacity = tunables::REPORTING_CAPACITY.get() as usize;
    let min_order = tunables::REPORTING_MIN_ORDER.get() as u8;
    let budget = tunables::REPORTING_BUDGET.get();
    let mut batch: Vec<(u32, u8)> = Vec::with_capacity(capacity);
    let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(capacity);
    let mut reports = 0;
    // Blocks of the reported orders waiting in per-CPU lists (the pageblock order's) are free
    // memory this pass would not see, and those of the orders above the small ones (4..=8) are
    // pieces of 2 MiB blocks that cannot form while they wait: they go back to the zones first,
    // to merge and be reported as whole blocks. The small orders' lists stay (they strand no
    // more than the order-0 lists, which compaction drains when free memory is stranded).
    page_alloc::drain_per_cpu_caches_from(min_order.min(page_alloc::PCP_COSTLY_ORDER + 1));
    for zone in page_alloc::all_zones() {
        loop {
            if tunables::REPORTING_ENABLED.get() == 0 {
                // Turned off during the pass: nothing more goes to the host.
                return Ok(PassEnd::Done);
            }
            batch.clear();
            {
                let mut area = zone.lock();
                'fill: for order in (min_order..=MAX_ORDER).rev() {
                    for kind in MigrateType::ALLOCATABLE {
                        while batch.len() < capacity {
                            // Never take the zone below its high watermark.
                            if area.free_pages < zone.watermarks.high + (1 << order) {
                                break 'fill;
                            }
                            let Some(index) = area.last_unreported(order, kind) else {
                                break;
                            };
                            area.isolate(index).expect("a listed block is free");
                            batch.push((index, order));
                        }
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            ranges.clear();
            ranges.extend(batch.iter().map(|&(index, order)| {
                (
                    (zone.start_pfn + index as u64) * super::PAGE_SIZE,
                    super::PAGE_SIZE << order,
                )
            }));
            let result = sink.report(&ranges);
            let flags = if result.is_ok() {
                FrameFlags::REPORTED
            } else {
                FrameFlags::empty()
            };
            {
                let mut area = zone.lock();
                for &(index, _) in &batch {
                    area.put_back_isolated(index, End::Tail, flags);
                }
            }
            match result {
                Ok(()) => {
                    let pages: u64 = batch.iter().map(|&(_, order)| 1u64 << order).sum();
                    REPORTS.fetch_add(1, Relaxed);
                    PAGES_REPORTED.fetch_add(pages, Relaxed);
                }
                Err(error) => {
                    FAILURES.fetch_add(1, Relaxed);
                    if error == ReportError::DeviceGone {
                        return Err(error);
                    }
                    return Ok(PassEnd::ReportFailed);
                }
            }
            reports += 1;
            if reports >= budget {
                return Ok(PassEnd::BudgetSpent);
            }
            if batch.len() < capacity {
                break;
            }
        }
    }
    Ok(PassEnd::Done)
}
