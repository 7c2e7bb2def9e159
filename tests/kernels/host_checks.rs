//! The guest side of the host-observed checks: runs the scenario named on the command line
//! (`scenario=reclaim|balloon|no_device|fragment|soak`, see `kernel::scenarios`) or the benchmark
//! (`bench=fragmentation`, a small one, see `kernel::bench`). `cargo test` does not boot it
//! directly: run-qemu.sh hands it to `tests/host/host_checks.py`, which boots it for each check
//! and asserts on what the host sees.
#![no_std]
#![no_main]

use kernel::{BootInfo, ExitCode};

kernel::entry_point!(main);

fn main(_info: &'static BootInfo) -> ExitCode {
    if let Some(name) = kernel::cmdline::value("bench") {
        return kernel::bench::run(name).unwrap_or_else(|| {
            log::error!("host_checks: unknown benchmark {name}");
            ExitCode::Failure
        });
    }
    let Some(name) = kernel::cmdline::value("scenario") else {
        log::error!(
            "host_checks: no scenario= or bench= on the command line (run it through host_checks.py)"
        );
        return ExitCode::Failure;
    };
    kernel::scenarios::run(name).unwrap_or_else(|| {
        log::error!("host_checks: unknown scenario {name}");
        ExitCode::Failure
    })
}
