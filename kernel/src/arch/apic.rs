//! The local APIC: enabled at boot, its timer calibrated against the PIT and run periodically
//! to drive the scheduler's tick.
//!
//! Owns the local APIC's registers, reached through the direct map (the early page tables map
//! the 3..4 GiB window uncached).

use super::vectors;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::registers::model_specific::Msr;

const IA32_APIC_BASE: u32 = 0x1b;
const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xb0;
const REG_SVR: usize = 0xf0;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;

const DIVIDE_BY_16: u32 = 0x3;

/// Virtual address of this CPU's APIC registers (0 until `init`).
static REGISTERS: AtomicU64 = AtomicU64::new(0);
/// The APIC timer's count rate with the divider in use, in Hz.
static TIMER_HZ: AtomicU64 = AtomicU64::new(0);

fn register(offset: usize) -> *mut u32 {
    let base = REGISTERS.load(Ordering::Relaxed);
    assert!(base != 0, "local APIC used before apic::init");
    (base as usize + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: `register` points into the APIC's 4 KiB register page, mapped uncached; reads of
    // these registers have no side effects.
    unsafe { core::ptr::read_volatile(register(offset)) }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`; the kernel is the APIC's only user and writes only documented
    // registers with valid values.
    unsafe { core::ptr::write_volatile(register(offset), value) }
}

/// This CPU's local APIC ID (where MSI messages for it are addressed).
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Physical address of the local APIC's registers.
pub fn registers_phys() -> u64 {
    REGISTERS.load(Ordering::Relaxed) - boot::DIRECT_MAP_BASE
}

/// Enables this CPU's local APIC with all its interrupts masked.
pub fn init() {
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; setting bit 11 (global enable) keeps
    // the APIC at the base address the firmware chose.
    let base = unsafe {
        let value = msr.read();
        msr.write(value | (1 << 11));
        value & 0xf_ffff_f000
    };
    REGISTERS.store(boot::DIRECT_MAP_BASE + base, Ordering::Relaxed);
    write(REG_TPR, 0);
    write(REG_LVT_TIMER, LVT_MASKED | vectors::TIMER as u32);
    write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
    write(REG_SVR, 0x100 | vectors::SPURIOUS as u32);
}

/// Starts the timer counting down from its maximum, masked (for calibration).
pub fn start_free_running() {
    write(REG_LVT_TIMER, LVT_MASKED | vectors::TIMER as u32);
    write(REG_TIMER_INITIAL, u32::MAX);
}

/// How far the free-running count has fallen since `start_free_running`.
pub fn elapsed_counts() -> u64 {
    (u32::MAX - read(REG_TIMER_CURRENT)) as u64
}

pub fn set_timer_hz(hz: u64) {
    TIMER_HZ.store(hz, Ordering::Relaxed);
}

/// The calibrated count rate of the timer.
pub fn timer_hz() -> u64 {
    TIMER_HZ.load(Ordering::Relaxed)
}

/// Puts the timer in one-shot mode, unmasked, not counting.
pub fn enable_oneshot() {
    write(REG_TIMER_INITIAL, 0);
    write(REG_LVT_TIMER, vectors::TIMER as u32);
}

/// Raises the timer vector once, after `delay_ns` (at least one count; at most the counter's
/// range, about a minute: the handler re-arms if nothing was due yet).
pub fn arm_oneshot(delay_ns: u64) {
    let counts = (delay_ns as u128 * timer_hz() as u128 / 1_000_000_000).clamp(1, u32::MAX as u128);
    write(REG_TIMER_INITIAL, counts as u32);
}

/// Stops the one-shot timer (a pending count is dropped; nothing fires).
pub fn stop_timer() {
    write(REG_TIMER_INITIAL, 0);
}

/// Signals the end of the interrupt being handled.
pub fn end_of_interrupt() {
    write(REG_EOI, 0);
}
