//! A failing assertion panics, and the panic handler gets its message: the kernel passes only
//! by panicking with the expected text.
#![no_std]
#![no_main]

use kernel::{BootInfo, ExitCode};

kernel::entry_point!(main, panic = on_panic);

fn on_panic(info: &core::panic::PanicInfo) -> ! {
    scenarios::expect_panic_containing(info, "left: 1")
}

fn main(_info: &'static BootInfo) -> ExitCode {
    kernel::println!("should_panic: asserting 1 == 2");
    let one = core::hint::black_box(1);
    assert_eq!(one, 2);
    scenarios::did_not_panic("assert_eq!(1, 2)")
}
