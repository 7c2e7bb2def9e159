//! The seeded model test of the page allocator, shared by the guest (the `page_alloc` test
//! kernel runs it against the kernel's allocator, a million operations) and the host (this
//! crate's tests run it against [`crate::sim::Sim`]; fewer operations under Miri).
//!
//! Owns the operation sequence and the model: a list of live blocks with a signature written
//! into each (verified before it is freed), allocation checks (order, alignment, zone limit),
//! and after every phase the target's frame-state check, whose count of allocated pages must
//! equal the model's. The target supplies the allocator, the signatures' storage and the check.

use crate::buddy::{MAX_ORDER, MigrateType};
use alloc::vec::Vec;

/// xorshift64*: a small seeded generator, so a failing run can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// The highest zone an allocation may come from (the kernel's `ZoneLimit`: DMA, DMA32, any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Lowest,
    Low,
    Any,
}

/// What the model test drives.
pub trait ModelTarget {
    /// Allocates `2^order` pages; the first pfn, or `None` when the allocator refuses.
    fn alloc(&mut self, order: u8, kind: MigrateType, limit: Limit) -> Option<u64>;
    /// Frees a block `alloc` gave; panics if the allocator refuses.
    fn free(&mut self, pfn: u64, order: u8);
    /// One past the last pfn an allocation under `limit` may use.
    fn limit_end_pfn(&self, limit: Limit) -> u64;
    /// Writes `value` into the block (its first and last words), and reads them back.
    fn sign(&mut self, pfn: u64, order: u8, value: u64);
    fn signature(&self, pfn: u64, order: u8) -> u64;
    /// Runs the frame-state check (panicking on a problem); returns the pages it found
    /// allocated to the model.
    fn check(&mut self) -> u64;
    /// Free pages once every cache is back in the zones.
    fn settled_free_pages(&mut self) -> u64;
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub allocations: u64,
    pub refused: u64,
}

fn signature(pfn: u64, order: u8, seed: u64) -> u64 {
    pfn.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed ^ order as u64
}

fn verify(target: &impl ModelTarget, pfn: u64, order: u8, seed: u64) {
    assert_eq!(
        target.signature(pfn, order),
        signature(pfn, order, seed),
        "block pfn {pfn:#x} order {order} was overwritten"
    );
}

/// Runs `operations` seeded random allocations and frees in `phases` phases, keeping at most
/// about half of free memory allocated, then frees everything: free memory must come back to
/// its starting figure.
pub fn run(target: &mut impl ModelTarget, seed: u64, operations: u64, phases: u64) -> Summary {
    let mut rng = Rng(seed);
    let start_free = target.settled_free_pages();
    let budget = start_free / 2;
    let mut live: Vec<(u64, u8)> = Vec::with_capacity(1 << 16);
    let mut live_pages = 0u64;
    let mut summary = Summary::default();
    for phase in 0..phases {
        for _ in 0..operations / phases {
            let allocate = live.is_empty() || (live_pages < budget && rng.below(100) < 52);
            if allocate {
                let order = match rng.below(100) {
                    0..=59 => 0,
                    60..=84 => 1 + rng.below(3) as u8,
                    _ => 4 + rng.below(MAX_ORDER as u64 - 3) as u8,
                };
                let kind = MigrateType::ALLOCATABLE[rng.below(3) as usize];
                let limit = match rng.below(100) {
                    0..=4 => Limit::Lowest,
                    5..=19 => Limit::Low,
                    _ => Limit::Any,
                };
                match target.alloc(order, kind, limit) {
                    Some(pfn) => {
                        assert_eq!(pfn % (1 << order), 0, "block not aligned to its order");
                        assert!(
                            pfn + (1 << order) <= target.limit_end_pfn(limit),
                            "{limit:?} violated: pfn {pfn:#x} order {order}"
                        );
                        target.sign(pfn, order, signature(pfn, order, seed));
                        live.push((pfn, order));
                        live_pages += 1 << order;
                        summary.allocations += 1;
                    }
                    None => summary.refused += 1,
                }
            } else {
                let victim = rng.below(live.len() as u64) as usize;
                let (pfn, order) = live.swap_remove(victim);
                verify(target, pfn, order, seed);
                target.free(pfn, order);
                live_pages -= 1 << order;
            }
        }
        assert_eq!(
            target.check(),
            live_pages,
            "phase {phase}: allocated pages differ from the model"
        );
    }
    for (pfn, order) in live.drain(..) {
        verify(target, pfn, order, seed);
        target.free(pfn, order);
    }
    target.check();
    assert_eq!(
        target.settled_free_pages(),
        start_free,
        "free memory did not return to its starting figure"
    );
    summary
}

/// The model's target on the host: [`crate::sim::Sim`] with its zones as DMA, DMA32 and the
/// rest; signatures live in the head's and the last frame's reverse-map words.
impl ModelTarget for crate::sim::Sim {
    fn alloc(&mut self, order: u8, kind: MigrateType, limit: Limit) -> Option<u64> {
        let zones = match limit {
            Limit::Lowest => 1,
            Limit::Low => 2,
            Limit::Any => usize::MAX,
        };
        crate::sim::Sim::alloc(self, order, kind, zones)
    }
    fn free(&mut self, pfn: u64, order: u8) {
        if let Err(state) = crate::sim::Sim::free(self, pfn, order) {
            panic!("freeing live block pfn {pfn:#x} order {order} refused: {state:?}");
        }
    }
    fn limit_end_pfn(&self, limit: Limit) -> u64 {
        let zones = self.zones();
        let last = match limit {
            Limit::Lowest => 0,
            Limit::Low => 1,
            Limit::Any => zones.len() - 1,
        };
        zones[last.min(zones.len() - 1)].end_pfn
    }
    fn sign(&mut self, pfn: u64, order: u8, value: u64) {
        let frame = |pfn| self.frame(pfn).expect("a live block's frame");
        frame(pfn)
            .rmap
            .store(value, core::sync::atomic::Ordering::Relaxed);
        let last = frame(pfn + (1 << order) - 1);
        last.private
            .store(!(value as u32), core::sync::atomic::Ordering::Relaxed);
    }
    fn signature(&self, pfn: u64, order: u8) -> u64 {
        let frame = |pfn| self.frame(pfn).expect("a live block's frame");
        let value = frame(pfn).rmap.load(core::sync::atomic::Ordering::Relaxed);
        let last = frame(pfn + (1 << order) - 1)
            .private
            .load(core::sync::atomic::Ordering::Relaxed);
        if last == !(value as u32) {
            value
        } else {
            !value
        }
    }
    fn check(&mut self) -> u64 {
        match crate::sim::Sim::check(self) {
            Ok(census) => census.allocated,
            Err(error) => panic!("frame-state check failed: {error:?}"),
        }
    }
    fn settled_free_pages(&mut self) -> u64 {
        self.drain();
        self.free_pages()
    }
}
