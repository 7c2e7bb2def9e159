//! TSC and APIC-timer calibration against the PIT.

use super::{apic, pit, rdtsc};

/// Rates measured at boot.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    pub tsc_hz: u64,
    pub apic_timer_hz: u64,
}

const WINDOW_MS: u64 = 10;
const WINDOWS: usize = 3;

/// Measures the TSC and APIC timer rates over three 10 ms PIT windows and keeps the median of
/// each, which discards one window disturbed by the host descheduling this vCPU.
pub fn calibrate() -> Calibration {
    let mut tsc = [0u64; WINDOWS];
    let mut apic_rate = [0u64; WINDOWS];
    for window in 0..WINDOWS {
        let mut tsc_start = 0;
        let mut tsc_end = 0;
        let mut apic_counts = 0;
        let pit_ticks = pit::measure(
            WINDOW_MS,
            || {
                apic::start_free_running();
                tsc_start = rdtsc();
            },
            || {
                tsc_end = rdtsc();
                apic_counts = apic::elapsed_counts();
            },
        );
        tsc[window] =
            ((tsc_end - tsc_start) as u128 * pit::PIT_HZ as u128 / pit_ticks as u128) as u64;
        apic_rate[window] = (apic_counts as u128 * pit::PIT_HZ as u128 / pit_ticks as u128) as u64;
    }
    tsc.sort_unstable();
    apic_rate.sort_unstable();
    Calibration {
        tsc_hz: tsc[WINDOWS / 2],
        apic_timer_hz: apic_rate[WINDOWS / 2],
    }
}
