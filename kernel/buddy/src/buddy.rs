//! The buddy allocator of one zone: free lists per order and migratetype, a migratetype per
//! 2 MiB pageblock, splitting, merging, fallback that steals whole pageblocks, isolation, and
//! the reported-page boundary of every list.
//!
//! Owns a zone's [`FreeArea`]: the free lists and the list fields of the zone's frame records.
//! It is always used under the zone's lock (the kernel's `mm::zone::Zone`); nothing else touches the
//! lists. Free lists are intrusive doubly linked lists through the frame records; blocks can be
//! inserted and taken at either end, and removed from the middle, all in O(1).
//!
//! Reported blocks (the host was told it may discard their memory, flag `REPORTED`) form one
//! run at the tail of their list, starting at the list's *boundary*. Unreported blocks always
//! go in front of it, allocation takes from the head (warm, unreported memory first), and a
//! reported block that leaves its list for any reason (allocation, split, merge, a migratetype
//! move, isolation) loses its flag and its count. The reporting worker takes the unreported
//! block just in front of the boundary, so a pass only ever visits what is new.

use crate::frame::{Frame, FrameFlags, FrameIndex, FrameState, FrameTable, HeadWord, NONE};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

pub const MAX_ORDER: u8 = 10;
pub const ORDERS: usize = MAX_ORDER as usize + 1;
/// Pageblocks are 2 MiB: the unit of anti-fragmentation and of compaction's goal.
pub const PAGEBLOCK_ORDER: u8 = 9;
pub const PAGEBLOCK_PAGES: u64 = 1 << PAGEBLOCK_ORDER;

/// What kind of allocations a pageblock (and a free list) serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum MigrateType {
    Unmovable = 0,
    Movable = 1,
    Reclaimable = 2,
    /// Taken out of allocation (for compaction or offlining): frees here stay unallocatable.
    Isolate = 3,
}

pub const MIGRATE_TYPES: usize = 4;

impl MigrateType {
    pub const ALL: [MigrateType; MIGRATE_TYPES] = [
        MigrateType::Unmovable,
        MigrateType::Movable,
        MigrateType::Reclaimable,
        MigrateType::Isolate,
    ];
    /// The types an allocation can ask for.
    pub const ALLOCATABLE: [MigrateType; 3] = [
        MigrateType::Unmovable,
        MigrateType::Movable,
        MigrateType::Reclaimable,
    ];

    #[inline]
    pub fn from_u8(value: u8) -> MigrateType {
        match value {
            0 => MigrateType::Unmovable,
            2 => MigrateType::Reclaimable,
            3 => MigrateType::Isolate,
            _ => MigrateType::Movable,
        }
    }

    pub fn short_name(self) -> &'static str {
        match self {
            MigrateType::Unmovable => "Unmovable",
            MigrateType::Movable => "Movable",
            MigrateType::Reclaimable => "Reclaimable",
            MigrateType::Isolate => "Isolate",
        }
    }

    /// Where an allocation of this type looks when its own lists are empty (as Linux).
    fn fallbacks(self) -> [MigrateType; 2] {
        match self {
            MigrateType::Unmovable => [MigrateType::Reclaimable, MigrateType::Movable],
            MigrateType::Movable => [MigrateType::Reclaimable, MigrateType::Unmovable],
            MigrateType::Reclaimable | MigrateType::Isolate => {
                [MigrateType::Unmovable, MigrateType::Movable]
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct FreeList {
    head: FrameIndex,
    tail: FrameIndex,
    count: u32,
    /// The first block of the reported run at the tail, or `NONE`.
    boundary: FrameIndex,
    /// Blocks in the reported run.
    reported: u32,
}

impl FreeList {
    const EMPTY: FreeList = FreeList {
        head: NONE,
        tail: NONE,
        count: 0,
        boundary: NONE,
        reported: 0,
    };
}

/// Which end of a free list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Head,
    Tail,
}

/// Where [`FreeArea::link`] puts a block.
#[derive(Clone, Copy)]
enum Place {
    Head,
    Tail,
    /// Just in front of this block.
    Before(FrameIndex),
}

/// Counters of one zone's allocator.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuddyCounters {
    /// Allocations served from another migratetype's lists.
    pub fallbacks: u64,
    /// Pageblocks whose migratetype changed to the allocation's type.
    pub pageblocks_stolen: u64,
    pub splits: u64,
    pub merges: u64,
}

/// A free block, as the allocator hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub index: FrameIndex,
    pub order: u8,
}

