//! The monotonic clock: nanoseconds since the kernel's first instruction, from the TSC at the
//! rate calibrated at boot (see [`crate::arch::tsc`]).

use crate::arch;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

/// TSC value at the first instruction of the PVH entry: time zero.
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC tick, as a 32.32 fixed-point number.
static NS_PER_TICK_FP32: AtomicU64 = AtomicU64::new(0);

/// Starts the clock at `tsc_at_boot`, running at `tsc_hz`.
pub fn init(tsc_at_boot: u64, tsc_hz: u64) {
    assert!(tsc_hz > 0, "TSC rate must be known");
    TSC_AT_BOOT.store(tsc_at_boot, Ordering::Relaxed);
    NS_PER_TICK_FP32.store(
        ((1_000_000_000u128 << 32) / tsc_hz as u128) as u64,
        Ordering::Relaxed,
    );
    TSC_HZ.store(tsc_hz, Ordering::Release);
}

/// The calibrated TSC rate (0 before calibration).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Acquire)
}

/// Converts a TSC difference to nanoseconds.
pub fn tsc_delta_to_ns(ticks: u64) -> u64 {
    ((ticks as u128 * NS_PER_TICK_FP32.load(Ordering::Relaxed) as u128) >> 32) as u64
}

/// Nanoseconds since boot, or `None` before calibration.
pub fn uptime_ns() -> Option<u64> {
    if tsc_hz() == 0 {
        return None;
    }
    let now = arch::rdtsc();
    Some(tsc_delta_to_ns(
        now.saturating_sub(TSC_AT_BOOT.load(Ordering::Relaxed)),
    ))
}

/// A point on the monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    pub fn now() -> Instant {
        Instant(uptime_ns().unwrap_or(0))
    }
    pub fn from_nanos(ns: u64) -> Instant {
        Instant(ns)
    }
    pub fn as_nanos(self) -> u64 {
        self.0
    }
    pub fn elapsed(self) -> Duration {
        Instant::now().duration_since(self)
    }
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, duration: Duration) -> Instant {
        Instant(
            self.0
                .saturating_add(duration.as_nanos().min(u64::MAX as u128) as u64),
        )
    }
}

/// Spins for `duration` without yielding (for device timing, not for waiting on other threads).
pub fn busy_wait(duration: Duration) {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        core::hint::spin_loop();
    }
}
