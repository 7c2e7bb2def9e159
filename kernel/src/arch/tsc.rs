//! TSC and APIC-timer calibration against the PIT.
//!
//! Under TCG, or on a busy host, the vCPU can stop for milliseconds at any moment while the
//! PIT goes on counting. Waiting for the PIT to reach a count and then reading the TSC would
//! count such a stop into the window (a host this busy once made a guest clock run 14% fast).
//! So every reading of the PIT is bracketed by two TSC reads, and of several readings at each
//! end of a window the one with the tightest bracket is kept: a stop during it would show as a
//! wide bracket. A stop between the two ends costs nothing, both clocks go on.

use super::{apic, pit, rdtsc};

/// Rates measured at boot.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    pub tsc_hz: u64,
    pub apic_timer_hz: u64,
}

/// PIT ticks per window (10 ms); the count wraps after 0xffff (55 ms).
const WINDOW_TICKS: u16 = (pit::PIT_HZ / 100) as u16;
const WINDOWS: usize = 3;
/// Windows tried at most (one wraps only if the vCPU stops for over 40 ms inside it).
const ATTEMPTS: usize = 4 * WINDOWS;
/// Readings at each end of a window, of which the tightest is kept.
const READINGS: usize = 16;

/// One PIT count with the TSC before and after reading it, and the APIC timer's elapsed
/// counts read inside the same bracket.
#[derive(Clone, Copy)]
struct Reading {
    tsc_before: u64,
    tsc_after: u64,
    count: u16,
    apic: u64,
}

impl Reading {
    fn take(channel: &mut pit::Channel2) -> Reading {
        let tsc_before = rdtsc();
        let count = channel.count();
        let apic = apic::elapsed_counts();
        let tsc_after = rdtsc();
        Reading {
            tsc_before,
            tsc_after,
            count,
            apic,
        }
    }

    fn spread(&self) -> u64 {
        self.tsc_after - self.tsc_before
    }

    fn tsc(&self) -> u64 {
        self.tsc_before + self.spread() / 2
    }

    /// The tightest of [`READINGS`] readings.
    fn tightest(channel: &mut pit::Channel2) -> Reading {
        (0..READINGS)
            .map(|_| Reading::take(channel))
            .min_by_key(Reading::spread)
            .expect("at least one reading")
    }
}

/// Measures the TSC and APIC timer rates over three 10 ms PIT windows and keeps the median of
/// each (a window whose count wrapped, after a stop of over 40 ms, is measured again, up to
/// [`ATTEMPTS`] windows in all; the median is then over those that were measured).
pub fn calibrate() -> Calibration {
    let mut tsc = [0u64; WINDOWS];
    let mut apic_rate = [0u64; WINDOWS];
    let mut window = 0;
    for _ in 0..ATTEMPTS {
        if window == WINDOWS {
            break;
        }
        apic::start_free_running();
        let mut channel = pit::Channel2::start();
        let first = Reading::tightest(&mut channel);
        let target = first.count.saturating_sub(WINDOW_TICKS);
        while channel.count() > target && channel.count() <= first.count {
            core::hint::spin_loop();
        }
        let last = Reading::tightest(&mut channel);
        if last.count >= first.count {
            log::warn!("clock: a calibration window wrapped (the vCPU stopped over 40 ms)");
            continue;
        }
        let ticks = (first.count - last.count) as u128;
        tsc[window] = ((last.tsc() - first.tsc()) as u128 * pit::PIT_HZ as u128 / ticks) as u64;
        apic_rate[window] = ((last.apic - first.apic) as u128 * pit::PIT_HZ as u128 / ticks) as u64;
        window += 1;
    }
    let (tsc, apic_rate) = (&mut tsc[..window.max(1)], &mut apic_rate[..window.max(1)]);
    tsc.sort_unstable();
    apic_rate.sort_unstable();
    Calibration {
        tsc_hz: tsc[tsc.len() / 2],
        apic_timer_hz: apic_rate[apic_rate.len() / 2],
    }
}
