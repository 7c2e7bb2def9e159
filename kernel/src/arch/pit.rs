//! The 8254 PIT, used only as a known-frequency reference while calibrating the TSC and the
//! local APIC timer at boot (channel 2, gated through port 0x61, no interrupts).

use x86_64::instructions::port::Port;

/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// Runs `before`, busy-waits `ms` milliseconds measured by the PIT, runs `after`, and returns
/// the exact number of PIT ticks waited. `ms` must be at most 54 (the 16-bit counter).
pub fn measure<B, A>(ms: u64, before: B, after: A) -> u64
where
    B: FnOnce(),
    A: FnOnce(),
{
    let ticks = (PIT_HZ * ms / 1000).clamp(1, 0xffff);
    let mut gate: Port<u8> = Port::new(0x61);
    let mut command: Port<u8> = Port::new(0x43);
    let mut channel2: Port<u8> = Port::new(0x42);
    // SAFETY: channel 2 and its gate are used only here, at boot and in tests, with interrupts
    // off on this CPU; the speaker output stays disabled (bit 1 clear).
    unsafe {
        let value = gate.read();
        gate.write((value & !0x02) | 0x01);
        // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
        command.write(0xb0);
        channel2.write((ticks & 0xff) as u8);
        channel2.write((ticks >> 8) as u8);
        before();
        // OUT2 (bit 5) goes high when the count reaches zero.
        while gate.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        after();
    }
    ticks
}
