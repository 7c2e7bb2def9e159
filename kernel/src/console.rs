//! The serial console's command prompt: counters and tunables at run time.
//!
//! `cargo run -- console=on` starts it after the demo; type `help`. The interpreter
//! ([`execute`]) is separate from the serial loop so tests can drive it. Reads COM1 by polling
//! every few milliseconds from a sleeping thread (the UART's interrupt is not wired yet).

use crate::mm::{checker, heap, page_alloc};
use crate::task;
use crate::tunables;
use alloc::string::String;
use core::fmt::Write;
use core::time::Duration;

const HELP: &str = "commands:
  zoneinfo         zones: present, managed, free pages, watermarks
  buddyinfo        free blocks per zone, migratetype and order
  check            run the frame-state checker
  heap             kernel heap usage
  threads          kernel threads and their states
  tasks            task counters and the tasks running now
  reporting        free page reporting counters and reported memory per order
  balloon          the balloon: target, size, statistics, interrupts
  frag             fragmentation: score per zone and node, index per order, stranded
                   memory, buddyinfo, compaction counters
  compact          compact every zone now (like /proc/sys/vm/compact_memory)
  ksm              KSM: run state and tunables, counters (pages_shared, pages_sharing, ...),
                   each task's ksm_stat (ksm_rmap_items, ksm_merging_pages, ...)
  run PROGRAM [N] [domain=D] [&]  run a user program with argument N (in KSM merge
                   domain D) and show its report (Ctrl-C kills it and its children); with &,
                   in the background
  kill ID          kill task ID (tasks lists them)
  tunables         every tunable with its value and range
  set NAME=VALUE   change a tunable
  exit             leave the console (the kernel exits)";

/// The `frag` report: Linux's extfrag score per zone and for the node, the fragmentation
/// index per order, the memory reporting cannot take, buddyinfo and the compaction counters.
fn write_fragmentation(out: &mut String) -> core::fmt::Result {
    use crate::mm::compaction;
    let (low, high) = compaction::score_marks();
    writeln!(
        out,
        "node score {} (proactive compaction starts above {high}, stops at {low}; {})",
        compaction::node_score(),
        if compaction::backing_off() {
            "backing off"
        } else {
            "ready"
        }
    )?;
    writeln!(
        out,
        "stranded free memory (movable, below reporting.min_order): {} KiB",
        compaction::stranded_pages() * 4
    )?;
    for zone in page_alloc::all_zones() {
        write!(
            out,
            "{:<6} score {:>3}  index",
            zone.kind.name(),
            compaction::zone_score(zone)
        )?;
        for order in 1..=crate::mm::buddy::MAX_ORDER {
            write!(out, " {}", compaction::fragmentation_index(zone, order))?;
        }
        writeln!(out)?;
    }
    page_alloc::write_buddyinfo(out)?;
    writeln!(out, "{:?}", compaction::stats())
}

/// What a command asks of the console loop after printing its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    Exit,
}

/// Control-C on the serial line: kills the foreground task.
const CTRL_C: u8 = 0x03;
/// How often `run` looks for Ctrl-C while its task runs.
const INPUT_POLL: Duration = Duration::from_millis(10);

/// Runs one command line and returns its output. Input that arrives while a command runs (Ctrl-C)
/// is read from the serial line.
pub fn execute(line: &str) -> (String, Next) {
    execute_with_input(line, &mut crate::drivers::serial::try_read_byte)
}

