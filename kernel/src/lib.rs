//! A guest-side memory manager for a Rust unikernel on x86_64.
//!
//! This crate is the kernel: [`start`] brings the machine up (console, CPU tables, clock, heap,
//! page tables, threads, timer) and then runs the binary's main function as the thread "main".
//! Binaries (the demo in `main.rs`, each test kernel under `tests/`) name their main function
//! with [`entry_point!`].
#![no_std]
#![cfg_attr(test, no_main)]
#![feature(custom_test_frameworks, abi_x86_interrupt)]
#![test_runner(crate::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

pub mod arch;
pub mod bench;
pub mod cmdline;
pub mod console;

pub mod drivers;
pub mod footprint;
pub mod fragment;
pub mod mm;
pub mod qemu;
pub mod scenarios;
pub mod sync;
pub mod task;
pub mod testing;
pub mod time;
pub mod tunables;
pub mod user;

#[cfg(test)]
mod tests;

pub use boot::{self, BootInfo};
pub use qemu::ExitCode;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What boot measured, for the demo and the tests.
#[derive(Clone, Copy, Debug)]
pub struct BootFacts {
    pub tsc_hz: u64,
    pub apic_timer_hz: u64,
    pub direct_mapped: u64,
}

static BOOT_FACTS: spin::Once<BootFacts> = spin::Once::new();
static MAIN_ENTERED_NS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds from the PVH entry to the call of the binary's main function (boot's length).
pub fn main_entered_ns() -> u64 {
    MAIN_ENTERED_NS.load(Ordering::Relaxed)
}
static BOOT_INFO: spin::Once<&'static BootInfo> = spin::Once::new();

/// What the boot protocol passed (memory map, command line), for code that is not `main`.
pub fn boot_info() -> &'static BootInfo {
    BOOT_INFO.get().expect("kernel started")
}

pub fn boot_facts() -> BootFacts {
    *BOOT_FACTS.get().expect("kernel started")
}

