//! The per-CPU lists of one zone and migratetype: one list per order up to the pageblock order
//! (order 0, the small orders 1..=3 and the pageblock order 9, as Linux's per-CPU lists since
//! 5.13 and 5.19, and, our own addition, the orders 4..=8 between them, with two blocks each),
//! and moving blocks between a list and a zone's [`FreeArea`] a batch at a time.
//!
//! Owns the lists' slots (frame numbers of block heads in state [`FrameState::Cached`], with
//! the list's order), in one array where each list has room for one block over its high mark.
//! The caller holds the cache's lock for the lists, and the zone's lock for the area it passes
//! in; the kernel's `mm::page_alloc` decides when to refill and drain.

use crate::buddy::{FreeArea, MAX_ORDER, MigrateType, PAGEBLOCK_ORDER};
use crate::frame::{FrameFlags, FrameIndex, FrameState, FrameTable, HeadWord};

/// Order-0 pages moved between a per-CPU list and its zone at a time.
pub const PCP_BATCH: usize = 32;
/// An order-0 per-CPU list holding more than this drains a batch back to its zone.
pub const PCP_HIGH: usize = 4 * PCP_BATCH;

/// The highest of the small orders (Linux's `PAGE_ALLOC_COSTLY_ORDER`): the lists of the orders
/// above it hold a few blocks each, and the reporting worker drains them before a pass (what
/// they hold would keep 2 MiB blocks from forming).
pub const PCP_COSTLY_ORDER: u8 = 3;

/// The high mark, in blocks, of the lists of the orders between [`PCP_COSTLY_ORDER`] and the
/// pageblock order (4..=8: at most 3.9 MiB per zone and migratetype together, less than one
/// max-order block). Four blocks with a batch of two made the mixed benchmark another 8% faster
/// in the guest, for twice the memory held: not kept (see the README's allocator benchmark).
pub const PCP_LARGE_BLOCKS: usize = 2;
/// Blocks moved between such a list and its zone at a time: one, so these lists pass blocks
/// through ([`PcpList::passes_through`]) rather than refill and drain.
pub const PCP_LARGE_BATCH: usize = 1;

/// The orders with a per-CPU list, and the slot of each: every order up to the pageblock order
/// (Linux's THP list).
pub const PCP_ORDERS: [u8; PAGEBLOCK_ORDER as usize + 1] = {
    let mut orders = [0; PAGEBLOCK_ORDER as usize + 1];
    let mut order = 0;
    while order <= PAGEBLOCK_ORDER {
        orders[order as usize] = order;
        order += 1;
    }
    orders
};

/// Whether freeing the block of `order` at `pfn` would merge it into a 2 MiB or a max-order
/// block (it is one order below either, and its buddy is a free block of its order): such a
/// block goes to its zone rather than a per-CPU list, so that whole pageblocks and 4 MiB blocks
/// form (and reach the host) instead of waiting in a list for a drain. `frames` are the
/// records of the zone's pfns from `base_pfn`; read without the zone's lock, as a hint.
#[inline]
pub fn completes_large_block(frames: FrameTable, base_pfn: u64, pfn: u64, order: u8) -> bool {
    if !may_complete_large_block(order) {
        return false;
    }
    let buddy = pfn ^ (1 << order);
    buddy
        .checked_sub(base_pfn)
        .and_then(|index| frames.get(index as usize))
        .is_some_and(|frame| frame.head_word().is(FrameState::Free, order))
}

/// Whether a block of `order` can complete a 2 MiB or a max-order block
/// ([`completes_large_block`]): one order below either. Every free asks, so a caller may ask
/// this first and look the buddy up out of line.
#[inline]
pub const fn may_complete_large_block(order: u8) -> bool {
    order + 1 == PAGEBLOCK_ORDER || order + 1 == MAX_ORDER
}

/// The slot in [`PCP_ORDERS`] of `order`, if it has a per-CPU list.
#[inline]
pub const fn pcp_order_slot(order: u8) -> Option<usize> {
    if order <= PAGEBLOCK_ORDER {
        Some(order as usize)
    } else {
        None
    }
}

