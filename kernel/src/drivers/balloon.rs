//! The virtio-balloon driver, on `virtio-drivers`' PCI transport and virtqueues: free page
//! reporting (a [`ReportSink`] for [`crate::mm::reporting`]), inflating and deflating to the
//! host's target, the statistics queue, and deflate-on-OOM.
//!
//! Owns the device: its transport (behind a lock, for short register accesses), its queues (the
//! reporting queue belongs to the reporting worker's sink, the others to the balloon worker
//! thread), the pages in the balloon, and the driver's counters. Notifications arrive as MSI-X
//! interrupts (one vector for configuration changes, one for the queues); without MSI-X the
//! waits poll every few milliseconds.

use super::pci;
use super::virtio_hal::KernelHal;
use crate::mm::frame::Owner;
use crate::mm::page_alloc::{self, AllocRequest, Pages};
use crate::mm::reporting::{self, ReportError, ReportSink};
use crate::mm::{PAGE_SIZE, buddy::MigrateType};
use crate::sync::{IrqMutex, LockClass};
use crate::task::{self, WaitQueue};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use core::time::Duration;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};
use virtio_drivers::transport::{DeviceType, InterruptStatus, Transport};

const VIRTIO_VENDOR: u16 = 0x1af4;
/// Transitional and modern virtio-balloon.
const DEVICE_IDS: [u16; 2] = [0x1002, 0x1045];
/// Descriptors per queue (QEMU's reporting queue has exactly 32; the others allow more).
const QUEUE_SIZE: usize = 32;
/// PFNs per inflate or deflate request: one page of u32.
const PFNS_PER_REQUEST: usize = PAGE_SIZE as usize / 4;
/// Pages given back per deflate-on-OOM event (as Linux: 1 MiB).
const OOM_DEFLATE_PAGES: u64 = 256;
/// Blocks deflated on OOM but not yet told to the host.
const PENDING_CAPACITY: usize = 64;

bitflags::bitflags! {
    /// Feature bits of the balloon device (virtio spec 5.5.3) and the generic VERSION_1.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Features: u64 {
        const MUST_TELL_HOST = 1 << 0;
        const STATS_VQ = 1 << 1;
        const DEFLATE_ON_OOM = 1 << 2;
        const FREE_PAGE_HINT = 1 << 3;
        const PAGE_POISON = 1 << 4;
        const PAGE_REPORTING = 1 << 5;
        const VERSION_1 = 1 << 32;
    }
}

/// What the driver accepts: every feature whose queue QEMU creates when it offers it (so queue
/// indices agree: QEMU numbers the queues it offers), even FREE_PAGE_HINT, which it never uses.
/// Not PAGE_POISON: free pages need not keep their contents (and QEMU discards nothing then).
const SUPPORTED: Features = Features::STATS_VQ
    .union(Features::DEFLATE_ON_OOM)
    .union(Features::FREE_PAGE_HINT)
    .union(Features::PAGE_REPORTING)
    .union(Features::VERSION_1);

/// The statistics last sent, by QEMU's names (with `_` for `-`), for scenarios and the console.
static LAST_STATISTICS: IrqMutex<[(&str, u64); 10]> = IrqMutex::new([("", 0); 10]);

/// The statistics last sent to the host, as (QEMU's name with `_`, value).
pub fn last_statistics() -> [(&'static str, u64); 10] {
    *LAST_STATISTICS.lock()
}

/// Statistics tags (virtio spec 5.5.6.3), those QEMU 7.2 names.
mod tag {
    pub const SWAP_IN: u16 = 0;
    pub const SWAP_OUT: u16 = 1;
    pub const MAJOR_FAULTS: u16 = 2;
    pub const MINOR_FAULTS: u16 = 3;
    pub const MEMORY_FREE: u16 = 4;
    pub const MEMORY_TOTAL: u16 = 5;
    pub const AVAILABLE: u16 = 6;
    pub const CACHES: u16 = 7;
    pub const HUGETLB_ALLOCATIONS: u16 = 8;
    pub const HUGETLB_FAILURES: u16 = 9;
}

/// A virtqueue and its index on the device (for notifications).
struct Queue {
    ring: VirtQueue<KernelHal, QUEUE_SIZE>,
    index: u16,
}

impl Queue {
    fn new(transport: &mut PciTransport, index: u16) -> Result<Queue, BalloonError> {
        let ring = VirtQueue::new(transport, index, false, false).map_err(BalloonError::Queue)?;
        Ok(Queue { ring, index })
    }

    /// Tells the device about new buffers, if it wants to hear.
    fn notify(&self) {
        if self.ring.should_notify() {
            with_transport(|transport| transport.notify(self.index));
        }
    }

    /// Tells the device about a request (report, inflate, deflate) it must acknowledge; with
    /// the lost-notification fault injection armed, it does not (QEMU then never sees it).
    fn notify_request(&self, what: &str) {
        if INJECT_LOST_NOTIFICATION.swap(false, Relaxed) {
            log::warn!(
                "virtio-balloon: fault injection: the device is not notified of this {what}"
            );
            return;
        }
        self.notify();
    }
}

/// Driver counters since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    pub present: bool,
    pub features: u64,
    /// The host's target and the balloon's size, in pages.
    pub target_pages: u64,
    pub actual_pages: u64,
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    pub oom_deflated_pages: u64,
    pub stats_answered: u64,
    pub config_interrupts: u64,
    pub queue_interrupts: u64,
    /// Times the host asked for more than the guest could spare.
    pub target_refused: u64,
    /// The device did not acknowledge a request within `balloon.timeout_ms`: it was reset and
    /// is not used again.
    pub device_lost: bool,
}