/// Declares the binary's main function: `fn(&'static BootInfo) -> ExitCode`. It runs as the
/// thread "main" once the kernel is up; its result ends the QEMU run. `panic = path` replaces
/// the panic handler (for test kernels that expect a panic).
#[macro_export]
macro_rules! entry_point {
    ($main:path) => {
        $crate::entry_point!($main, panic = $crate::panic);
    };
    ($main:path, panic = $handler:path) => {
        #[unsafe(no_mangle)]
        pub fn kernel_entry(info: &'static $crate::BootInfo) -> ! {
            let main: fn(&'static $crate::BootInfo) -> $crate::ExitCode = $main;
            $crate::start(info, main)
        }
        #[panic_handler]
        fn kernel_panic_handler(info: &core::panic::PanicInfo) -> ! {
            $handler(info)
        }
    };
}

/// Brings the kernel up and runs `main`. Called once, from the boot stub, with interrupts off.
pub fn start(info: &'static BootInfo, main: fn(&'static BootInfo) -> ExitCode) -> ! {
    let first_line_tsc = arch::rdtsc();
    BOOT_INFO.call_once(|| info);
    drivers::serial::init();
    log::info!(
        "kernel entered: PVH start_info at {:#x}",
        info.start_info_phys
    );
    // Checks that come before anything could hang or fault on what they find. They allocate
    // nothing: the heap is not up yet.
    if let Some(feature) = arch::missing_cpu_feature() {
        log::error!(
            "cannot boot: this CPU has no {} (CPUID.1:EDX bit {}), which the kernel needs for {}; give QEMU a CPU with it (no '-{}' in -cpu)",
            feature.name,
            feature.bit,
            feature.needed_for,
            feature.qemu_flag
        );
        qemu::exit(ExitCode::Failure);
    }
    let layout = boot::kernel_layout();
    let image = boot::AddrRange {
        start: layout.boot.start,
        end: layout.image_phys().end,
    };
    if let Err(error) = mm::boot_memory::check(info, image) {
        log::error!("cannot boot: {error}");
        if matches!(error, mm::boot_memory::BootMemoryError::BadMap(_)) {
            if info.cmdline_truncated {
                log::error!(
                    "cannot boot: the kernel command line is longer than the {} bytes of QEMU's PVH buffer, which then overwrites the memory map: shorten it",
                    boot::MAX_CMDLINE - 1
                );
            }
            mm::boot_memory::log_map(info.memory_map());
        }
        qemu::exit(ExitCode::Failure);
    }
    arch::init_cpu();
    arch::apic::init();
    let calibration = arch::tsc::calibrate();
    time::init(info.entry_tsc, calibration.tsc_hz);
    arch::apic::set_timer_hz(calibration.apic_timer_hz);
    mm::heap::init();
    cmdline::init(info.cmdline_bytes(), info.cmdline_truncated);
    let memory = mm::page_alloc::init(info.memory_map(), image);
    let deferred = mm::deferred_init::stats();
    log::info!(
        "memory: {} MiB managed, frame database {} KiB at {:#x} ({} B per 4 KiB frame and {} B per 2 MiB), set up in {} us: {} MiB of frames initialised at boot in {} us ({} us per GiB), {} MiB deferred to pgdatinit",
        memory.managed_pages >> 8,
        memory.database_bytes >> 10,
        memory.database_phys,
        size_of::<mm::frame::Frame>(),
        mm::frame::PAD_RECORDS * size_of::<mm::frame::Frame>(),
        memory.setup_ns / 1000,
        memory.initialised_frames >> 8,
        deferred.boot_ns / 1000,
        mm::deferred_init::per_gib_us(deferred.boot_ns, deferred.boot_frames),
        memory.deferred_pages >> 8,
    );
    let direct_mapped = mm::paging::init(info.memory_map());
    arch::memory_type::log_at_boot(info.memory_map());
    BOOT_FACTS.call_once(|| BootFacts {
        tsc_hz: calibration.tsc_hz,
        apic_timer_hz: calibration.apic_timer_hz,
        direct_mapped,
    });
    log::info!(
        "clock: TSC {}.{:03} MHz, APIC timer {} kHz (PIT-calibrated), one-shot (tickless)",
        calibration.tsc_hz / 1_000_000,
        calibration.tsc_hz / 1000 % 1000,
        calibration.apic_timer_hz / 1000,
    );

    log::info!(
        "boot: first log line {} us after the PVH entry",
        time::tsc_delta_to_ns(first_line_tsc.wrapping_sub(info.entry_tsc)) / 1000
    );
    task::scheduler::init();
    task::scheduler::start_timer();
    x86_64::instructions::interrupts::enable();
    // Without a device, or when the driver cannot start, it says why itself; the kernel runs on.
    let _ = drivers::balloon::init();
    mm::compaction::start();
    mm::ksm::start();
    mm::deferred_init::start();
    MAIN_ENTERED_NS.store(time::uptime_ns().unwrap_or(0), Ordering::Relaxed);
    let code = main(info);
    log::info!("main returned {code:?}: exiting");
    qemu::exit(code)
}

static PANICKING: AtomicBool = AtomicBool::new(false);

/// The kernel's panic handler: a failing test ends only its thread; anything else prints the
/// message and location and ends QEMU with failure.
pub fn panic(info: &PanicInfo) -> ! {
    if !PANICKING.load(Ordering::Relaxed) {
        testing::absorb_test_panic(info);
    }
    x86_64::instructions::interrupts::disable();
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A panic while panicking: do not try to format again.
        qemu::exit(ExitCode::Failure);
    }
    sync::disable_lock_order_checks();
    // No allocation on the way to the message: the panic may come before the heap is up (the
    // name is stored inline).
    let thread = task::scheduler::current_name().unwrap_or_default();
    drivers::serial::emergency_write(format_args!("\nKERNEL PANIC in thread '{thread}'"));
    if let Some(location) = info.location() {
        drivers::serial::emergency_write(format_args!(" at {location}"));
    }
    drivers::serial::emergency_write(format_args!(":\n{}\n", info.message()));
    qemu::exit(ExitCode::Failure)
}

#[cfg(test)]
entry_point!(test_kernel_main);

#[cfg(test)]
fn test_kernel_main(_info: &'static BootInfo) -> ExitCode {
    // Let free page reporting finish its first pass over all of memory, so that tests which
    // count heap bytes or timer interrupts do not share the CPU with it.
    let start = time::Instant::now();
    while !mm::reporting::is_idle() && start.elapsed() < core::time::Duration::from_secs(10) {
        task::sleep(core::time::Duration::from_millis(5));
    }
    test_main();
    ExitCode::Success
}
