//! One list of the per-CPU cache: blocks of one order (order 0, the small high orders 1..=3
//! and the pageblock order 9, as Linux's per-CPU lists since 5.13 and 5.19), and moving them
//! between the list and a zone's [`FreeArea`] a batch at a time.
//!
//! Owns the list's slots (frame numbers of block heads in state [`FrameState::Cached`], with
//! the list's order). The caller holds the cache's lock for the list, and the zone's lock for
//! the area it passes in; the kernel's `mm::page_alloc` decides when to refill and drain.

use crate::buddy::{FreeArea, MigrateType, PAGEBLOCK_ORDER};
use crate::frame::{FrameFlags, FrameIndex, FrameState, HeadWord};

/// Order-0 pages moved between a per-CPU list and its zone at a time.
pub const PCP_BATCH: usize = 32;
/// An order-0 per-CPU list holding more than this drains a batch back to its zone.
pub const PCP_HIGH: usize = 4 * PCP_BATCH;

/// The orders with a per-CPU list, and the slot of each: 0, 1..=3 (Linux's
/// `PAGE_ALLOC_COSTLY_ORDER`) and the pageblock order (Linux's THP list).
pub const PCP_ORDERS: [u8; 5] = [0, 1, 2, 3, PAGEBLOCK_ORDER];

/// The slot in [`PCP_ORDERS`] of `order`, if it has a per-CPU list.
#[inline]
pub const fn pcp_order_slot(order: u8) -> Option<usize> {
    match order {
        0..=3 => Some(order as usize),
        PAGEBLOCK_ORDER => Some(4),
        _ => None,
    }
}

/// The high mark of a list of `order`, in pages (as Linux's `pcp->high`): more than this and
/// the oldest [`pcp_batch`] blocks go back. Small for the high orders: what they hold neither
/// merges nor reaches the host until it is drained.
#[inline]
pub const fn pcp_high_pages(order: u8) -> usize {
    match order {
        0 => PCP_HIGH,
        1 | 2 => 32,
        3 => 64,
        _ => 1 << order,
    }
}

/// Blocks moved between a list of `order` and its zone at a time (a quarter of the high
/// mark, at least one block).
#[inline]
pub const fn pcp_batch(order: u8) -> usize {
    if order == 0 {
        PCP_BATCH
    } else {
        let blocks = (pcp_high_pages(order) >> order) / 4;
        if blocks == 0 { 1 } else { blocks }
    }
}

/// Most blocks a list holds at once (one over its high mark, before it drains).
const SLOTS: usize = PCP_HIGH + 1;

/// A stack of cached blocks of one order (frame numbers of their heads); the top is the
/// warmest.
pub struct PcpList {
    len: usize,
    /// The high mark in blocks, and the batch (both fixed by the order: kept here so that the
    /// hot path reads them next to `len`).
    high: usize,
    batch: usize,
    order: u8,
    pfns: [u64; SLOTS],
}

impl PcpList {
    /// An empty list of order-0 pages.
    pub const EMPTY: PcpList = PcpList::new(0);

    /// An empty list of blocks of `order` (one of [`PCP_ORDERS`]).
    pub const fn new(order: u8) -> PcpList {
        assert!(pcp_order_slot(order).is_some());
        PcpList {
            len: 0,
            high: pcp_high_pages(order) >> order,
            batch: pcp_batch(order),
            order,
            pfns: [0; SLOTS],
        }
    }

    /// The lists of one zone and migratetype, one per order of [`PCP_ORDERS`].
    pub const fn per_order() -> [PcpList; PCP_ORDERS.len()] {
        [
            PcpList::new(PCP_ORDERS[0]),
            PcpList::new(PCP_ORDERS[1]),
            PcpList::new(PCP_ORDERS[2]),
            PcpList::new(PCP_ORDERS[3]),
            PcpList::new(PCP_ORDERS[4]),
        ]
    }

    #[inline]
    pub fn order(&self) -> u8 {
        self.order
    }

    /// Blocks on the list.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Pages on the list.
    #[inline]
    pub fn pages(&self) -> u64 {
        (self.len as u64) << self.order
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cached blocks' heads, oldest first.
    #[inline]
    pub fn pfns(&self) -> &[u64] {
        &self.pfns[..self.len]
    }

    /// Takes the warmest block; its record is still `Cached` for the caller to relabel.
    #[inline]
    pub fn pop(&mut self) -> Option<u64> {
        self.len = self.len.checked_sub(1)?;
        Some(self.pfns[self.len])
    }

    /// Adds a block whose head the caller has made `Cached` with this list's order. True when
    /// the list now holds more than its high mark ([`pcp_high_pages`]): the caller should
    /// [`PcpList::drain_batch`] under the zone lock.
    #[inline]
    pub fn push(&mut self, pfn: u64) -> bool {
        self.pfns[self.len] = pfn;
        self.len += 1;
        self.len > self.high
    }

    /// Refills up to a batch ([`pcp_batch`]) of blocks of `kind` from `area` (whose zone this
    /// list caches), keeping more than `mark` pages free there. Each block comes out `Cached`.
    /// Returns the blocks added.
    #[unsafe(link_section = ".text.hot.refill")]
    pub fn refill(&mut self, area: &mut FreeArea, kind: MigrateType, mark: u64) -> usize {
        let before = self.len;
        let base_pfn = area.pfn(0);
        let order = self.order;
        let (pfns, len) = (&mut self.pfns, &mut self.len);
        // In one batch (whole blocks cut in place), pushed so that the lowest block is on top.
        let wanted = self.batch.saturating_sub(*len);
        let taken = area.allocate_batch(order, kind, wanted, mark, |index, head| {
            // Off the lists and not on any: one store of the head word (a cached block's links
            // are never read).
            head.relabel(HeadWord::new(
                FrameState::Cached,
                order,
                kind as u8,
                FrameFlags::empty(),
            ));
            pfns[*len] = base_pfn + index as u64;
            *len += 1;
        });
        pfns[before..*len].reverse();
        taken
    }

    /// Gives the oldest batch of blocks (the bottom of the stack) back to `area`; the warm
    /// ones stay.
    #[unsafe(link_section = ".text.hot.refill")]
    pub fn drain_batch(&mut self, area: &mut FreeArea) {
        let count = self.batch.min(self.len);
        free_cached(area, &self.pfns[..count], self.order);
        self.pfns.copy_within(count..self.len, 0);
        self.len -= count;
    }

    /// Gives every block back to `area`; returns how many pages.
    pub fn drain_all(&mut self, area: &mut FreeArea) -> u64 {
        free_cached(area, &self.pfns[..self.len], self.order);
        let pages = self.pages();
        self.len = 0;
        pages
    }
}

/// Frees cached blocks of `order` of `area`'s zone back to its lists, in one batch: sorted, so
/// that blocks that were one larger block go back as that block.
fn free_cached(area: &mut FreeArea, pfns: &[u64], order: u8) {
    let mut indices = [0 as FrameIndex; SLOTS];
    let indices = &mut indices[..pfns.len()];
    for (slot, &pfn) in indices.iter_mut().zip(pfns) {
        let index = area.index_of(pfn).expect("cached pfn is in its zone");
        // The cache's holder, under the zone lock: the word is ours to write whole.
        let frame = area.frame(index);
        frame.relabel(frame.head_word().with_state(FrameState::Tail));
        *slot = index;
    }
    indices.sort_unstable();
    area.free_batch(indices.iter().map(|&index| (index, order)));
}