static PRESENT: AtomicBool = AtomicBool::new(false);
static FEATURES: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(0);
/// Pages in the balloon: those in [`BALLOON`] plus those of a deflate request in flight. It
/// changes only under [`BALLOON`]'s lock (the worker and deflate-on-OOM both take it), so code
/// holding that lock reads it once and can trust it; everything else treats it as a snapshot
/// and computes with it saturating.
static ACTUAL: AtomicU64 = AtomicU64::new(0);
/// A target set by a test in place of the host's (`u64::MAX`: none, follow the host).
static TEST_TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
/// Fault injection (tests only): the next deflate request runs a deflate-on-OOM between the
/// worker's look at the balloon's size and its use, the race that made `ACTUAL - target`
/// underflow.
static INJECT_OOM_IN_DEFLATE: AtomicBool = AtomicBool::new(false);
/// Fault injection (tests only): the next request (report, inflate or deflate) is queued but
/// the device is not notified, so it never answers: a dead device, as far as the driver sees.
static INJECT_LOST_NOTIFICATION: AtomicBool = AtomicBool::new(false);
/// The device did not answer in time and was reset: nothing uses it again.
static LOST: AtomicBool = AtomicBool::new(false);
/// The device did not answer and did not reset either (its status never read 0).
static RESET_FAILED: AtomicBool = AtomicBool::new(false);
static INFLATED: AtomicU64 = AtomicU64::new(0);
static DEFLATED: AtomicU64 = AtomicU64::new(0);
static OOM_DEFLATED: AtomicU64 = AtomicU64::new(0);
static STATS_ANSWERED: AtomicU64 = AtomicU64::new(0);
static CONFIG_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
static QUEUE_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
static TARGET_REFUSED: AtomicU64 = AtomicU64::new(0);

/// The device's transport: register accesses only, never held across a wait.
static TRANSPORT: IrqMutex<Option<PciTransport>> = IrqMutex::new(None);
/// Blocks in the balloon (allocated, owner Balloon), last inflated last.
static BALLOON: IrqMutex<Vec<Pages>> = IrqMutex::with_class(Vec::new(), LockClass::Balloon);
/// Blocks deflated on OOM, freed already, not yet told to the host (no allocation needed):
/// (first pfn, pages), a record of freed memory, not a block anyone owns.
static PENDING: IrqMutex<([(u64, u64); PENDING_CAPACITY], usize)> =
    IrqMutex::with_class(([(0, 0); PENDING_CAPACITY], 0), LockClass::Balloon);

/// A move of one ballooned page asked for by compaction (see [`migrate_page`]). The worker
/// does it: it owns the queues.
#[derive(Debug)]
enum MoveSlot {
    Empty,
    Asked {
        old: u64,
        new: Pages,
    },
    Working,
    /// `Err` hands the new page back to the asker.
    Done(Result<(), Pages>),
}
static MOVE: IrqMutex<MoveSlot> = IrqMutex::new(MoveSlot::Empty);
static MOVE_BUSY: AtomicBool = AtomicBool::new(false);
static MOVE_DONE: WaitQueue = WaitQueue::new();
static PAGES_MOVED: AtomicU64 = AtomicU64::new(0);

static QUEUE_EVENT: WaitQueue = WaitQueue::new();
static WORKER_EVENT: WaitQueue = WaitQueue::new();
static WORKER_KICK: AtomicBool = AtomicBool::new(false);
static MSIX: AtomicBool = AtomicBool::new(false);
/// Notifications come as a shared level-triggered INTx line: the handler reads the ISR.
static INTX: AtomicBool = AtomicBool::new(false);

pub fn stats() -> BalloonStats {
    BalloonStats {
        present: PRESENT.load(Relaxed),
        features: FEATURES.load(Relaxed),
        target_pages: TARGET.load(Relaxed),
        actual_pages: ACTUAL.load(Relaxed),
        inflated_pages: INFLATED.load(Relaxed),
        deflated_pages: DEFLATED.load(Relaxed),
        oom_deflated_pages: OOM_DEFLATED.load(Relaxed),
        stats_answered: STATS_ANSWERED.load(Relaxed),
        config_interrupts: CONFIG_INTERRUPTS.load(Relaxed),
        queue_interrupts: QUEUE_INTERRUPTS.load(Relaxed),
        target_refused: TARGET_REFUSED.load(Relaxed),
        device_lost: LOST.load(Relaxed),
    }
}

pub fn is_present() -> bool {
    PRESENT.load(Relaxed)
}

/// The configuration-change interrupt: the host changed its target.
pub fn on_config_interrupt() {
    CONFIG_INTERRUPTS.fetch_add(1, Relaxed);
    kick_worker();
}

/// The queue interrupt (MSI-X), or the device's INTx line: a request came back, the host wants
/// statistics, or (INTx) the configuration changed.
pub fn on_queue_interrupt() {
    if INTX.load(Relaxed) {
        // Reading the ISR tells why and lowers the line. The transport's lock is only ever
        // held with interrupts off, so it is free here.
        let Some(status) = TRANSPORT
            .try_lock()
            .and_then(|mut transport| transport.as_mut().map(|t| t.ack_interrupt()))
        else {
            return;
        };
        if status.contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT) {
            on_config_interrupt();
        }
        if !status.contains(InterruptStatus::QUEUE_INTERRUPT) {
            return;
        }
    }
    QUEUE_INTERRUPTS.fetch_add(1, Relaxed);
    QUEUE_EVENT.wake_all();
    kick_worker();
}

/// Makes the worker follow `pages` instead of the host's `num_pages` (`None`: the host's again).
/// For in-guest tests, which have no QMP; the host still sees `actual`.
pub fn set_test_target(pages: Option<u64>) {
    TEST_TARGET.store(pages.unwrap_or(u64::MAX), Relaxed);
    kick_worker();
}

/// Fault injection (tests only): the next deflate request runs a deflate-on-OOM in the middle
/// of its bookkeeping, between the worker's check of the balloon's size and its use.
pub fn inject_oom_deflate_during_next_deflate() {
    INJECT_OOM_IN_DEFLATE.store(true, Relaxed);
}

/// Fault injection (tests only): the device is not notified of the next request, as if it had
/// stopped answering; after `balloon.timeout_ms` the driver declares it lost.
pub fn inject_lost_notification() {
    INJECT_LOST_NOTIFICATION.store(true, Relaxed);
}

/// Subtracts `pages` from [`ACTUAL`] (call with [`BALLOON`]'s lock held); never wraps: a
/// count that would go below zero is a driver bug, logged, and the count stops at zero.
fn actual_sub(pages: u64) {
    let before = ACTUAL
        .fetch_update(Relaxed, Relaxed, |actual| {
            Some(actual.saturating_sub(pages))
        })
        .unwrap_or(0);
    if before < pages {
        log::error!(
            "virtio-balloon: {pages} pages leave a balloon of {before}: the count stops at 0"
        );
    }
}