/// The high mark of a list of `order`, in pages (as Linux's `pcp->high`): more than this and
/// the oldest [`pcp_batch`] blocks go back (a list that passes blocks through keeps its own
/// and passes the new one on: [`PcpList::push_or_pass`]). Small for the high orders: what
/// they hold neither merges nor reaches the host until it is drained.
#[inline]
pub const fn pcp_high_pages(order: u8) -> usize {
    match order {
        0 => PCP_HIGH,
        1 | 2 => 32,
        3 => 64,
        PAGEBLOCK_ORDER => 1 << order,
        _ => PCP_LARGE_BLOCKS << order,
    }
}

/// Blocks moved between a list of `order` and its zone at a time (for the small orders and the
/// pageblock order a quarter of the high mark, at least one block).
#[inline]
pub const fn pcp_batch(order: u8) -> usize {
    match order {
        0 => PCP_BATCH,
        1..=PCP_COSTLY_ORDER | PAGEBLOCK_ORDER => {
            let blocks = (pcp_high_pages(order) >> order) / 4;
            if blocks == 0 { 1 } else { blocks }
        }
        _ => PCP_LARGE_BATCH,
    }
}

/// Whether the list of `order` passes blocks through ([`PcpList::passes_through`]): its batch
/// is one block, which is so for the orders above [`PCP_COSTLY_ORDER`] (one comparison).
#[inline]
pub const fn pcp_passes_through(order: u8) -> bool {
    order > PCP_COSTLY_ORDER
}

const _: () = {
    let mut order = 0;
    while order <= PAGEBLOCK_ORDER {
        assert!(pcp_passes_through(order) == (pcp_batch(order) == 1));
        order += 1;
    }
};

/// Most blocks a list of `order` holds at once (one over its high mark, before it drains).
#[inline]
pub const fn pcp_capacity(order: u8) -> usize {
    (pcp_high_pages(order) >> order) + 1
}

/// Where each list's slots start in [`PcpLists`]'s array, by slot of [`PCP_ORDERS`], and last
/// where they end.
const FIRST_SLOT: [usize; PCP_ORDERS.len() + 1] = {
    let mut first = [0; PCP_ORDERS.len() + 1];
    let mut slot = 0;
    while slot < PCP_ORDERS.len() {
        let capacity = pcp_capacity(PCP_ORDERS[slot]);
        first[slot + 1] = first[slot] + capacity;
        slot += 1;
    }
    first
};

/// Blocks the lists of one zone and migratetype can hold at once, all orders together.
pub const PCP_SLOTS: usize = FIRST_SLOT[PCP_ORDERS.len()];

/// A list's place in [`PcpLists`]'s array (its blocks are `bottom..top`, its room ends at
/// `end`) and the batch its order fixes: what the hot path reads, together. 32 bytes (the
/// batch a byte): with a 40-byte head (the batch a `usize`) one build's guest order-0 pairs
/// took 87 ns instead of 66 to 69, the code of the fast paths the same but for the stride (data
/// placement under TCG, as code placement is: see `arch::hot_text`).
#[derive(Clone, Copy)]
struct ListHead {
    top: usize,
    bottom: usize,
    end: usize,
    batch: u8,
    order: u8,
}

/// The per-CPU lists of one zone and migratetype, one per order of [`PCP_ORDERS`].
pub struct PcpLists {
    heads: [ListHead; PCP_ORDERS.len()],
    /// Each list's slots, [`FIRST_SLOT`]`[slot]..FIRST_SLOT[slot + 1]`: one over its high mark.
    pfns: [u64; PCP_SLOTS],
}

impl Default for PcpLists {
    fn default() -> Self {
        PcpLists::new()
    }
}