/// The bit of `order` in [`FreeArea`]'s masks of non-empty lists.
const NONEMPTY: u32 = 1;
/// The bit of `order` in [`FreeArea`]'s masks of lists with a warm head.
const WARM: u32 = 1 << 16;

pub struct FreeArea {
    base_pfn: u64,
    frames: FrameTable,
    lists: [[FreeList; MIGRATE_TYPES]; ORDERS],
    /// Per migratetype, a bit per order whose list is not empty (bits 0..16, [`NONEMPTY`]) and
    /// a bit per order whose list has an unreported (warm) block at its head (bits 16..32,
    /// [`WARM`]): the order searches read one word instead of walking the lists. Kept whenever
    /// a list's head or boundary changes.
    masks: [u32; MIGRATE_TYPES],
    /// One migratetype per pageblock; atomic so that it can be read without the zone lock
    /// (written only under it).
    pageblock_types: &'static [AtomicU8],
    /// Pages in blocks on the free lists (not isolated, not cached).
    pub free_pages: u64,
    /// Of those, pages in reported blocks, per order.
    reported_pages: [u64; ORDERS],
    /// Set when a free makes enough unreported memory for the reporting worker (see
    /// [`FreeArea::set_report_trigger`]); taken by the zone's unlock.
    report_wanted: bool,
    /// Reporting trigger: from this order up, this many unreported free pages. `None`: off.
    report_trigger: Option<(u8, u64)>,
    pub counters: BuddyCounters,
}

/// Points `prev` (or the list's head, if `prev` is `NONE`) forward to `after_prev`, and `next`
/// (or the list's tail) back to `before_next`: the neighbours' half of inserting a block between
/// them (both the block) or of removing the one between them (each the other).
#[inline(always)]
fn set_neighbours(
    frames: FrameTable,
    list: &mut FreeList,
    prev: FrameIndex,
    next: FrameIndex,
    after_prev: FrameIndex,
    before_next: FrameIndex,
) {
    if prev != NONE {
        frames[prev as usize].set_next(after_prev);
    } else {
        list.head = after_prev;
    }
    if next != NONE {
        frames[next as usize].set_prev(before_next);
    } else {
        list.tail = before_next;
    }
}

/// Writes `frame` (the record of `index`) as a free head with `word`, linked into `list` between
/// `prev` and `next` (`NONE`: the list's end), and the neighbours' links or the list's ends; one
/// more block on the list. Free pages and masks are the caller's to settle.
#[inline(always)]
fn link_between(
    frames: FrameTable,
    list: &mut FreeList,
    index: FrameIndex,
    frame: &Frame,
    word: HeadWord,
    prev: FrameIndex,
    next: FrameIndex,
) {
    frame.relabel(word);
    frame.set_prev(prev);
    frame.set_next(next);
    set_neighbours(frames, list, prev, next, index, index);
    list.count += 1;
}

impl FreeArea {
    /// An empty allocator over `frames`, the records of pfns `base_pfn..` (a table laid out
    /// for that base). Every pageblock starts movable, as in Linux: kernel allocations claim
    /// pageblocks as they need them.
    pub fn new(base_pfn: u64, frames: FrameTable) -> FreeArea {
        assert!(
            frames.fits_base(base_pfn),
            "frame table laid out for another base than pfn {base_pfn:#x}"
        );
        let first_block = base_pfn >> PAGEBLOCK_ORDER;
        let last_block = (base_pfn + frames.len() as u64).div_ceil(PAGEBLOCK_PAGES);
        FreeArea {
            base_pfn,
            frames,
            lists: [[FreeList::EMPTY; MIGRATE_TYPES]; ORDERS],
            masks: [0; MIGRATE_TYPES],
            pageblock_types: Vec::leak(
                (first_block..last_block)
                    .map(|_| AtomicU8::new(MigrateType::Movable as u8))
                    .collect(),
            ),
            free_pages: 0,
            reported_pages: [0; ORDERS],
            report_wanted: false,
            report_trigger: None,
            counters: BuddyCounters::default(),
        }
    }