/// Why a ballooned page was not moved (it stays in the balloon; the caller keeps `new`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveError {
    /// No device, or it was lost.
    NoDevice,
    /// Another move is in flight.
    Busy,
    /// Not a single ballooned page (any more), or the host did not take the new page.
    NotMoved,
    /// The worker did not start on it in time.
    TimedOut,
}

/// Moves the ballooned page `old` (an order-0 block of the balloon) to `new` (an allocated
/// order-0 page), as Linux's balloon compaction does: the host is told that `new` is inflated
/// before `old` is deflated, so the balloon's size never drops. On success `new` belongs to the
/// balloon and `old` is freed; on failure nothing changed and `new` comes back.
/// Blocks until the balloon worker has done it (it owns the queues): not for the worker itself,
/// nor under a lock.
pub fn migrate_page(old: u64, new: Pages) -> Result<(), (MoveError, Pages)> {
    if !PRESENT.load(Relaxed) || LOST.load(Relaxed) {
        return Err((MoveError::NoDevice, new));
    }
    if new.order() != 0 {
        return Err((MoveError::NotMoved, new));
    }
    if MOVE_BUSY.swap(true, Relaxed) {
        return Err((MoveError::Busy, new));
    }
    *MOVE.lock() = MoveSlot::Asked { old, new };
    kick_worker();
    let finished = || matches!(*MOVE.lock(), MoveSlot::Done(_));
    let outcome = loop {
        let _ = MOVE_DONE.wait_until_timeout(finished, Duration::from_secs(1));
        let mut slot = MOVE.lock();
        match core::mem::replace(&mut *slot, MoveSlot::Empty) {
            MoveSlot::Done(moved) => break moved.map_err(|new| (MoveError::NotMoved, new)),
            MoveSlot::Asked { new, .. } => {
                // Not started: take the request back (the worker will not see it).
                break Err((MoveError::TimedOut, new));
            }
            MoveSlot::Empty => {}
            // Started: its waits on the device are bounded by balloon.timeout_ms.
            MoveSlot::Working => *slot = MoveSlot::Working,
        }
    };
    MOVE_BUSY.store(false, Relaxed);
    outcome
}

/// Ballooned pages moved by compaction since boot.
pub fn pages_moved() -> u64 {
    PAGES_MOVED.load(Relaxed)
}

fn kick_worker() {
    WORKER_KICK.store(true, Relaxed);
    WORKER_EVENT.wake_all();
}

/// Why the driver did not start.
#[derive(Debug)]
pub enum BalloonError {
    NoDevice,
    /// The device has only the legacy (pre-1.0) virtio interface, which this driver does not
    /// speak: QEMU's `disable-modern=on`.
    LegacyOnly,
    Transport(virtio_drivers::transport::pci::VirtioPciError),
    Queue(virtio_drivers::Error),
    NoMemory,
}

impl core::fmt::Display for BalloonError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Self::NoDevice => f.write_str("no virtio-balloon device"),
            Self::LegacyOnly => f.write_str(
                "the virtio-balloon device is legacy-only (no virtio 1.0 interface, as QEMU's disable-modern=on makes it), which this driver does not support",
            ),
            Self::Transport(error) => write!(f, "its PCI transport failed: {error:?}"),
            Self::Queue(error) => write!(f, "a virtqueue could not be set up: {error:?}"),
            Self::NoMemory => f.write_str("no memory for its buffers"),
        }
    }
}

/// Whether free memory goes back to the host, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportingState {
    /// The driver is not running (no device, or it could not start): the reason.
    NoDriver(&'static str),
    /// The device does not offer free page reporting.
    NotOffered,
    /// The `reporting.enabled` tunable is 0.
    Disabled,
    /// Reporting was stopped after it started (the device went away, or a test unregistered it).
    Stopped,
    /// Reporting to the device.
    Active,
}

impl core::fmt::Display for ReportingState {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Self::NoDriver(reason) => write!(f, "off ({reason})"),
            Self::NotOffered => f.write_str(
                "off (the balloon device does not offer it: QEMU's free-page-reporting=off)",
            ),
            Self::Disabled => f.write_str("off (reporting.enabled=0)"),
            Self::Stopped => f.write_str("off (stopped: the device was lost)"),
            Self::Active => f.write_str("on"),
        }
    }
}

/// Free page reporting's state now, from the device's features and the tunable (no waiting).
pub fn reporting_state() -> ReportingState {
    if !is_present() {
        return ReportingState::NoDriver(
            not_running_because().unwrap_or("no virtio-balloon device"),
        );
    }
    if !Features::from_bits_truncate(FEATURES.load(Relaxed)).contains(Features::PAGE_REPORTING) {
        return ReportingState::NotOffered;
    }
    if crate::tunables::REPORTING_ENABLED.get() == 0 {
        return ReportingState::Disabled;
    }
    if !reporting::is_registered() {
        return ReportingState::Stopped;
    }
    ReportingState::Active
}

/// Why the driver did not start (set once, by `init`), for the demo and the console.
static DRIVER_ERROR: spin::Once<alloc::string::String> = spin::Once::new();

/// Why the driver is not running, if it is not (`None` also before `init`).
pub fn not_running_because() -> Option<&'static str> {
    DRIVER_ERROR.get().map(|reason| reason.as_str())
}

/// Finds the device and starts the driver: the reporting sink and the balloon worker. Without a
/// device, or when the driver cannot start, it says so once (why, and that reporting and
/// ballooning are off) and returns; everything else works without it.
pub fn init() -> Result<(), BalloonError> {
    let result = start();
    if let Err(error) = &result {
        let reason = alloc::format!("{error}");
        match error {
            BalloonError::NoDevice => {
                log::info!("{reason}: free page reporting and ballooning are off")
            }
            _ => log::error!(
                "virtio-balloon: driver did not start: {reason}; free page reporting and ballooning are off"
            ),
        }
        DRIVER_ERROR.call_once(|| reason);
    }
    result
}

