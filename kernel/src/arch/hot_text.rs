//! The hot text groups that `boot/kernel.ld` lays out first: the page allocator's paths that
//! run on every allocation and free, and the allocator benchmark's loops, in groups that each
//! start a page (and `bench=alloc`'s loop for its baseline, in a group of its own). Owns only
//! reading the linker's symbols around them.
//!
//! Why: under TCG (the default accelerator), QEMU chains a jump straight to its target only when
//! both lie in one 4 KiB page; a jump or call into another page looks the target's translation
//! up first. Where the page boundaries fell in the allocator's fast paths used to move with every
//! unrelated change to the kernel, and with them the guest figures of `bench=alloc` (ours: 62 to
//! 80 ns per order-0 operation, 136 to 171 ns per mixed one, across builds that did not touch
//! the allocator). A group that fits in its page keeps its jumps chained whatever else changes;
//! natively the grouping costs nothing and saves i-TLB entries.
//!
//! Functions join a group with `#[unsafe(link_section = ".text.hot.<group>")]`. A group only
//! helps while it fits in its page: `bench=alloc` reports each group's size and says so when one
//! outgrows it (release builds; a debug build's code is several times larger).

/// One hot text group: its name (the section suffix) and where the linker put it.
#[derive(Clone, Copy, Debug)]
pub struct HotGroup {
    pub name: &'static str,
    pub start: u64,
    pub end: u64,
}

impl HotGroup {
    pub const PAGE: u64 = 4096;

    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the group lies in one page (an empty one does too).
    pub fn fits_one_page(&self) -> bool {
        self.bytes() <= Self::PAGE && self.start.is_multiple_of(Self::PAGE)
    }

    pub fn contains(&self, address: u64) -> bool {
        (self.start..self.end).contains(&address)
    }
}

// Markers that `boot/kernel.ld` defines at the groups' bounds; declared `u8` only to have an
// address. Nothing reads them (only `&raw const` of each is taken, which is safe code), so the
// declared type can never be misused.
unsafe extern "C" {
    static __hot_fast_start: u8;
    static __hot_fast_end: u8;
    static __hot_zone_start: u8;
    static __hot_zone_end: u8;
    static __hot_refill_start: u8;
    static __hot_refill_end: u8;
    static __hot_bulk_alloc_start: u8;
    static __hot_bulk_alloc_end: u8;
    static __hot_bulk_free_start: u8;
    static __hot_bulk_free_end: u8;
    static __hot_baseline_start: u8;
    static __hot_baseline_end: u8;
}

/// The groups, in the order of the image: `fast` (allocation and free through the per-CPU
/// lists, and the benchmark's loop for them), `zone` (a zone's allocation and merging free),
/// `refill` (the per-CPU lists' refill and drain), `bulk_alloc` and `bulk_free` (batches), and
/// `baseline` (`bench=alloc`'s loop for the `buddy_system_allocator` baseline, so that its
/// harness has what ours has; empty in a kernel that cannot run the benchmark).
pub fn groups() -> [HotGroup; 6] {
    // Through `black_box`: the compiler takes two distinct symbols to have distinct
    // addresses, and would fold a check that a group is not empty to true.
    let group = |name, start: *const u8, end: *const u8| HotGroup {
        name,
        start: core::hint::black_box(start) as u64,
        end: core::hint::black_box(end) as u64,
    };
    // Only the symbols' addresses are taken (the linker script defines them; nothing is read).
    [
        group(
            "fast",
            &raw const __hot_fast_start,
            &raw const __hot_fast_end,
        ),
        group(
            "zone",
            &raw const __hot_zone_start,
            &raw const __hot_zone_end,
        ),
        group(
            "refill",
            &raw const __hot_refill_start,
            &raw const __hot_refill_end,
        ),
        group(
            "bulk_alloc",
            &raw const __hot_bulk_alloc_start,
            &raw const __hot_bulk_alloc_end,
        ),
        group(
            "bulk_free",
            &raw const __hot_bulk_free_start,
            &raw const __hot_bulk_free_end,
        ),
        group(
            "baseline",
            &raw const __hot_baseline_start,
            &raw const __hot_baseline_end,
        ),
    ]
}
