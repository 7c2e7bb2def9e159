//! The exception table: instructions that may fault on purpose, each with the address to
//! continue at when it does (as Linux's `__ex_table`). Used by the probing accessors below,
//! which read or write memory that may not be mapped and report the fault instead of dying;
//! the user-copy routines of the system-call layer will use the same table.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::VirtAddr;
use x86_64::instructions::interrupts;

#[repr(C)]
struct Entry {
    instruction: u64,
    fixup: u64,
}

unsafe extern "C" {
    static __extable_start: Entry;
    static __extable_end: Entry;
    fn probe_read_u64_asm(address: u64) -> ProbeResult;
    fn probe_write_u64_asm(address: u64, value: u64) -> ProbeResult;
}

#[repr(C)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

core::arch::global_asm!(
    r#"
    .section .text.probe, "ax"
    .global probe_read_u64_asm
probe_read_u64_asm:
    xor %edx, %edx
1:  mov (%rdi), %rax
    ret
2:  xor %eax, %eax
    mov $1, %edx
    ret

    .global probe_write_u64_asm
probe_write_u64_asm:
    xor %edx, %edx
    xor %eax, %eax
3:  mov %rsi, (%rdi)
    ret
4:  mov $1, %edx
    ret

    .section .extable, "a"
    .balign 8
    .quad 1b, 2b
    .quad 3b, 4b
    .text
    "#,
    options(att_syntax)
);

fn entries() -> &'static [Entry] {
    // SAFETY: the linker script gathers every `.extable` entry between these two symbols; the
    // entries are 16-byte records emitted by the assembly above, never written at run time.
    unsafe {
        let start = &raw const __extable_start;
        let end = &raw const __extable_end;
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// The fixup for a faulting instruction, if it is one that may fault on purpose.
pub fn fixup_for(instruction: VirtAddr) -> Option<VirtAddr> {
    entries()
        .iter()
        .find(|entry| entry.instruction == instruction.as_u64())
        .map(|entry| VirtAddr::new(entry.fixup))
}

/// The last page fault taken by a probe on this CPU: (address, error code).
static LAST_PROBE_FAULT: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Called by the page-fault path when it redirects a probe to its fixup.
pub fn record_probe_fault(address: VirtAddr, error: u64) {
    LAST_PROBE_FAULT[0].store(address.as_u64(), Ordering::Relaxed);
    LAST_PROBE_FAULT[1].store(error, Ordering::Relaxed);
}

/// A probe's access faulted: where, and the page-fault error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeFault {
    pub address: u64,
    pub error_code: u64,
}

fn finish(result: ProbeResult) -> Result<u64, ProbeFault> {
    if result.faulted == 0 {
        Ok(result.value)
    } else {
        Err(ProbeFault {
            address: LAST_PROBE_FAULT[0].load(Ordering::Relaxed),
            error_code: LAST_PROBE_FAULT[1].load(Ordering::Relaxed),
        })
    }
}

/// Reads a u64 at `address`, or reports the page fault the read caused.
pub fn probe_read_u64(address: u64) -> Result<u64, ProbeFault> {
    // Interrupts stay off so that no other thread's probe overwrites the recorded fault.
    interrupts::without_interrupts(|| {
        // SAFETY: the read instruction is in the exception table: a fault resumes at its fixup
        // instead of corrupting anything. A successful read of mapped memory has no effect.
        finish(unsafe { probe_read_u64_asm(address) })
    })
}

/// Writes a u64 at `address`, or reports the page fault the write caused.
///
/// # Safety
/// If `address` is mapped writable, the write happens: the caller must own that memory.
pub unsafe fn probe_write_u64(address: u64, value: u64) -> Result<(), ProbeFault> {
    interrupts::without_interrupts(|| {
        // SAFETY: forwarded to the caller for a successful write; a faulting one resumes at its
        // fixup.
        finish(unsafe { probe_write_u64_asm(address, value) }).map(|_| ())
    })
}
