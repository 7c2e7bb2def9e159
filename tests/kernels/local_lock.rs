//! A local lock (`sync::LocalLock`, the per-CPU cache's) taken again on its CPU while held
//! refuses with a panic naming it, instead of handing out a second mutable reference. The kernel
//! passes only by panicking so.
#![no_std]
#![no_main]

use kernel::sync::{LocalLock, LockClass};
use kernel::{BootInfo, ExitCode};

kernel::entry_point!(main, panic = on_panic);

fn on_panic(info: &core::panic::PanicInfo) -> ! {
    scenarios::expect_panic_containing(
        info,
        "a PerCpuCache local lock was taken again on its CPU while held",
    )
}

static LOCK: LocalLock<u64> = LocalLock::with_class(0, LockClass::PerCpuCache);

fn main(_info: &'static BootInfo) -> ExitCode {
    kernel::println!("local_lock: taking a local lock twice");
    let mut first = LOCK.lock();
    *first += 1;
    let second = core::hint::black_box(LOCK.lock());
    drop(second);
    drop(first);
    scenarios::did_not_panic("a local lock taken twice")
}
