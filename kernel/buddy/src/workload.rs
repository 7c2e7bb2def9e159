//! The allocator benchmark's operation sequences, shared by the guest's `bench=alloc` and the
//! native benchmark (`cargo bench -p buddy-core --bench native`), so both run exactly the same
//! operations against our allocator and against the `buddy_system_allocator` baseline.
//!
//! Owns only the sequences: the caller supplies the allocator ([`Frames`]) and the clock.

use alloc::vec::Vec;

/// An allocator of page frames, as the sequences see it.
pub trait Frames {
    /// Allocates `2^order` pages; the first pfn.
    fn alloc(&mut self, order: u8) -> Option<u64>;
    fn free(&mut self, pfn: u64, order: u8);
    /// Allocates `count` blocks of `order` and keeps them until [`Frames::free_batch`]: by
    /// default one by one, in `held`; an allocator with a batch interface uses it, and may keep
    /// the blocks in its own handles instead (as the kernel's owning `Pages`), so that no
    /// conversion is timed. Returns how many blocks it got.
    fn alloc_batch(&mut self, order: u8, count: usize, held: &mut Vec<(u64, u8)>) -> usize {
        for _ in 0..count {
            held.push((self.alloc(order).expect("memory"), order));
        }
        count
    }
    /// Frees every block the last [`Frames::alloc_batch`] kept (leaving `held` empty).
    fn free_batch(&mut self, held: &mut Vec<(u64, u8)>) {
        for (pfn, order) in held.drain(..) {
            self.free(pfn, order);
        }
    }
}

/// The cases, with the operations each counts (an allocation and a free are one each).
pub const PAIRS: u64 = 100_000;
pub const BATCH: usize = 10_000;
pub const MIXED: u64 = 100_000;
pub const MIXED_SEED: u64 = 0x1234_5678;
/// Order-9 (2 MiB) blocks allocated, then freed, per run.
pub const ORDER9_BATCH: usize = 256;

/// The cases by name: (name, operations per run).
pub const CASES: [(&str, u64); 4] = [
    ("alloc_order0_pairs", PAIRS * 2),
    ("alloc_order0_batch_10000", BATCH as u64 * 2),
    ("alloc_mixed_orders_0_9", MIXED),
    ("alloc_order9_batch_256", ORDER9_BATCH as u64 * 2),
];

/// Runs case `index` of [`CASES`] once; `held` is scratch room (its capacity is kept).
/// Generic, and inlined with the sequences into the caller: each allocator gets its own copy
/// of the loops, calling it directly (no dynamic dispatch to time), which the caller can place
/// (the guest puts each copy at the start of a page of its own: see `kernel/src/bench.rs`).
#[inline(always)]
pub fn run_case<F: Frames + ?Sized>(index: usize, frames: &mut F, held: &mut Vec<(u64, u8)>) {
    match index {
        0 => order0_pairs(frames, PAIRS),
        1 => batch(frames, held, 0, BATCH),
        2 => mixed(frames, held, MIXED, MIXED_SEED),
        _ => batch(frames, held, 9, ORDER9_BATCH),
    }
}

/// Order-0 allocation immediately freed, `count` times.
#[inline(always)]
pub fn order0_pairs<F: Frames + ?Sized>(frames: &mut F, count: u64) {
    for _ in 0..count {
        let pfn = frames.alloc(0).expect("memory");
        frames.free(pfn, 0);
    }
}

/// `count` allocations of `order`, then all freed (in allocation order), through the
/// allocator's batch interface where it has one.
#[inline(always)]
pub fn batch<F: Frames + ?Sized>(
    frames: &mut F,
    held: &mut Vec<(u64, u8)>,
    order: u8,
    count: usize,
) {
    held.clear();
    let got = frames.alloc_batch(order, count, held);
    assert_eq!(got, count, "memory for the batch");
    frames.free_batch(held);
}

/// A seeded random mix of allocations of orders 0..=9 and frees of random live blocks.
#[inline(always)]
pub fn mixed<F: Frames + ?Sized>(
    frames: &mut F,
    held: &mut Vec<(u64, u8)>,
    operations: u64,
    seed: u64,
) {
    held.clear();
    let mut state = seed;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..operations {
        let roll = random();
        if held.len() < 64 || (held.len() < 4096 && roll % 2 == 0) {
            // Orders weighted toward small blocks, as real workloads are.
            let order = ((roll >> 8) % 10).min((roll >> 16) % 10) as u8;
            if let Some(pfn) = frames.alloc(order) {
                held.push((pfn, order));
            }
        } else {
            let (pfn, order) = held.swap_remove(((roll >> 24) % held.len() as u64) as usize);
            frames.free(pfn, order);
        }
    }
    for &(pfn, order) in held.iter() {
        frames.free(pfn, order);
    }
}
