//! Helpers shared by the scenario test kernels in `kernels/`: each is its own boot, for tests
//! that cannot share a kernel with others (an expected panic, a double fault, a host-observed
//! workload).
#![no_std]

use core::panic::PanicInfo;
use kernel::{ExitCode, println, qemu};

/// A panic handler for kernels whose test passes by panicking with `expected` in the message.
pub fn expect_panic_containing(info: &PanicInfo, expected: &str) -> ! {
    let mut message = MessageBuffer::default();
    let _ = core::fmt::write(&mut message, format_args!("{}", info.message()));
    if message.as_str().contains(expected) {
        println!("[ok] expected panic: {}", message.as_str());
        println!("1 passed, 0 failed");
        qemu::exit(ExitCode::Success)
    }
    println!("[failed] unexpected panic: {}", message.as_str());
    println!("0 passed, 1 failed");
    qemu::exit(ExitCode::Failure)
}

/// Ends a kernel whose test should have panicked but returned.
pub fn did_not_panic(what: &str) -> ExitCode {
    println!("[failed] {what} did not panic");
    println!("0 passed, 1 failed");
    ExitCode::Failure
}

/// A fixed buffer for formatting a panic message without the heap.
struct MessageBuffer {
    bytes: [u8; 512],
    len: usize,
}

impl MessageBuffer {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("<not utf-8>")
    }
}

impl Default for MessageBuffer {
    fn default() -> Self {
        Self {
            bytes: [0; 512],
            len: 0,
        }
    }
}

impl core::fmt::Write for MessageBuffer {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        let room = self.bytes.len() - self.len;
        // Cut at a character boundary so the buffer stays valid UTF-8.
        let mut take = text.len().min(room);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// The randomized tests' seeded generator (xorshift64*), shared with the buddy core's model
/// test, so a failing run can be replayed from its seed.
pub use buddy_core::model::Rng;

/// The main function of a test kernel that needs the virtio-balloon device: runs `tests` if the
/// device is there, and otherwise says so and fails as a test run would (`0 passed, 1 failed`).
pub fn with_balloon_device(name: &str, tests: fn()) -> ExitCode {
    if !kernel::drivers::balloon::is_present() {
        println!("{name} tests need the virtio-balloon device (QEMU_BALLOON=on)");
        println!("0 passed, 1 failed");
        return ExitCode::Failure;
    }
    tests();
    ExitCode::Success
}

/// Waits (sleeping 2 ms at a time) until `done`; fails the test after 10 s, naming `what`.
pub fn wait_for(what: &str, done: impl Fn() -> bool) {
    let start = kernel::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < core::time::Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        kernel::task::sleep(core::time::Duration::from_millis(2));
    }
}