impl PcpLists {
    /// Empty lists.
    pub const fn new() -> PcpLists {
        let mut heads = [ListHead {
            top: 0,
            bottom: 0,
            end: 0,
            batch: 0,
            order: 0,
        }; PCP_ORDERS.len()];
        let mut slot = 0;
        while slot < PCP_ORDERS.len() {
            // The batch is kept in a byte (the head stays 32 bytes): evaluated at compile time.
            assert!(pcp_batch(PCP_ORDERS[slot]) <= u8::MAX as usize);
            heads[slot] = ListHead {
                top: FIRST_SLOT[slot],
                bottom: FIRST_SLOT[slot],
                end: FIRST_SLOT[slot + 1],
                batch: pcp_batch(PCP_ORDERS[slot]) as u8,
                order: PCP_ORDERS[slot],
            };
            slot += 1;
        }
        PcpLists {
            heads,
            pfns: [0; PCP_SLOTS],
        }
    }

    /// The list of slot `slot` of [`PCP_ORDERS`].
    #[inline]
    pub fn list(&mut self, slot: usize) -> PcpList<'_> {
        PcpList {
            head: &mut self.heads[slot],
            pfns: &mut self.pfns,
        }
    }

    /// Each list's order and its cached blocks' heads (oldest first), lowest order first.
    pub fn cached(&self) -> impl Iterator<Item = (u8, &[u64])> {
        self.heads
            .iter()
            .map(|head| (head.order, &self.pfns[head.bottom..head.top]))
    }

    /// Pages on the lists.
    pub fn pages(&self) -> u64 {
        self.heads
            .iter()
            .map(|head| ((head.top - head.bottom) as u64) << head.order)
            .sum()
    }

    /// Gives every block of the lists of `min_order` and up back to `area`; returns how many
    /// pages.
    pub fn drain_from(&mut self, min_order: u8, area: &mut FreeArea) -> u64 {
        let mut drained = 0;
        for (slot, &order) in PCP_ORDERS.iter().enumerate() {
            if order >= min_order {
                drained += self.list(slot).drain_all(area);
            }
        }
        drained
    }
}

/// What [`PcpList::push_or_pass`] did with a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// On the list.
    Kept,
    /// On the list, which is now over its high mark: drain a batch.
    OverHighMark,
    /// Not kept (a list that passes blocks through, at its high mark): to the zone with it.
    PassOn,
}

/// One list of [`PcpLists`]: a stack of cached blocks of one order (frame numbers of their
/// heads); the top is the warmest.
pub struct PcpList<'a> {
    head: &'a mut ListHead,
    /// The array the list's slots are part of.
    pfns: &'a mut [u64; PCP_SLOTS],
}