fn start() -> Result<(), BalloonError> {
    let mut root = pci::root();
    let found = pci::enumerate(&root)
        .into_iter()
        .find(|(_, info)| info.vendor_id == VIRTIO_VENDOR && DEVICE_IDS.contains(&info.device_id));
    let Some((function, info)) = found else {
        return Err(BalloonError::NoDevice);
    };
    pci::enable_device(&mut root, function);
    let mut transport =
        PciTransport::new::<KernelHal, _>(&mut root, function).map_err(|error| match error {
            // A virtio 1.0 device has a common configuration capability; a legacy one has none.
            VirtioPciError::MissingCommonConfig => BalloonError::LegacyOnly,
            other => BalloonError::Transport(other),
        })?;
    if transport.device_type() != DeviceType::MemoryBalloon {
        return Err(BalloonError::NoDevice);
    }
    let features = transport.begin_init(SUPPORTED);
    // Queue indices follow the features: QEMU numbers only the queues it creates.
    let mut next_index = 2;
    let mut index_if = |feature: Features| {
        features.contains(feature).then(|| {
            next_index += 1;
            next_index - 1
        })
    };
    let stats_index = index_if(Features::STATS_VQ);
    let _hint_index = index_if(Features::FREE_PAGE_HINT);
    let reporting_index = index_if(Features::PAGE_REPORTING);
    let inflate = Queue::new(&mut transport, 0)?;
    let deflate = Queue::new(&mut transport, 1)?;
    let stats_queue = stats_index
        .map(|index| Queue::new(&mut transport, index))
        .transpose()?;
    let reporting_queue = reporting_index
        .map(|index| Queue::new(&mut transport, index))
        .transpose()?;
    let msix = pci::enable_msix(
        &mut root,
        function,
        &[
            crate::arch::vectors::BALLOON_CONFIG,
            crate::arch::vectors::BALLOON_QUEUES,
        ],
    )
    .and_then(|()| {
        let queues = [Some(0u16), Some(1), stats_index, reporting_index];
        let vectors = pci::set_virtio_msix_vectors(
            &mut root,
            function,
            0,
            queues.iter().flatten().map(|q| (*q, 1)),
        );
        if vectors.is_err() {
            // Half set up is worse than none: with MSI-X on, INTx is off.
            pci::disable_msix(&mut root, function);
        }
        vectors
    });
    let interrupts = match msix {
        Ok(()) => {
            MSIX.store(true, Relaxed);
            "MSI-X"
        }
        Err(_) => {
            // INTx through the I/O APIC, on the line the firmware assigned (config 0x3C).
            let line = pci::interrupt_line(function);
            match crate::arch::ioapic::route_level(
                u32::from(line),
                crate::arch::vectors::BALLOON_QUEUES,
            ) {
                Ok(()) if line != 0xff => {
                    INTX.store(true, Relaxed);
                    "INTx"
                }
                outcome => {
                    log::warn!(
                        "virtio-balloon: no MSI-X and no usable INTx line ({line}: {outcome:?}): waits poll"
                    );
                    "polled"
                }
            }
        }
    };
    let pfn_page = alloc_page().ok_or(BalloonError::NoMemory)?;
    // The blocks of one request, reused: the worker allocates nothing from the heap while it
    // inflates or deflates (memory may be exhausted then, and the heap's growth would need
    // the balloon's own lock for deflate-on-OOM).
    let mut blocks = Vec::new();
    blocks
        .try_reserve_exact(PFNS_PER_REQUEST)
        .map_err(|_| BalloonError::NoMemory)?;
    let stats_page = alloc_page().ok_or(BalloonError::NoMemory)?;
    transport.finish_init();
    log::info!(
        "virtio-balloon {:04x}:{:04x} at {:02x}:{:02x}.{}: features {:?}, interrupts {}",
        info.vendor_id,
        info.device_id,
        function.bus,
        function.device,
        function.function,
        features,
        interrupts
    );
    FEATURES.store(features.bits(), Relaxed);
    *TRANSPORT.lock() = Some(transport);
    PRESENT.store(true, Relaxed);
    match reporting_queue {
        Some(queue) => reporting::register(Box::new(BalloonReporter { queue })),
        None => log::info!(
            "virtio-balloon: the device does not offer free page reporting (QEMU's free-page-reporting=off): reporting is off, ballooning works"
        ),
    }
    let mut worker = BalloonWorker {
        inflate,
        deflate,
        stats: stats_queue,
        pfn_page,
        stats_page,
        blocks,
        stats_token: None,
        refused_logged: false,
    };
    worker.offer_statistics();
    if let Err(error) = task::spawn("balloon", move || worker.run()) {
        log::error!("virtio-balloon: no worker thread ({error:?}): the balloon stays as it is");
    }
    Ok(())
}

fn alloc_page() -> Option<Pages> {
    page_alloc::alloc(AllocRequest::new(0).zeroed().owner(Owner::Device))
}

fn with_transport<R>(f: impl FnOnce(&mut PciTransport) -> R) -> R {
    let mut guard = TRANSPORT.lock();
    f(guard
        .as_mut()
        .expect("the transport exists while the driver runs"))
}

/// The device is lost: it did not answer in time and was reset ([`LOST`] is set only after a
/// reset that read back as done).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DeviceLost;

/// Waits until `queue` has a used buffer: on the queue interrupt, or polling every 5 ms (a
/// safety net for a lost interrupt). After `balloon.timeout_ms` without an answer, or once
/// another wait has declared the device lost, the device is reset and `Err` returned: the
/// caller may then take its buffers back, because a reset device no longer touches them (a
/// discard the host made late, of pages the guest uses again, would lose data). A device that
/// does not even reset keeps its buffers: this waits on (they stay isolated, which is safe).
fn wait_used(queue: &Queue, what: &str) -> Result<(), DeviceLost> {
    let start = crate::time::Instant::now();
    let step = Duration::from_millis(5);
    while !queue.ring.can_pop() {
        if LOST.load(Relaxed) {
            return Err(DeviceLost);
        }
        let limit = Duration::from_millis(crate::tunables::BALLOON_TIMEOUT_MS.get());
        if start.elapsed() >= limit && !RESET_FAILED.load(Relaxed) && give_up_on_device(what) {
            return Err(DeviceLost);
        }
        QUEUE_EVENT.wait_until_timeout(|| queue.ring.can_pop() || LOST.load(Relaxed), step);
    }
    Ok(())
}

