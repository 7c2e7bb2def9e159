//! Leaving QEMU with a status, through the `isa-debug-exit` device at port 0xf4
//! (`run-qemu.sh` attaches it and maps the codes back to 0 for success, 1 for failure).

use x86_64::instructions::port::Port;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exits with (0x10 << 1) | 1 = 33.
    Success = 0x10,
    /// QEMU exits with (0x11 << 1) | 1 = 35.
    Failure = 0x11,
}

/// Ends the run. Without the exit device (QEMU started by hand) the CPU halts instead.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: port 0xf4 is the isa-debug-exit device's (or nothing, where the write is ignored);
    // writing to it has no other effect.
    unsafe { Port::<u32>::new(0xf4).write(code as u32) };
    log::warn!("isa-debug-exit is not attached: halting (status {code:?})");
    crate::arch::halt_forever()
}