impl PcpList<'_> {
    #[inline]
    pub fn order(&self) -> u8 {
        self.head.order
    }

    /// Blocks on the list.
    #[inline]
    pub fn len(&self) -> usize {
        self.head.top - self.head.bottom
    }

    /// Pages on the list.
    #[inline]
    pub fn pages(&self) -> u64 {
        (self.len() as u64) << self.head.order
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.top == self.head.bottom
    }

    /// Whether this list moves one block at a time to and from its zone (orders 4..=9, whose
    /// batch is one block): a refill would then bring just the block the caller wants, through
    /// the list, so the caller takes an allocation from the empty list from the zone itself;
    /// and a block that would take the list past its high mark is passed on to the zone
    /// ([`PcpList::push_or_pass`]) instead of the oldest being drained to make room.
    #[inline]
    pub fn passes_through(&self) -> bool {
        self.head.batch == 1
    }

    /// Adds a block whose head the caller has made `Cached` with this list's order, as
    /// [`PcpList::push`], and says what the caller does next: nothing; drain a batch
    /// ([`PcpList::drain_batch`], under the zone lock); or, for a list that passes blocks
    /// through, give this block to the zone's free lists itself (the list was at its high mark
    /// and did not keep it: the same memory leaves as with a drain of the oldest, and the
    /// others need not move down). Its oldest blocks then stay until a drain (the reporting
    /// worker's before each pass, compaction's, an allocation about to fail).
    #[inline]
    pub fn push_or_pass(&mut self, pfn: u64) -> Pushed {
        if !self.push(pfn) {
            return Pushed::Kept;
        }
        // Asked only past the high mark: the order's class is not a branch on every push.
        if self.passes_through() {
            self.head.top -= 1;
            return Pushed::PassOn;
        }
        Pushed::OverHighMark
    }

    /// The cached blocks' heads, oldest first.
    #[inline]
    pub fn pfns(&self) -> &[u64] {
        &self.pfns[self.head.bottom..self.head.top]
    }

    /// Takes the warmest block; its record is still `Cached` for the caller to relabel.
    #[inline]
    pub fn pop(&mut self) -> Option<u64> {
        if self.head.top == self.head.bottom {
            return None;
        }
        self.head.top -= 1;
        Some(self.pfns[self.head.top])
    }

    /// Adds a block whose head the caller has made `Cached` with this list's order. True when
    /// the list now holds more than its high mark ([`pcp_high_pages`]; its last slot is taken):
    /// the caller should [`PcpList::drain_batch`] under the zone lock.
    #[inline]
    pub fn push(&mut self, pfn: u64) -> bool {
        // The slots are shared with the next list: a push past the end would overwrite its
        // oldest block (every caller drains when told to).
        debug_assert!(self.head.top < self.head.end, "push to a full per-CPU list");
        self.pfns[self.head.top] = pfn;
        self.head.top += 1;
        self.head.top == self.head.end
    }

    /// Refills up to a batch ([`pcp_batch`]) of blocks of `kind` from `area` (whose zone this
    /// list caches), keeping more than `mark` pages free there. Each block comes out `Cached`.
    /// Returns the blocks added.
    #[cfg_attr(target_os = "none", unsafe(link_section = ".text.hot.refill"))]
    pub fn refill(&mut self, area: &mut FreeArea, kind: MigrateType, mark: u64) -> usize {
        let before = self.head.top;
        let base_pfn = area.pfn(0);
        let order = self.head.order;
        let wanted = (self.head.batch as usize).saturating_sub(self.len());
        let (pfns, top) = (&mut *self.pfns, &mut self.head.top);
        // In one batch (whole blocks cut in place), pushed so that the lowest block is on top.
        let taken = area.allocate_batch(order, kind, wanted, mark, |index, head| {
            // Off the lists and not on any: one store of the head word (a cached block's links
            // are never read).
            head.relabel(HeadWord::new(
                FrameState::Cached,
                order,
                kind as u8,
                FrameFlags::empty(),
            ));
            pfns[*top] = base_pfn + index as u64;
            *top += 1;
        });
        pfns[before..*top].reverse();
        taken
    }

    /// Gives the oldest batch of blocks (the bottom of the stack) back to `area`; the warm
    /// ones stay.
    #[cfg_attr(target_os = "none", unsafe(link_section = ".text.hot.refill"))]
    pub fn drain_batch(&mut self, area: &mut FreeArea) {
        let (bottom, top) = (self.head.bottom, self.head.top);
        let count = (self.head.batch as usize).min(top - bottom);
        free_cached(
            area,
            &mut self.pfns[bottom..bottom + count],
            self.head.order,
        );
        self.pfns.copy_within(bottom + count..top, bottom);
        self.head.top -= count;
    }

    /// Gives every block back to `area`; returns how many pages.
    pub fn drain_all(&mut self, area: &mut FreeArea) -> u64 {
        let (bottom, top) = (self.head.bottom, self.head.top);
        free_cached(area, &mut self.pfns[bottom..top], self.head.order);
        let pages = self.pages();
        self.head.top = self.head.bottom;
        pages
    }
}

/// Frees cached blocks of `order` of `area`'s zone back to its lists, in one batch: sorted (in
/// place: they leave the list), so that blocks that were one larger block go back as that block.
fn free_cached(area: &mut FreeArea, pfns: &mut [u64], order: u8) {
    for &pfn in pfns.iter() {
        let index = area.index_of(pfn).expect("cached pfn is in its zone");
        // The cache's holder, under the zone lock: the word is ours to write whole.
        let frame = area.frame(index);
        frame.relabel(frame.head_word().with_state(FrameState::Tail));
    }
    pfns.sort_unstable();
    let base_pfn = area.pfn(0);
    area.free_batch(
        pfns.iter()
            .map(|&pfn| ((pfn - base_pfn) as FrameIndex, order)),
    );
}
