//! A fault that cannot be delivered on the current stack (the stack pointer is unmapped) must
//! reach the double-fault handler on its own IST stack, which reports it as a panic.
#![no_std]
#![no_main]

use kernel::{BootInfo, ExitCode};

kernel::entry_point!(main, panic = on_panic);

fn on_panic(info: &core::panic::PanicInfo) -> ! {
    scenarios::expect_panic_containing(info, "double fault")
}

fn main(_info: &'static BootInfo) -> ExitCode {
    kernel::println!("double_fault: pushing onto an unmapped stack");
    // SAFETY: deliberately unsound: the push faults, the page fault cannot be pushed on the same
    // unmapped stack, and the CPU raises a double fault, which never returns here.
    unsafe {
        core::arch::asm!("mov rsp, {bad}", "push rax", bad = in(reg) 0x0000_0000_dead_0000u64, options(noreturn));
    }
}