/// [`execute`] with `input` as the source of bytes typed while a command runs (the tests').
pub fn execute_with_input(line: &str, input: &mut dyn FnMut() -> Option<u8>) -> (String, Next) {
    let mut out = String::new();
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or("");
    let _ = match command {
        "" => Ok(()),
        "help" => writeln!(out, "{HELP}"),
        "zoneinfo" => page_alloc::write_zoneinfo(&mut out),
        "buddyinfo" => page_alloc::write_buddyinfo(&mut out),
        "check" => match checker::check() {
            Ok(census) => writeln!(out, "frame state ok: {census:?}"),
            Err(error) => writeln!(out, "frame state INCONSISTENT: {error}"),
        },
        "heap" => {
            let stats = heap::stats();
            writeln!(
                out,
                "heap: {} KiB in use of {} KiB ({} KiB grown from pages)",
                stats.used >> 10,
                stats.size >> 10,
                stats.grown >> 10
            )
        }
        "threads" => {
            let stats = task::scheduler::stats();
            for (id, name, state) in task::scheduler::thread_list() {
                let _ = writeln!(out, "{id:>4} {name:<16} {state}");
            }
            writeln!(
                out,
                "{} context switches, {} preemptions, {} timer interrupts",
                stats.context_switches, stats.preemptions, stats.timer_interrupts
            )
        }
        "tasks" => {
            let stats = crate::user::stats();
            for (pid, name) in crate::user::running_tasks() {
                let _ = writeln!(out, "{pid:>4} {name}");
            }
            writeln!(
                out,
                "{} started, {} exited, {} killed ({} oom_kill), {} system calls, {} clones refused",
                stats.started,
                stats.exited,
                stats.killed,
                stats.oom_kill,
                stats.system_calls,
                stats.clones_refused
            )
        }
        "run" => {
            let rest: alloc::vec::Vec<&str> = words.collect();
            run_program(&mut out, &rest, input)
        }
        "kill" => match words.next().map(str::parse::<crate::user::Pid>) {
            Some(Ok(pid)) => match crate::user::kill(pid, "killed from the console") {
                Ok(()) => writeln!(out, "task {pid}: kill requested"),
                Err(error) => writeln!(out, "kill {pid}: {error:?}"),
            },
            _ => writeln!(out, "usage: kill ID (tasks lists them)"),
        },
        "reporting" => {
            let stats = crate::mm::reporting::stats();
            let state = crate::drivers::balloon::reporting_state();
            let _ = writeln!(out, "free page reporting: {state}");
            let _ = writeln!(
                out,
                "{} passes, {} reports, {} MiB reported in all, {} failures; registered: {}",
                stats.passes,
                stats.reports,
                stats.bytes_reported >> 20,
                stats.failures,
                crate::mm::reporting::is_registered()
            );
            let _ = write!(out, "reported now (pages per order):");
            for pages in stats.reported_pages_now {
                let _ = write!(out, " {pages}");
            }
            writeln!(out)
        }
        "balloon" => {
            let stats = crate::drivers::balloon::stats();
            writeln!(out, "{stats:?}")
        }
        "frag" => write_fragmentation(&mut out),
        "ksm" => crate::mm::ksm::write_report(&mut out).and_then(|()| {
            crate::mm::ksm::write_task_report(
                &mut out,
                crate::user::task_spaces()
                    .into_iter()
                    .map(|(pid, name, space)| (u64::from(pid), name, space)),
            )
        }),
        "compact" => {
            let report = crate::mm::compaction::compact_all();
            let _ = writeln!(
                out,
                "compacted: {} pages moved, {} not; free 2 MiB blocks {} -> {}",
                report.migrated, report.failed, report.huge_blocks_before, report.huge_blocks_after
            );
            write_fragmentation(&mut out)
        }
        "tunables" => {
            for tunable in tunables::ALL {
                let _ = writeln!(
                    out,
                    "{:<24} {:>8}  ({}..={}, default {}) {}",
                    tunable.name,
                    tunable.get(),
                    tunable.min,
                    tunable.max,
                    tunable.default,
                    tunable.help
                );
            }
            Ok(())
        }
        "set" => match words.next().and_then(|word| word.split_once('=')) {
            Some((name, value)) => match tunables::set_from_str(name, value) {
                Ok(value) => writeln!(out, "{name} = {value}"),
                Err(error) => writeln!(out, "set {name}={value}: {error}"),
            },
            None => writeln!(out, "usage: set NAME=VALUE"),
        },
        "exit" => return (out, Next::Exit),
        other => writeln!(out, "unknown command '{other}'; try help"),
    };
    (out, Next::Continue)
}

/// Reads lines from COM1 and runs them until `exit`.
pub fn run() {
    crate::println!("console: type 'help' for commands");
    let mut line = String::new();
    crate::print!("> ");
    loop {
        let Some(byte) = crate::drivers::serial::try_read_byte() else {
            task::sleep(Duration::from_millis(5));
            continue;
        };
        match byte {
            b'\r' | b'\n' => {
                crate::println!();
                let (output, next) = execute(&line);
                crate::print!("{output}");
                line.clear();
                if next == Next::Exit {
                    return;
                }
                crate::print!("> ");
            }
            0x08 | 0x7f => {
                if line.pop().is_some() {
                    crate::print!("\x08 \x08");
                }
            }
            CTRL_C => {
                crate::println!("^C");
                line.clear();
                crate::print!("> ");
            }
            byte if byte.is_ascii_graphic() || byte == b' ' => {
                line.push(byte as char);
                crate::print!("{}", byte as char);
            }
            _ => {}
        }
    }
}