/// The device did not acknowledge a `what` in time: resets it (virtio status 0, so it lets go
/// of every buffer) and marks it lost; the balloon worker then stops using it (see
/// [`BalloonWorker::shut_down`]). Returns whether the device is reset (by this call or an
/// earlier one).
fn give_up_on_device(what: &str) -> bool {
    let reset = with_transport(|transport| {
        transport.set_status(virtio_drivers::transport::DeviceStatus::empty());
        // QEMU resets synchronously; a device may take a moment.
        (0..1000).any(|_| transport.get_status().is_empty())
    });
    let timeout = crate::tunables::BALLOON_TIMEOUT_MS.get();
    if !reset {
        if !RESET_FAILED.swap(true, Relaxed) {
            log::error!(
                "virtio-balloon: the device has not acknowledged a request ({what}) in {timeout} ms (balloon.timeout_ms) and does not reset: its buffers stay with it (isolated, so the host may still discard them safely); waiting on"
            );
        }
        return false;
    }
    if !LOST.swap(true, Relaxed) {
        log::error!(
            "virtio-balloon: the device has not acknowledged a request ({what}) in {timeout} ms (balloon.timeout_ms): reset, and not used again; free page reporting and ballooning stop"
        );
    }
    QUEUE_EVENT.wake_all();
    kick_worker();
    true
}

/// The reporting queue as the reporting worker's sink.
struct BalloonReporter {
    queue: Queue,
}

impl ReportSink for BalloonReporter {
    fn report(&mut self, blocks: &[(u64, u64)]) -> Result<(), ReportError> {
        if !is_present() || LOST.load(Relaxed) {
            return Err(ReportError::DeviceGone);
        }
        let mut buffers: Vec<&mut [u8]> = blocks
            .iter()
            .map(|&(phys, len)| {
                // SAFETY: each block is isolated by the reporting worker: off every free list,
                // owned by nobody else until it is put back after this report. The slice only
                // names the memory for the device (the kernel never reads or writes it here).
                unsafe {
                    core::slice::from_raw_parts_mut(
                        crate::mm::phys_to_virt(phys) as *mut u8,
                        len as usize,
                    )
                }
            })
            .collect();
        // SAFETY: the buffers stay valid (isolated) until pop_used below returns them.
        let token = unsafe { self.queue.ring.add(&[], &mut buffers) }.map_err(|error| {
            log::error!("virtio-balloon: cannot queue a report: {error:?}");
            ReportError::Failed
        })?;
        self.queue.notify_request("free page report");
        // A lost device was reset: the isolated blocks are the reporting worker's again, and it
        // puts them back unreported.
        wait_used(&self.queue, "free page report").map_err(|DeviceLost| ReportError::DeviceGone)?;
        // SAFETY: the same buffers as given to `add`, now used by the device.
        unsafe { self.queue.ring.pop_used(token, &[], &mut buffers) }.map_err(|error| {
            log::error!("virtio-balloon: report came back wrong: {error:?}");
            ReportError::DeviceGone
        })?;
        Ok(())
    }
}

/// The balloon worker's state: its queues and buffers.
struct BalloonWorker {
    inflate: Queue,
    deflate: Queue,
    stats: Option<Queue>,
    /// One page of PFNs (u32) for inflate and deflate requests.
    pfn_page: Pages,
    /// The statistics buffer (10-byte entries).
    stats_page: Pages,
    /// The blocks of the request in flight: room for a whole request, kept from the start.
    blocks: Vec<Pages>,
    stats_token: Option<u16>,
    refused_logged: bool,
}

/// Pages the guest keeps for itself whatever the host asks: every zone's high watermark plus
/// 1/64 of memory (at least 16 MiB).
fn reserve_pages() -> u64 {
    let watermarks: u64 = page_alloc::all_zones()
        .iter()
        .map(|zone| zone.watermarks.high)
        .sum();
    watermarks + (page_alloc::managed_pages() / 64).max(4096)
}

impl BalloonWorker {
    fn run(mut self) {
        loop {
            if LOST.load(Relaxed) {
                return self.shut_down();
            }
            // Cleared before the work: a kick arriving during it makes the wait below return.
            WORKER_KICK.store(false, Relaxed);
            self.answer_statistics();
            self.tell_oom_deflations();
            self.move_page();
            if LOST.load(Relaxed) {
                continue;
            }
            let host_target = u64::from(
                with_transport(|transport| transport.read_config_space::<u32>(0)).unwrap_or(0),
            );
            let target = match TEST_TARGET.load(Relaxed) {
                u64::MAX => host_target,
                test => test,
            };
            TARGET.store(target, Relaxed);
            let actual = ACTUAL.load(Relaxed);
            if target > actual {
                self.inflate_towards(target);
            } else if target < actual {
                self.deflate_towards(target);
            }
            if LOST.load(Relaxed) {
                continue;
            }
            // Interrupts wake the worker. It polls only without them, or while a target it
            // could not reach stands (memory may have come free since): an idle guest whose
            // balloon is where the host wants it takes no timer interrupt for it.
            let interrupts = MSIX.load(Relaxed) || INTX.load(Relaxed);
            let unmet = ACTUAL.load(Relaxed) != TARGET.load(Relaxed);
            if interrupts && !unmet {
                WORKER_EVENT.wait_until(|| WORKER_KICK.load(Relaxed));
            } else {
                let poll = if interrupts { 1000 } else { 20 };
                WORKER_EVENT
                    .wait_until_timeout(|| WORKER_KICK.load(Relaxed), Duration::from_millis(poll));
            }
        }
    }

