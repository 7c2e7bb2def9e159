//! The 8254 PIT, used only as a known-frequency reference while calibrating the TSC and the
//! local APIC timer at boot (channel 2, gated through port 0x61, no interrupts).

use x86_64::instructions::port::Port;

/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// Channel 2 counting down from 0xffff (mode 0, about 55 ms before it wraps), read on demand.
pub struct Channel2 {
    command: Port<u8>,
    data: Port<u8>,
}

impl Channel2 {
    /// Starts the count. Calibration only: at boot and in tests, with interrupts off on this
    /// CPU, nothing else uses channel 2.
    pub fn start() -> Channel2 {
        let mut gate: Port<u8> = Port::new(0x61);
        let mut channel = Channel2 {
            command: Port::new(0x43),
            data: Port::new(0x42),
        };
        // SAFETY: channel 2 and its gate are used only here (see above); the speaker output
        // stays disabled (bit 1 clear).
        unsafe {
            let value = gate.read();
            gate.write((value & !0x02) | 0x01);
            // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
            channel.command.write(0xb0);
            channel.data.write(0xff);
            channel.data.write(0xff);
        }
        channel
    }

    /// The current count (falling at [`PIT_HZ`]).
    pub fn count(&mut self) -> u16 {
        // SAFETY: the counter-latch command for channel 2, then its two bytes (see `start`).
        unsafe {
            self.command.write(0x80);
            let low = self.data.read();
            let high = self.data.read();
            u16::from_le_bytes([low, high])
        }
    }
}