/// `run PROGRAM [N] [&]`: runs a user program to its end and writes its report; Ctrl-C from
/// `input` kills it (and its children). With `&` it runs on in the background.
fn run_program(
    out: &mut String,
    words: &[&str],
    input: &mut dyn FnMut() -> Option<u8>,
) -> core::fmt::Result {
    let background = words.last() == Some(&"&");
    let words = if background {
        &words[..words.len() - 1]
    } else {
        words
    };
    // `domain=D`: the task's KSM merge domain (default 0).
    let (domain, words) = match words.last().and_then(|word| word.strip_prefix("domain=")) {
        Some(value) => match value.parse::<u32>() {
            Ok(domain) => (domain, &words[..words.len() - 1]),
            Err(_) => return writeln!(out, "domain= takes a number"),
        },
        None => (0, words),
    };
    let (name, argument) = (words.first().copied(), words.get(1).copied());
    let programs = crate::user::programs::all();
    let Some(program) = programs.iter().find(|program| Some(program.name) == name) else {
        let names: alloc::vec::Vec<&str> = programs.iter().map(|program| program.name).collect();
        return writeln!(
            out,
            "usage: run PROGRAM [N] [domain=D] [&]; programs: {}",
            names.join(", ")
        );
    };
    let argument = match argument.map(str::parse::<u64>) {
        None => 0,
        Some(Ok(value)) => value,
        Some(Err(_)) => return writeln!(out, "the argument must be a number"),
    };
    let capabilities = crate::user::Capabilities::empty();
    let mut handle =
        match crate::user::spawn_in_domain(program.name, program, argument, capabilities, domain) {
            Ok(handle) => handle,
            Err(error) => return writeln!(out, "could not start {}: {error:?}", program.name),
        };
    let pid = handle.pid();
    if background {
        return writeln!(
            out,
            "task {pid} runs in the background (kill {pid} ends it)"
        );
    }
    let report = loop {
        match handle.join_timeout(INPUT_POLL) {
            Ok(report) => break report,
            Err(still_running) => handle = still_running,
        }
        while let Some(byte) = input() {
            if byte == CTRL_C {
                let _ = crate::user::kill_family(pid, "interrupted from the console (Ctrl-C)");
            }
        }
    };
    writeln!(
        out,
        "task {}: {:?}, {:?}",
        report.pid, report.exit, report.counters
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test_case]
    fn console_commands_show_the_allocator_and_set_tunables() {
        let (zoneinfo, next) = execute("zoneinfo");
        assert_eq!(next, Next::Continue);
        assert!(
            zoneinfo.contains("DMA32") && zoneinfo.contains("managed"),
            "{zoneinfo}"
        );
        let (buddyinfo, _) = execute("buddyinfo");
        assert!(buddyinfo.contains("Movable"), "{buddyinfo}");
        assert!(execute("check").0.starts_with("frame state ok"));
        assert!(
            execute("set sched.timeslice_ms=0")
                .0
                .contains("out of range")
        );
        assert_eq!(
            execute("set sched.timeslice_ms=12").0.trim(),
            "sched.timeslice_ms = 12"
        );
        assert_eq!(tunables::SCHED_TIMESLICE_MS.get(), 12);
        tunables::SCHED_TIMESLICE_MS
            .set(tunables::SCHED_TIMESLICE_MS.default)
            .expect("in range");
        let (frag, _) = execute("frag");
        assert!(
            frag.contains("node score") && frag.contains("compact_migrate_scanned"),
            "{frag}"
        );
        let (compacted, _) = execute("compact");
        assert!(compacted.starts_with("compacted: "), "{compacted}");
        assert!(execute("frobnicate").0.contains("unknown command"));
        assert_eq!(execute("exit").1, Next::Exit);
    }

    #[test_case]
    fn console_shows_reporting_and_balloon_counters() {
        let reporting = execute("reporting").0;
        assert!(reporting.contains("reported now"));
        assert!(reporting.contains("free page reporting: on"), "{reporting}");
        assert!(execute("balloon").0.contains("target_pages"));
        assert!(execute("run nosuch").0.contains("programs: memory_walk"));
        assert!(execute("run spin x").0.contains("must be a number"));
    }
}
