//! COM1 console through `uart_16550`, and the `log` backend that writes every kernel message to
//! it with a level and a monotonic timestamp.
//!
//! Owns COM1. Everything the kernel prints goes through here: `log` messages, machine-readable
//! lines (`BENCH {...}`, `EVENT {...}`, see [`crate::report`]) and the panic path.

use crate::sync::{IrqMutex, LockClass};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use uart_16550::backend::PioBackend;
use uart_16550::{Uart16550, Uart16550Tty};

const COM1_PORT: u16 = 0x3f8;

static COM1: IrqMutex<Option<Uart16550Tty<PioBackend>>> =
    IrqMutex::with_class(None, LockClass::Serial);
static LOGGER: KernelLogger = KernelLogger;
static LOGGER_INSTALLED: AtomicBool = AtomicBool::new(false);

/// Sets up COM1 (115200 8N1) and installs the logger. Safe to call more than once.
pub fn init() {
    let mut com1 = COM1.lock();
    if com1.is_none() {
        // SAFETY: 0x3f8..0x3ff is COM1 on every PC-compatible machine, QEMU's q35 included, and
        // this driver is its only user.
        let Ok(mut uart) = (unsafe { Uart16550::new_port(COM1_PORT) }) else {
            return;
        };
        // No loopback self-test (Uart16550Tty::new_port runs one): input that is already
        // arriving (a piped console) makes it fail, and the console would be lost.
        if uart.init(uart_16550::Config::default()).is_err() {
            // Without a console there is nowhere to say so; keep running silently.
            return;
        }
        *com1 = Some(Uart16550Tty::from_inner(uart));
    }
    drop(com1);
    if !LOGGER_INSTALLED.swap(true, Ordering::AcqRel) {
        // set_logger fails only if a logger is already set, which the flag rules out.
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// How much formatted text is gathered on the stack before it goes to the port.
const LINE_BUFFER: usize = 1024;

/// Text formatted on the stack, written to COM1 a buffer at a time. Formatting runs outside the
/// console's lock (an argument's `Display` may allocate, and the console's lock is the
/// innermost of all: see [`crate::sync`]).
struct Gathered {
    bytes: [u8; LINE_BUFFER],
    len: usize,
}

impl Gathered {
    fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        // Whole characters only are gathered, so the bytes are valid UTF-8.
        if let (Ok(text), Some(tty)) = (
            core::str::from_utf8(&self.bytes[..self.len]),
            COM1.lock().as_mut(),
        ) {
            let _ = tty.write_str(text);
        }
        self.len = 0;
    }
}

impl Write for Gathered {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for character in text.chars() {
            let width = character.len_utf8();
            if self.len + width > LINE_BUFFER {
                self.flush();
            }
            character.encode_utf8(&mut self.bytes[self.len..self.len + width]);
            self.len += width;
        }
        Ok(())
    }
}

/// Writes formatted text to the console as one unit: lines from different threads never mix
/// (unless a single message is longer than 1 KiB).
pub fn write_fmt(args: fmt::Arguments) {
    let mut gathered = Gathered {
        bytes: [0; LINE_BUFFER],
        len: 0,
    };
    let _ = gathered.write_fmt(args);
    gathered.flush();
}

/// Reads one byte from the console if one is waiting.
pub fn try_read_byte() -> Option<u8> {
    COM1.lock()
        .as_mut()
        .and_then(|tty| tty.inner_mut().try_receive_byte().ok())
}

/// The panic path: writes even if the console lock is held by a context that will never run
/// again (the CPU that panicked was interrupted, or itself held it).
pub fn emergency_write(args: fmt::Arguments) {
    if COM1.try_lock().is_none() {
        // SAFETY: we are panicking: whoever held the lock will not run again before the kernel
        // exits, so taking the console over cannot race with it.
        unsafe { COM1.force_unlock() };
    }
    write_fmt(args);
}

/// Prints to the console without a log prefix (for machine-readable lines and test output).
#[macro_export]
macro_rules! println {
    () => { $crate::drivers::serial::write_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::drivers::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints to the console without a newline.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::drivers::serial::write_fmt(format_args!($($arg)*)) };
}

struct KernelLogger;

impl log::Log for KernelLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let target = record.target();
        let target = target.strip_prefix("kernel::").unwrap_or(target);
        let stamp = Timestamp(crate::time::uptime_ns());
        write_fmt(format_args!(
            "[{stamp}] {:<5} {target}: {}\n",
            record.level(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

/// Seconds.microseconds since boot, or dashes before the clock is calibrated.
struct Timestamp(Option<u64>);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(ns) => write!(f, "{:5}.{:06}", ns / 1_000_000_000, (ns / 1000) % 1_000_000),
            None => f.write_str("    -.------"),
        }
    }
}
