//! The HPET's main counter, read-only use: an independent time reference that tests compare the
//! TSC clock against (the TSC is calibrated against the PIT, never against the HPET).
//!
//! q35 places the HPET at the standard 0xfed0_0000 (ACPI's HPET table says so; the kernel does not
//! parse ACPI yet). Reached through the direct map's uncached window.

pub const HPET_PHYS: u64 = 0xfed0_0000;
const REG_CAPABILITIES: usize = 0x0;
const REG_CONFIG: usize = 0x10;
const REG_COUNTER: usize = 0xf0;

/// A present HPET, its counter running.
pub struct Hpet {
    base: u64,
    period_fs: u64,
}

impl Hpet {
    fn reg(&self, offset: usize) -> *mut u64 {
        (self.base as usize + offset) as *mut u64
    }

    /// Finds the HPET and starts its main counter, or `None` if there is none.
    pub fn probe() -> Option<Hpet> {
        let hpet = Hpet {
            base: boot::DIRECT_MAP_BASE + HPET_PHYS,
            period_fs: 0,
        };
        // SAFETY: the fixed HPET window is mapped uncached by the direct map; reading an address
        // with no device behind it returns all ones under QEMU, which the checks below reject.
        let capabilities = unsafe { core::ptr::read_volatile(hpet.reg(REG_CAPABILITIES)) };
        let period_fs = capabilities >> 32;
        // The specification caps the period at 100 ns.
        if capabilities == u64::MAX || period_fs == 0 || period_fs > 100_000_000 {
            return None;
        }
        // SAFETY: setting ENABLE_CNF (bit 0) only starts the main counter; no timer interrupts
        // are configured.
        unsafe {
            let config = core::ptr::read_volatile(hpet.reg(REG_CONFIG));
            core::ptr::write_volatile(hpet.reg(REG_CONFIG), config | 1);
        }
        Some(Hpet { period_fs, ..hpet })
    }

    /// The main counter in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        // SAFETY: reading the main counter register of the HPET found by `probe`.
        let counter = unsafe { core::ptr::read_volatile(self.reg(REG_COUNTER)) };
        ((counter as u128 * self.period_fs as u128) / 1_000_000) as u64
    }
}
