//! The debug lock-order check catches a violation the first time it happens: allocating from
//! the heap while a zone's lock is held (the heap may need a page from that zone, which would
//! deadlock under load) panics with both locks named. The kernel passes only by panicking so.
#![no_std]
#![no_main]

extern crate alloc;

use kernel::{BootInfo, ExitCode};

kernel::entry_point!(main, panic = on_panic);

fn on_panic(info: &core::panic::PanicInfo) -> ! {
    scenarios::expect_panic_containing(
        info,
        "lock order: taking a Heap lock while holding a Zone lock",
    )
}

fn main(_info: &'static BootInfo) -> ExitCode {
    kernel::println!("lock_order: allocating with a zone locked");
    let zone = kernel::mm::page_alloc::all_zones()[0].lock();
    let boxed = core::hint::black_box(alloc::boxed::Box::new(1u64));
    drop(boxed);
    drop(zone);
    scenarios::did_not_panic("a heap allocation under a zone's lock")
}