    #[inline]
    pub fn frame(&self, index: FrameIndex) -> &'static Frame {
        self.frames.at(index as usize)
    }

    #[inline]
    pub fn frames(&self) -> FrameTable {
        self.frames
    }

    #[inline]
    pub fn pfn(&self, index: FrameIndex) -> u64 {
        self.base_pfn + index as u64
    }

    #[inline]
    pub fn index_of(&self, pfn: u64) -> Option<FrameIndex> {
        let index = pfn.checked_sub(self.base_pfn)?;
        (index < self.frames.len() as u64).then_some(index as FrameIndex)
    }

    #[inline]
    fn pageblock_slot(&self, index: FrameIndex) -> usize {
        ((self.pfn(index) >> PAGEBLOCK_ORDER) - (self.base_pfn >> PAGEBLOCK_ORDER)) as usize
    }

    #[inline]
    pub fn pageblock_type(&self, index: FrameIndex) -> MigrateType {
        MigrateType::from_u8(self.pageblock_types[self.pageblock_slot(index)].load(Relaxed))
    }

    pub fn set_pageblock_type(&mut self, index: FrameIndex, kind: MigrateType) {
        let slot = self.pageblock_slot(index);
        self.pageblock_types[slot].store(kind as u8, Relaxed);
    }

    /// The pageblock types, for lock-free readers.
    pub fn pageblock_types(&self) -> &'static [AtomicU8] {
        self.pageblock_types
    }

    pub fn pageblock_count(&self) -> usize {
        self.pageblock_types.len()
    }

    /// The first frame index of pageblock `slot` that lies in the zone, and the end.
    pub fn pageblock_range(&self, slot: usize) -> (FrameIndex, FrameIndex) {
        let first_pfn = ((self.base_pfn >> PAGEBLOCK_ORDER) + slot as u64) << PAGEBLOCK_ORDER;
        let start = first_pfn.max(self.base_pfn) - self.base_pfn;
        let end = (first_pfn + PAGEBLOCK_PAGES - self.base_pfn).min(self.frames.len() as u64);
        (start as FrameIndex, end as FrameIndex)
    }

    /// Blocks on the list of `order` and `kind`.
    pub fn list_count(&self, order: u8, kind: MigrateType) -> u32 {
        self.lists[order as usize][kind as usize].count
    }

    /// Reported blocks on the list of `order` and `kind`, and the first of them (the boundary).
    pub fn reported_run(&self, order: u8, kind: MigrateType) -> (u32, Option<FrameIndex>) {
        let list = &self.lists[order as usize][kind as usize];
        (
            list.reported,
            (list.boundary != NONE).then_some(list.boundary),
        )
    }

    /// Pages in reported blocks of `order`.
    pub fn reported_pages(&self, order: u8) -> u64 {
        self.reported_pages[order as usize]
    }

    /// Free pages in unreported blocks of `min_order` and above (isolated lists excluded).
    pub fn unreported_pages_from(&self, min_order: u8) -> u64 {
        (min_order..=MAX_ORDER)
            .map(|order| {
                let listed: u64 = MigrateType::ALLOCATABLE
                    .iter()
                    .map(|kind| u64::from(self.list_count(order, *kind)))
                    .sum();
                (listed << order) - self.reported_pages[order as usize]
            })
            .sum()
    }

    /// Asks [`FreeArea::free`] to raise [`FreeArea::take_report_wanted`] when a free leaves at
    /// least `pages` unreported free pages in blocks of `min_order` and above.
    pub fn set_report_trigger(&mut self, trigger: Option<(u8, u64)>) {
        self.report_trigger = trigger;
    }

    /// Whether a free since the last call crossed the reporting trigger.
    pub fn take_report_wanted(&mut self) -> bool {
        core::mem::take(&mut self.report_wanted)
    }

    /// The unreported block just in front of the reported run of a list (the tail if nothing is
    /// reported): the next one for the reporting worker.
    pub fn last_unreported(&self, order: u8, kind: MigrateType) -> Option<FrameIndex> {
        let list = &self.lists[order as usize][kind as usize];
        let index = if list.boundary == NONE {
            list.tail
        } else {
            self.frame(list.boundary).prev()
        };
        (index != NONE).then_some(index)
    }

    /// The head (or tail) block of a list.
    pub fn list_end(&self, order: u8, kind: MigrateType, end: End) -> Option<FrameIndex> {
        let list = &self.lists[order as usize][kind as usize];
        let index = if end == End::Head {
            list.head
        } else {
            list.tail
        };
        (index != NONE).then_some(index)
    }

    /// Iterates a list from head to tail.
    pub fn list_iter(&self, order: u8, kind: MigrateType) -> impl Iterator<Item = FrameIndex> + '_ {
        let mut next = self.lists[order as usize][kind as usize].head;
        core::iter::from_fn(move || {
            let current = next;
            if current == NONE {
                return None;
            }
            next = self.frame(current).next();
            Some(current)
        })
    }

    /// Links a block into a list as an unreported free head: at the head, or at the tail end of
    /// the unreported blocks (just in front of the reported run).
    #[inline]
    pub fn push(&mut self, index: FrameIndex, order: u8, kind: MigrateType, end: End) {
        self.push_flagged(index, order, kind, end, FrameFlags::empty());
    }

    /// [`FreeArea::push`] with `flags` (never `REPORTED`) on the new head.
    #[inline]
    fn push_flagged(
        &mut self,
        index: FrameIndex,
        order: u8,
        kind: MigrateType,
        end: End,
        flags: FrameFlags,
    ) {
        let list = &self.lists[order as usize][kind as usize];
        let place = match end {
            End::Head => Place::Head,
            // The reported run stays whole at the tail.
            End::Tail if list.boundary != NONE => Place::Before(list.boundary),
            End::Tail => Place::Tail,
        };
        self.link(index, order, kind, place, flags);
    }

    /// Links a block that the host has just been told about at the tail of its list, in the
    /// reported run, with `flags` and `REPORTED`.
    fn push_reported(
        &mut self,
        index: FrameIndex,
        order: u8,
        kind: MigrateType,
        flags: FrameFlags,
    ) {
        self.link(
            index,
            order,
            kind,
            Place::Tail,
            flags | FrameFlags::REPORTED,
        );
        let list = &mut self.lists[order as usize][kind as usize];
        if list.boundary == NONE {
            list.boundary = index;
        }
        list.reported += 1;
        self.reported_pages[order as usize] += 1 << order;
        self.refresh(order, kind as usize);
    }

    /// Sets the bits of `order` in the masks of `kind` from its list (see
    /// [`FreeArea::masks`]).
    #[inline]
    fn refresh(&mut self, order: u8, kind: usize) {
        let list = &self.lists[order as usize][kind];
        let mut bits = 0;
        if list.head != NONE {
            bits |= NONEMPTY;
            if list.head != list.boundary {
                bits |= WARM;
            }
        }
        let mask = &mut self.masks[kind];
        *mask = *mask & !((NONEMPTY | WARM) << order) | bits << order;
    }

    /// Makes `index` a free head of `order` with `flags` and links it into its list at `place`:
    /// one store of its head word, two of its links, one of each neighbour's.
    #[inline]
    fn link(
        &mut self,
        index: FrameIndex,
        order: u8,
        kind: MigrateType,
        place: Place,
        flags: FrameFlags,
    ) {
        let frames = self.frames;
        let frame = &frames[index as usize];
        let list = &mut self.lists[order as usize][kind as usize];
        let (prev, next) = match place {
            Place::Head => (NONE, list.head),
            Place::Tail => (list.tail, NONE),
            Place::Before(at) => (frames[at as usize].prev(), at),
        };
        let word = HeadWord::new(FrameState::Free, order, kind as u8, flags);
        link_between(frames, list, index, frame, word, prev, next);
        self.free_pages += 1 << order;
        if prev == NONE {
            // A new head: the list is not empty, and its head is warm (a reported block is
            // linked at the tail, and `push_reported` sets the bits again).
            self.masks[kind as usize] |= (NONEMPTY | WARM) << order;
        }
    }

    /// Unlinks a free block from whatever list it is on; it keeps its order and is left in
    /// state `Tail` for the caller to re-label. A reported block loses its flag: it leaves the
    /// reported run, and whoever gets it next may not assume anything of its memory. Its links
    /// are left as they were (meaningless off a list).
    pub fn unlink(&mut self, index: FrameIndex) {
        let word = self.frame(index).head_word();
        self.detach(index, word);
        self.frame(index).relabel(
            word.with_state(FrameState::Tail)
                .with_flags(word.flags() - FrameFlags::REPORTED),
        );
    }

    /// Unlinks a free block for allocation: as [`FreeArea::unlink`], but its flags are all
    /// cleared (whoever gets it may assume nothing of its memory), in the same store.
    #[inline(always)]
    fn take(&mut self, index: FrameIndex) {
        let word = self.frame(index).head_word();
        self.detach(index, word);
        self.frame(index).relabel(
            word.with_state(FrameState::Tail)
                .with_flags(FrameFlags::empty()),
        );
    }

    /// Takes the free block at `index`, whose head word is `word`, off its list, and out of
    /// the counts; its record is left as it was, for the caller to write.
    #[inline(always)]
    fn detach(&mut self, index: FrameIndex, word: HeadWord) {
        self.unlist(self.frames, index, word);
        self.free_pages -= 1 << word.order();
    }

    /// [`FreeArea::detach`] but for the free page count, which the caller keeps.
    /// `frames` is this area's records (passed in so that a caller's loop keeps them in a
    /// register).
    #[inline(always)]
    fn unlist(&mut self, frames: FrameTable, index: FrameIndex, word: HeadWord) {
        debug_assert_eq!(word.state(), FrameState::Free);
        let (order, kind) = (word.order(), word.list());
        let frame = &frames[index as usize];
        let (prev, next) = (frame.prev(), frame.next());
        let list = &mut self.lists[order as usize][kind as usize];
        if word.flags().contains(FrameFlags::REPORTED) {
            if list.boundary == index {
                list.boundary = next;
            }
            list.reported -= 1;
            self.reported_pages[order as usize] -= 1 << order;
        }
        set_neighbours(frames, list, prev, next, next, prev);
        list.count -= 1;
        if prev == NONE {
            // Only a new head changes the masks (a boundary that moves past a block with a
            // predecessor leaves the head as it was, warm).
            let mut bits = 0;
            if next != NONE {
                bits |= NONEMPTY;
                if next != list.boundary {
                    bits |= WARM;
                }
            }
            let mask = &mut self.masks[kind as usize];
            *mask = *mask & !((NONEMPTY | WARM) << order) | bits << order;
        }
    }

    /// Adds the free frames `[start, end)` as the largest naturally aligned blocks that fit
    /// (boot and deferred initialisation). Their frames other than the heads must already be
    /// tails, and no neighbouring free block may be a buddy of one of them.
    pub fn add_free_run(&mut self, start: FrameIndex, end: FrameIndex) {
        let mut index = start;
        while index < end {
            let mut order = (self.pfn(index).trailing_zeros() as u8).min(MAX_ORDER);
            while index as u64 + (1 << order) > end as u64 {
                order -= 1;
            }
            self.add_initial_block(index, order);
            index += 1 << order;
        }
    }

    /// Adds a naturally aligned block that is known not to have a free buddy (boot time).
    pub fn add_initial_block(&mut self, index: FrameIndex, order: u8) {
        let kind = self.pageblock_type(index);
        self.push(index, order, kind, End::Tail);
    }

    /// Frees a block, merging it with free buddies; returns the merged block. The block's
    /// frames must be tails except its head (as allocation left them).
    #[inline(always)]
    pub fn free(&mut self, index: FrameIndex, order: u8) -> Block {
        let first_order = order;
        let (mut index, mut order) = (index, order);
        let (frames, base_pfn) = (self.frames, self.base_pfn);
        let zone_frames = frames.len() as u64;
        // What to write into `index`'s record should it become the upper half of a merge:
        // read when needed for the caller's head, known for a merged buddy.
        let mut index_word: Option<HeadWord> = None;
        while order < MAX_ORDER {
            let size = 1u64 << order;
            let buddy = ((base_pfn + index as u64) ^ size).wrapping_sub(base_pfn);
            // The whole buddy block must lie in the zone (below the base, `buddy` wrapped
            // around to a huge number).
            if buddy >= zone_frames || zone_frames - buddy < size {
                break;
            }
            let buddy = buddy as FrameIndex;
            let buddy_word = frames[buddy as usize].head_word();
            if !buddy_word.is(FrameState::Free, order) {
                break;
            }
            if order >= PAGEBLOCK_ORDER
                && (self.pageblock_type(index) == MigrateType::Isolate)
                    != (self.pageblock_type(buddy) == MigrateType::Isolate)
            {
                break;
            }
            // The free page count and merge counter are settled once, after the loop.
            self.unlist(frames, buddy, buddy_word);
            // The buddy leaves its list as `unlink` leaves a block: a tail, unflagged.
            let buddy_tail = buddy_word
                .with_state(FrameState::Tail)
                .with_flags(buddy_word.flags() - FrameFlags::REPORTED);
            if buddy < index {
                let upper = index_word.unwrap_or_else(|| {
                    frames[index as usize]
                        .head_word()
                        .with_state(FrameState::Tail)
                });
                frames[index as usize].relabel(upper);
                // The buddy's record still says free: the final push (or its own turn as the
                // upper half) writes it.
                index_word = Some(buddy_tail);
                index = buddy;
            } else {
                frames[buddy as usize].relabel(buddy_tail);
            }
            order += 1;
        }
        // The buddies taken off the lists held every page of the block but the freed ones.
        self.free_pages -= (1 << order) - (1 << first_order);
        self.counters.merges += u64::from(order - first_order);
        let kind = self.pageblock_type(index);
        self.push(index, order, kind, End::Head);
        if let Some((min_order, pages)) = self.report_trigger
            && order >= min_order
            && kind != MigrateType::Isolate
            && self.unreported_pages_from(min_order) >= pages
        {
            self.report_wanted = true;
        }
        Block { index, order }
    }

    /// Splits the free block at `index` (already unlinked) of order `from` down to `to`, putting
    /// the upper halves back on `kind`'s lists; the lower block of order `to` is the caller's.
    /// Each upper half is pushed at the head of its list, as [`FreeArea::push`] would; the
    /// counts and masks, the same for every half, are written once.
    #[inline(always)]
    fn split(&mut self, index: FrameIndex, from: u8, to: u8, kind: MigrateType) {
        if from == to {
            return;
        }
        let frames = self.frames;
        let mut order = from;
        while order > to {
            order -= 1;
            let upper = index + (1 << order);
            let list = &mut self.lists[order as usize][kind as usize];
            let word = HeadWord::new(FrameState::Free, order, kind as u8, FrameFlags::empty());
            let (frame, next) = (&frames[upper as usize], list.head);
            link_between(frames, list, upper, frame, word, NONE, next);
        }
        // The halves hold 2^to + .. + 2^(from - 1) pages; the same bits are the orders whose
        // lists now have a (warm) head.
        let halves = (1u32 << from) - (1u32 << to);
        self.masks[kind as usize] |= halves * (NONEMPTY | WARM);
        self.free_pages += u64::from(halves);
        self.counters.splits += u64::from(from - to);
    }

    /// Takes a block of `order` from `kind`'s own lists, smallest order first, and warm memory
    /// before cold: an unreported block of any order before a reported one (whose pages the
    /// host must fault in again).
    #[inline(always)]
    fn take_smallest(&mut self, order: u8, kind: MigrateType) -> Option<FrameIndex> {
        self.take_smallest_up_to(order, order, kind)
            .map(|(index, _)| index)
    }

    /// The order whose list `take_smallest` takes from: the smallest with a block, unless
    /// that list holds only reported blocks and a higher one has a warm block. Two masks, no
    /// list walk.
    #[inline]
    fn warmest_order(&self, order: u8, kind: MigrateType) -> Option<u8> {
        let mask = self.masks[kind as usize];
        let nonempty = mask as u16 & (!0u16 << order);
        if nonempty == 0 {
            return None;
        }
        let first = nonempty.trailing_zeros() as u8;
        let warm = (mask >> 16) as u16 & (!0u16 << first);
        // The smallest block there is, if it is warm; else a warm block of a higher order;
        // else the smallest (reported) one.
        Some(if warm == 0 {
            first
        } else {
            warm.trailing_zeros() as u8
        })
    }

    /// Moves every free block inside pageblock `slot` to `kind`'s lists; returns the free pages
    /// it holds.
    fn move_pageblock_free_blocks(&mut self, slot: usize, kind: MigrateType) -> u64 {
        let (start, end) = self.pageblock_range(slot);
        let mut index = start;
        let mut moved = 0;
        while index < end {
            let frame = self.frame(index);
            match frame.state() {
                FrameState::Free => {
                    let order = frame.order();
                    let flags = frame.flags() - FrameFlags::REPORTED;
                    if frame.list() != kind as u8 {
                        self.unlink(index);
                        self.push_flagged(index, order, kind, End::Head, flags);
                    }
                    moved += 1 << order;
                    index += 1 << order;
                }
                FrameState::Allocated | FrameState::Isolated => index += 1 << frame.order(),
                _ => index += 1,
            }
        }
        moved
    }

    /// Allocation from another migratetype's lists: takes the largest block available (so that
    /// whole pageblocks move to the new type, as Linux), claiming its pageblock where the rules
    /// allow, then allocates normally.
    fn take_fallback(&mut self, order: u8, kind: MigrateType) -> Option<FrameIndex> {
        // The largest order with a block on either fallback list, the first fallback's first.
        let [first, second] = kind.fallbacks();
        let (in_first, in_second) = (
            self.masks[first as usize] as u16,
            self.masks[second as usize] as u16,
        );
        let either = (in_first | in_second) & (!0u16 << order);
        if either == 0 {
            return None;
        }
        let current = (15 - either.leading_zeros()) as u8;
        let other = if in_first & 1 << current != 0 {
            first
        } else {
            second
        };
        {
            {
                let index = self.lists[current as usize][other as usize].head;
                self.counters.fallbacks += 1;
                let claim_whole = current >= PAGEBLOCK_ORDER / 2 || kind != MigrateType::Movable;
                if current >= PAGEBLOCK_ORDER {
                    // The block spans whole pageblocks: they all become `kind`.
                    for offset in (0..(1u32 << current)).step_by(PAGEBLOCK_PAGES as usize) {
                        self.set_pageblock_type(index + offset, kind);
                    }
                    self.counters.pageblocks_stolen += 1 << (current - PAGEBLOCK_ORDER);
                    let flags = self.frame(index).flags() - FrameFlags::REPORTED;
                    self.unlink(index);
                    self.push_flagged(index, current, kind, End::Head, flags);
                } else if claim_whole {
                    let slot = self.pageblock_slot(index);
                    let free = self.move_pageblock_free_blocks(slot, kind);
                    if free >= PAGEBLOCK_PAGES / 2 {
                        self.pageblock_types[slot].store(kind as u8, Relaxed);
                        self.counters.pageblocks_stolen += 1;
                    }
                } else {
                    // A small movable request takes the block without claiming the pageblock.
                    self.take(index);
                    self.split(index, current, order, other);
                    return Some(index);
                }
                self.take_smallest(order, kind)
            }
        }
    }

    /// Allocates a block of `order` for `kind`: own lists first, then fallback. The block's head
    /// is left for the caller to label (a tail without flags).
    #[cfg_attr(target_os = "none", unsafe(link_section = ".text.hot.zone"))]
    pub fn allocate(&mut self, order: u8, kind: MigrateType) -> Option<FrameIndex> {
        let index = self
            .take_smallest(order, kind)
            .or_else(|| self.take_fallback(order, kind))?;
        Some(index)
    }

    /// Takes the free block whose head is `index` off its list and splits it into allocated
    /// order-0 pages owned by `owner`, each with one reference (compaction's targets: the free
    /// scanner takes free memory where it finds it, not the smallest block). Returns the block's
    /// order and whether it had been reported to the host (its memory comes back from the host
    /// on first touch), or `None` if `index` is not a free head.
    pub fn claim_free_block(&mut self, index: FrameIndex, owner: u8) -> Option<(u8, bool)> {
        let frame = self.frame(index);
        if frame.state() != FrameState::Free {
            return None;
        }
        let order = frame.order();
        let reported = frame.flags().contains(FrameFlags::REPORTED);
        self.unlink(index);
        for page in index..index + (1 << order) {
            let frame = self.frame(page);
            frame.make_head(FrameState::Allocated, 0, owner);
            frame
                .refcount
                .store(1, core::sync::atomic::Ordering::Relaxed);
        }
        Some((order, reported))
    }

    /// Takes the free block whose head is `index` off its list: it becomes isolated, neither
    /// allocatable nor mergeable, until [`FreeArea::put_back_isolated`].
    pub fn isolate(&mut self, index: FrameIndex) -> Option<u8> {
        let frame = self.frame(index);
        if frame.state() != FrameState::Free {
            return None;
        }
        let word = frame.head_word();
        // Unlinking clears a reported block's flag: isolated blocks are never reported.
        self.detach(index, word);
        frame.relabel(
            word.with_state(FrameState::Isolated)
                .with_flags(word.flags() - FrameFlags::REPORTED),
        );
        frame.set_next(NONE);
        frame.set_prev(NONE);
        Some(word.order())
    }

    /// Returns an isolated block to the lists, at `end`, merging with free buddies. With
    /// `REPORTED` in `flags` (the host has just been told about it) a block that did not merge
    /// joins the reported run at the tail; a merged block is new memory, unreported.
    pub fn put_back_isolated(&mut self, index: FrameIndex, end: End, flags: FrameFlags) -> Block {
        let frame = self.frame(index);
        debug_assert_eq!(frame.state(), FrameState::Isolated);
        let word = frame.head_word();
        let order = word.order();
        // In transit, under the zone lock: the word is ours.
        frame.relabel(word.with_state(FrameState::Tail));
        let trigger = self.report_trigger.take();
        let block = self.free(index, order);
        self.report_trigger = trigger;
        if block.index == index && block.order == order {
            // Not merged: it can keep its flags, and go where the caller wants it.
            let kind = MigrateType::from_u8(self.frame(index).list());
            self.unlink(index);
            // An isolated pageblock's list keeps no reported run (its blocks are counted
            // nowhere reporting looks): the block goes back unreported.
            if flags.contains(FrameFlags::REPORTED) && kind != MigrateType::Isolate {
                self.push_reported(index, order, kind, flags);
            } else {
                self.push_flagged(index, order, kind, end, flags - FrameFlags::REPORTED);
            }
        }
        block
    }
}