    /// The device is lost (reset): stops reporting, returns every ballooned page to the
    /// allocator and ends the worker. The pages are returned rather than kept: the host can
    /// no longer ask for them or give them back through a reset device, so keeping them would
    /// take them from the guest for good, while the host gave up their memory already and
    /// backs them again only when the guest touches them (as for any deflation without
    /// MUST_TELL_HOST). Deflate-on-OOM finds the balloon empty from now on.
    fn shut_down(self) {
        // The reporting queue is the sink's: a pass in flight sees the device lost, puts its
        // blocks back unreported and ends; then the sink (and its queue) is dropped.
        drop(reporting::unregister());
        let blocks = {
            let mut balloon = BALLOON.lock();
            let blocks = core::mem::take(&mut *balloon);
            actual_sub(blocks.iter().map(|block| block.page_count()).sum());
            blocks
        };
        let pending = {
            let mut pending = PENDING.lock();
            let untold = pending.1;
            pending.1 = 0;
            untold
        };
        let pages: u64 = blocks.iter().map(|block| block.page_count()).sum();
        for block in blocks {
            if let Err(error) = page_alloc::free(block) {
                log::error!("virtio-balloon: returning a ballooned block: {error:?}");
            }
        }
        // Its own pages: the device was reset and no longer reads or writes them.
        let BalloonWorker {
            pfn_page,
            stats_page,
            ..
        } = self;
        for page in [pfn_page, stats_page] {
            if let Err(error) = page_alloc::free(page) {
                log::error!("virtio-balloon: freeing a buffer page: {error:?}");
            }
        }
        log::error!(
            "virtio-balloon: device lost: {pages} ballooned pages returned to the guest ({pending} deflated on OOM never told), reporting stopped, the balloon worker ends"
        );
    }

    /// Does a move compaction asked for ([`migrate_page`]): inflate the new page, swap it in
    /// for the old one in the balloon's list, deflate the old one and free it. `actual` does
    /// not change: the host sees one page more for a moment, never one fewer.
    fn move_page(&mut self) {
        let (old, new) = {
            let mut slot = MOVE.lock();
            match core::mem::replace(&mut *slot, MoveSlot::Working) {
                MoveSlot::Asked { old, new } => (old, new),
                other => {
                    *slot = other;
                    return;
                }
            }
        };
        let moved = self.move_page_now(old, new);
        if moved.is_ok() {
            PAGES_MOVED.fetch_add(1, Relaxed);
        }
        *MOVE.lock() = MoveSlot::Done(moved);
        MOVE_DONE.wake_all();
    }

    /// `Err` gives the new page back (nothing changed).
    fn move_page_now(&mut self, old: u64, new: Pages) -> Result<(), Pages> {
        let in_balloon = |balloon: &Vec<Pages>| {
            balloon
                .iter()
                .position(|block| block.pfn() == old && block.order() == 0)
        };
        if in_balloon(&BALLOON.lock()).is_none() {
            return Err(new);
        }
        self.pfn_slots()[0] = new.pfn() as u32;
        if Self::send_pfns(&mut self.inflate, &self.pfn_page, 1, "inflate").is_err() {
            return Err(new);
        }
        page_alloc::set_owner(new.pfn(), Owner::Balloon);
        let replaced = {
            let mut balloon = BALLOON.lock();
            match in_balloon(&balloon) {
                Some(at) => Some(core::mem::replace(&mut balloon[at], new)),
                None => {
                    // Deflate-on-OOM took the old page meanwhile: the new one simply joins
                    // the balloon (the host has it already), and the move is done.
                    balloon.push(new);
                    ACTUAL.fetch_add(1, Relaxed);
                    None
                }
            }
        };
        match replaced {
            Some(old_page) => {
                self.pfn_slots()[0] = old as u32;
                // A lost device resets: the old page is the guest's again either way. Freed
                // only once the host was told it is deflated.
                let _ = Self::send_pfns(&mut self.deflate, &self.pfn_page, 1, "deflate");
                if let Err(error) = page_alloc::free(old_page) {
                    log::error!("virtio-balloon: freeing a moved page: {error:?}");
                }
            }
            None => self.write_actual(),
        }
        Ok(())
    }

    fn write_actual(&self) {
        if LOST.load(Relaxed) {
            return;
        }
        let actual = u32::try_from(ACTUAL.load(Relaxed)).unwrap_or(u32::MAX);
        if let Err(error) =
            with_transport(|transport| transport.write_config_space::<u32>(4, actual))
        {
            log::error!("virtio-balloon: cannot write actual: {error:?}");
        }
    }

    /// Sends the PFNs in the first `count` slots of the PFN page on `queue` and waits; `Err`
    /// when the device is lost (reset: the pages named are the caller's again).
    fn send_pfns(
        queue: &mut Queue,
        page: &Pages,
        count: usize,
        what: &str,
    ) -> Result<(), DeviceLost> {
        // SAFETY: the PFN page is the worker's own direct-mapped page; `count` <= 1024 u32.
        let bytes = unsafe { core::slice::from_raw_parts(page.virt() as *const u8, count * 4) };
        let inputs = [bytes];
        // SAFETY: the buffer stays valid (the worker's page) until pop_used returns it.
        let token = match unsafe { queue.ring.add(&inputs, &mut []) } {
            Ok(token) => token,
            Err(error) => {
                log::error!("virtio-balloon: cannot queue a {what} request: {error:?}");
                return Ok(());
            }
        };
        queue.notify_request(what);
        wait_used(queue, what)?;
        // SAFETY: the same buffer as given to `add`.
        if let Err(error) = unsafe { queue.ring.pop_used(token, &inputs, &mut []) } {
            log::error!("virtio-balloon: {what} request came back wrong: {error:?}");
        }
        Ok(())
    }

    fn pfn_slots(&mut self) -> &mut [u32] {
        // SAFETY: the worker's own direct-mapped page, viewed as 1024 u32 while `&mut self`.
        unsafe {
            core::slice::from_raw_parts_mut(self.pfn_page.virt() as *mut u32, PFNS_PER_REQUEST)
        }
    }

