//! A kernel thread that overflows its stack hits the unmapped guard page below it; the fault
//! cannot be delivered on that stack, so the double-fault handler (on its own stack) reports a
//! kernel stack overflow.
#![no_std]
#![no_main]

use kernel::{BootInfo, ExitCode, task};

kernel::entry_point!(main, panic = on_panic);

fn on_panic(info: &core::panic::PanicInfo) -> ! {
    scenarios::expect_panic_containing(info, "kernel stack overflow")
}

fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1).wrapping_add(core::hint::black_box(frame[1]))
}

fn main(_info: &'static BootInfo) -> ExitCode {
    kernel::println!("stack_overflow: recursing without end in a kernel thread");
    let Ok(thread) = task::spawn("deep", || recurse(0)) else {
        return scenarios::did_not_panic("spawning the recursing thread (it could not start)");
    };
    let result = thread.join();
    kernel::println!("recursion returned {result}");
    scenarios::did_not_panic("unbounded recursion")
}