// ---- Batches: whole blocks in and out, no per-page list work -------------------------------

impl FreeArea {
    /// Takes up to `count` blocks of `order` for `kind` in one go, calling `take` with each
    /// one's head index and record (for the caller to label; the other frames are tails).
    /// Blocks come from the smallest free blocks first, as single allocations would (fragments
    /// before whole blocks, warm before reported), but each free block is taken off its list
    /// once and cut into blocks of `order` in place: a batch of 32 pages from a free 2 MiB block
    /// unlinks one block and pushes the unused halves, instead of one list operation per page.
    /// When `kind`'s own lists run dry it falls back like [`FreeArea::allocate`] (stealing
    /// pageblocks). Stops early if `keep` free pages would not be left. Returns the blocks
    /// taken.
    #[cfg_attr(target_os = "none", unsafe(link_section = ".text.hot.bulk_alloc"))]
    pub fn allocate_batch(
        &mut self,
        order: u8,
        kind: MigrateType,
        count: usize,
        keep: u64,
        mut take: impl FnMut(FrameIndex, &'static Frame),
    ) -> usize {
        let mut taken = 0;
        while taken < count && self.free_pages >= keep + (1 << order) {
            let affordable = ((self.free_pages - keep) >> order) as usize;
            let wanted = (count - taken).min(affordable);
            // The largest block whose every block of `order` we can use.
            let fit = (order + wanted.ilog2() as u8).min(MAX_ORDER);
            let (index, got) = match self.take_smallest_up_to(order, fit, kind) {
                Some(found) => found,
                None => match self.take_fallback(order, kind) {
                    Some(index) => (index, order),
                    None => break,
                },
            };
            let (step, end) = (1usize << order, index as usize + (1 << got));
            if order >= PAGEBLOCK_ORDER {
                // At most one head per pageblock: each found directly.
                for head in (index as usize..end).step_by(step) {
                    take(head as FrameIndex, self.frames.at(head));
                }
            } else {
                // Many heads per pageblock: run by contiguous run of records (no index
                // arithmetic per block).
                let (mut at, mut offset) = (index as usize, 0);
                for run in self.frames.sub(at..end).runs() {
                    while let Some(head) = run.get(offset) {
                        take((at + offset) as FrameIndex, head);
                        offset += step;
                    }
                    // A block of more than a run starts in a later one.
                    offset -= run.len();
                    at += run.len();
                }
            }
            taken += 1 << (got - order);
        }
        taken
    }

    /// Like `take_smallest`, but a block of any order from `order` up to `fit` is taken whole
    /// (a larger one is split down to `fit`). Returns its head and order.
    #[inline(always)]
    fn take_smallest_up_to(
        &mut self,
        order: u8,
        fit: u8,
        kind: MigrateType,
    ) -> Option<(FrameIndex, u8)> {
        let current = self.warmest_order(order, kind)?;
        let index = self.lists[current as usize][kind as usize].head;
        self.take(index);
        let got = current.min(fit);
        self.split(index, current, got, kind);
        Some((index, got))
    }

    /// Frees a batch of blocks, given as (head, order), each head already in state `Tail` (as
    /// for [`FreeArea::free`]). Runs of adjacent blocks of one order, one after the other in
    /// ascending order (as a batch allocation hands them out, or sorted), are freed as the
    /// largest naturally aligned blocks they form, so pages that were one block go back with
    /// one free (and its merges) instead of one per page.
    #[cfg_attr(target_os = "none", unsafe(link_section = ".text.hot.bulk_free"))]
    pub fn free_batch(&mut self, blocks: impl IntoIterator<Item = (FrameIndex, u8)>) {
        // The pending run: its first head, its pages and the order of its blocks.
        let mut run: Option<(FrameIndex, u64, u8)> = None;
        for (index, order) in blocks {
            match &mut run {
                Some((start, pages, run_order))
                    if *run_order == order && index as u64 == *start as u64 + *pages =>
                {
                    *pages += 1 << order;
                }
                _ => {
                    if let Some((start, pages, _)) = run {
                        self.free_run(start, pages);
                    }
                    run = Some((index, 1 << order, order));
                }
            }
        }
        if let Some((start, pages, _)) = run {
            self.free_run(start, pages);
        }
    }

    /// Frees `pages` pages from `index` (every frame a tail) as the largest aligned blocks.
    #[cfg_attr(target_os = "none", unsafe(link_section = ".text.hot.bulk_free"))]
    fn free_run(&mut self, mut index: FrameIndex, mut pages: u64) {
        while pages > 0 {
            let block = (self.pfn(index).trailing_zeros() as u8)
                .min(pages.ilog2() as u8)
                .min(MAX_ORDER);
            self.free(index, block);
            index += 1 << block;
            pages -= 1 << block;
        }
    }
}