    fn inflate_towards(&mut self, target: u64) {
        let reserve = reserve_pages();
        let mut refused = false;
        loop {
            // One snapshot per request: deflate-on-OOM may shrink the balloon meanwhile, which
            // only makes more room below the target (inflating is this worker's alone).
            let missing = target.saturating_sub(ACTUAL.load(Relaxed));
            if missing == 0 {
                break;
            }
            // Room in the balloon's list for the whole request before any page is taken: the
            // list must not grow later, under its lock, with memory exhausted.
            if BALLOON.lock().try_reserve(PFNS_PER_REQUEST).is_err() {
                log::warn!("virtio-balloon: no memory to track more ballooned pages");
                refused = true;
                break;
            }
            let mut blocks = core::mem::take(&mut self.blocks);
            blocks.clear();
            let mut count = 0usize;
            while count < PFNS_PER_REQUEST {
                let wanted = missing.saturating_sub(count as u64);
                if wanted == 0 {
                    break;
                }
                if page_alloc::free_pages() <= reserve + 512 {
                    refused = true;
                    break;
                }
                // 2 MiB blocks while that much is wanted and fits the request; single pages
                // for the rest.
                let order = if wanted >= 512 && count + 512 <= PFNS_PER_REQUEST {
                    9
                } else {
                    0
                };
                let request = AllocRequest::new(order)
                    .kind(MigrateType::Movable)
                    .owner(Owner::Balloon)
                    .without_balloon_deflate();
                let single = request.with_order(0);
                let Some(block) = page_alloc::alloc(request)
                    .or_else(|| (order > 0).then(|| page_alloc::alloc(single)).flatten())
                else {
                    refused = true;
                    break;
                };
                let first = count;
                let slots = self.pfn_slots();
                for page in 0..block.page_count() {
                    slots[first + page as usize] = (block.pfn() + page) as u32;
                }
                count += block.page_count() as usize;
                blocks.push(block);
            }
            if count == 0 {
                self.blocks = blocks;
                break;
            }
            if Self::send_pfns(&mut self.inflate, &self.pfn_page, count, "inflate").is_err() {
                // The reset device never took them: the guest's again.
                for block in blocks.drain(..) {
                    if let Err(error) = page_alloc::free(block) {
                        log::error!("virtio-balloon: freeing an unsent inflate block: {error:?}");
                    }
                }
                self.blocks = blocks;
                return;
            }
            {
                // The blocks and their count together: deflate-on-OOM must never find blocks
                // in the balloon that ACTUAL does not count yet. The room was reserved above
                // (only deflate-on-OOM ran meanwhile, which only shrinks the list).
                let mut balloon = BALLOON.lock();
                // Checked in every test that inflates: growing here could need the heap, whose
                // growth under memory pressure deflates the balloon, which needs this lock.
                debug_assert!(
                    balloon.capacity() - balloon.len() >= blocks.len(),
                    "virtio-balloon: the balloon's list would grow under its lock"
                );
                balloon.extend(blocks.drain(..));
                ACTUAL.fetch_add(count as u64, Relaxed);
            }
            self.blocks = blocks;
            INFLATED.fetch_add(count as u64, Relaxed);
            self.write_actual();
            if refused {
                break;
            }
        }
        if refused {
            TARGET_REFUSED.fetch_add(1, Relaxed);
            if !self.refused_logged {
                log::warn!(
                    "virtio-balloon: the host asks for {target} pages; the guest can spare {} (it keeps {} pages for itself)",
                    ACTUAL.load(Relaxed),
                    reserve
                );
                self.refused_logged = true;
            }
        } else {
            self.refused_logged = false;
        }
    }

    /// Deflates exactly down to `target`: a block larger than what is left to give back is
    /// split ([`page_alloc::split_allocated`]) and only the pages asked for leave the balloon,
    /// so the balloon never dips below the target (nor takes a whole 2 MiB block out to
    /// inflate 511 pages back).
    fn deflate_towards(&mut self, target: u64) {
        loop {
            if INJECT_OOM_IN_DEFLATE.swap(false, Relaxed) {
                let taken = deflate_on_oom(1);
                log::warn!(
                    "virtio-balloon: fault injection: a deflate-on-OOM of {taken} pages inside a deflate"
                );
            }
            let mut blocks = core::mem::take(&mut self.blocks);
            blocks.clear();
            let mut count = 0usize;
            {
                let mut balloon = BALLOON.lock();
                // ACTUAL changes only under this lock: one load, and it stays true until the
                // lock is dropped.
                let excess = ACTUAL.load(Relaxed).saturating_sub(target);
                'request: while count < PFNS_PER_REQUEST && (count as u64) < excess {
                    let Some(mut block) = balloon.pop() else {
                        break;
                    };
                    let room = (excess - count as u64).min((PFNS_PER_REQUEST - count) as u64);
                    // Halve a block larger than what is left to give back: the lower half
                    // stays in the balloon, the upper half is looked at again.
                    while block.page_count() > room {
                        match page_alloc::split_allocated(block) {
                            Ok([low, high]) => {
                                balloon.push(low);
                                block = high;
                            }
                            Err((error, whole))
                                if whole.page_count() as usize <= PFNS_PER_REQUEST - count =>
                            {
                                log::error!(
                                    "virtio-balloon: cannot split balloon block {whole:?}: {error:?}; deflating it whole"
                                );
                                block = whole;
                                break;
                            }
                            Err((error, whole)) => {
                                log::error!(
                                    "virtio-balloon: cannot split balloon block {whole:?}: {error:?}; it waits for the next request"
                                );
                                balloon.push(whole);
                                break 'request;
                            }
                        }
                    }
                    count += block.page_count() as usize;
                    blocks.push(block);
                }
            }
            if count == 0 {
                self.blocks = blocks;
                break;
            }
            let slots = self.pfn_slots();
            let mut at = 0;
            for block in &blocks {
                for page in 0..block.page_count() {
                    slots[at] = (block.pfn() + page) as u32;
                    at += 1;
                }
            }
            // Lost or not, these pages leave the balloon (a reset device holds nothing).
            let sent = Self::send_pfns(&mut self.deflate, &self.pfn_page, count, "deflate");
            for block in blocks.drain(..) {
                if let Err(error) = page_alloc::free(block) {
                    log::error!("virtio-balloon: freeing a deflated block: {error:?}");
                }
            }
            self.blocks = blocks;
            {
                let _balloon = BALLOON.lock();
                actual_sub(count as u64);
            }
            DEFLATED.fetch_add(count as u64, Relaxed);
            self.write_actual();
            if sent.is_err() {
                return;
            }
        }
    }

    /// Tells the host about blocks deflated on OOM (already back in the allocator).
    /// Allocates nothing: it runs right after memory ran out.
    fn tell_oom_deflations(&mut self) {
        let (blocks, len) = {
            let mut pending = PENDING.lock();
            let taken = *pending;
            pending.1 = 0;
            taken
        };
        // Every PFN goes to the host, in requests of at most one page of PFNs.
        let mut pfns = blocks[..len]
            .iter()
            .flat_map(|&(pfn, pages)| (pfn..pfn + pages).map(|pfn| pfn as u32))
            .peekable();
        let told = pfns.peek().is_some();
        while pfns.peek().is_some() {
            let slots = self.pfn_slots();
            let mut count = 0;
            for (slot, pfn) in slots.iter_mut().zip(pfns.by_ref()) {
                *slot = pfn;
                count += 1;
            }
            if Self::send_pfns(&mut self.deflate, &self.pfn_page, count, "deflate").is_err() {
                // Already back in the allocator; a reset device needs no telling.
                return;
            }
        }
        if told {
            self.write_actual();
        }
    }

    fn fill_statistics(&mut self) -> usize {
        let free = page_alloc::free_pages() * PAGE_SIZE;
        let total = page_alloc::managed_pages() * PAGE_SIZE;
        // No swap, no page cache, no hugetlbfs: those are truthfully zero. Available memory
        // is free memory (nothing is reclaimable without I/O).
        let entries = [
            (tag::SWAP_IN, "stat_swap_in", 0),
            (tag::SWAP_OUT, "stat_swap_out", 0),
            (tag::MAJOR_FAULTS, "stat_major_faults", 0),
            (
                tag::MINOR_FAULTS,
                "stat_minor_faults",
                crate::mm::space::minor_faults_total(),
            ),
            (tag::MEMORY_FREE, "stat_free_memory", free),
            (tag::MEMORY_TOTAL, "stat_total_memory", total),
            (tag::AVAILABLE, "stat_available_memory", free),
            (tag::CACHES, "stat_disk_caches", 0),
            (tag::HUGETLB_ALLOCATIONS, "stat_htlb_pgalloc", 0),
            (tag::HUGETLB_FAILURES, "stat_htlb_pgfail", 0),
        ];
        {
            let mut last = LAST_STATISTICS.lock();
            for (slot, (_, name, value)) in last.iter_mut().zip(entries.iter()) {
                *slot = (name, *value);
            }
        }
        // SAFETY: the worker's own direct-mapped page; 10 entries of 10 bytes fit.
        let bytes = unsafe {
            core::slice::from_raw_parts_mut(self.stats_page.virt() as *mut u8, PAGE_SIZE as usize)
        };
        for (slot, (tag, _, value)) in entries.iter().enumerate() {
            let at = slot * 10;
            bytes[at..at + 2].copy_from_slice(&tag.to_le_bytes());
            bytes[at + 2..at + 10].copy_from_slice(&value.to_le_bytes());
        }
        entries.len() * 10
    }

    fn stats_buffer(page: &Pages, len: usize) -> &[u8] {
        // SAFETY: the worker's own page of 4 KiB (`len` <= 4096), borrowed as long as `page`.
        unsafe { core::slice::from_raw_parts(page.virt() as *const u8, len) }
    }

    /// Queues the statistics buffer for the host to take when it wants figures.
    fn offer_statistics(&mut self) {
        if LOST.load(Relaxed) {
            return;
        }
        let len = self.fill_statistics();
        let buffer = [Self::stats_buffer(&self.stats_page, len)];
        let Some(queue) = self.stats.as_mut() else {
            return;
        };
        // SAFETY: the buffer is the worker's page, valid until popped (the worker frees it only
        // in `shut_down`, after the device was reset).
        match unsafe { queue.ring.add(&buffer, &mut []) } {
            Ok(token) => {
                self.stats_token = Some(token);
                with_transport(|transport| transport.notify(queue.index));
            }
            Err(error) => log::error!("virtio-balloon: cannot queue statistics: {error:?}"),
        }
    }

    /// The host returned the statistics buffer: it wants fresh figures.
    fn answer_statistics(&mut self) {
        if LOST.load(Relaxed) {
            return;
        }
        let Some(queue) = self.stats.as_mut() else {
            return;
        };
        let Some(token) = self.stats_token else {
            return;
        };
        if !queue.ring.can_pop() {
            return;
        }
        let len = 100;
        let buffer = [Self::stats_buffer(&self.stats_page, len)];
        // SAFETY: the same buffer as queued.
        if let Err(error) = unsafe { queue.ring.pop_used(token, &buffer, &mut []) } {
            log::error!("virtio-balloon: statistics came back wrong: {error:?}");
        }
        self.stats_token = None;
        STATS_ANSWERED.fetch_add(1, Relaxed);
        self.offer_statistics();
    }
}

/// Deflate-on-OOM: called by the page allocator when an allocation of `pages` would fail. Gives
/// back up to max(`pages`, 1 MiB) from the balloon at once (without MUST_TELL_HOST the guest
/// may reuse them before the host hears of it; the balloon worker tells it). Returns the pages
/// freed. Never blocks and never allocates: it may run anywhere an allocation can.
pub fn deflate_on_oom(pages: u64) -> u64 {
    let features = Features::from_bits_truncate(FEATURES.load(Relaxed));
    if !PRESENT.load(Relaxed) || !features.contains(Features::DEFLATE_ON_OOM) {
        return 0;
    }
    // try_lock: this may run inside the balloon's own code (an allocation it made failed).
    let (Some(mut balloon), Some(mut pending)) = (BALLOON.try_lock(), PENDING.try_lock()) else {
        return 0;
    };
    let goal = pages.max(OOM_DEFLATE_PAGES);
    let mut taken: [Option<Pages>; PENDING_CAPACITY] = [const { None }; PENDING_CAPACITY];
    let mut freed = 0;
    let mut count = 0;
    while freed < goal && pending.1 < PENDING_CAPACITY {
        let Some(block) = balloon.pop() else {
            break;
        };
        let slot = pending.1;
        pending.0[slot] = (block.pfn(), block.page_count());
        pending.1 += 1;
        freed += block.page_count();
        taken[count] = Some(block);
        count += 1;
    }
    // Counted before the lock is dropped: under it, ACTUAL always matches the balloon.
    actual_sub(freed);
    drop(pending);
    drop(balloon);
    for block in taken.into_iter().flatten() {
        if let Err(error) = page_alloc::free(block) {
            log::error!("virtio-balloon: deflate-on-OOM free: {error:?}");
        }
    }
    if freed > 0 {
        OOM_DEFLATED.fetch_add(freed, Relaxed);
        // Wakes without allocating or freeing (this may run inside the heap's growth).
        kick_worker();
    }
    freed
}
