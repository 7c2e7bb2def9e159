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

use crate::frame::{Frame, FrameFlags, FrameIndex, FrameState, NONE};
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

    pub fn from_u8(value: u8) -> MigrateType {
        MigrateType::ALL
            .get(value as usize)
            .copied()
            .unwrap_or(MigrateType::Movable)
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

pub struct FreeArea {
    base_pfn: u64,
    frames: &'static [Frame],
    lists: [[FreeList; MIGRATE_TYPES]; ORDERS],
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

impl FreeArea {
    /// An empty allocator over `frames`, the records of pfns `base_pfn..`. Every pageblock starts
    /// movable, as in Linux: kernel allocations claim pageblocks as they need them.
    pub fn new(base_pfn: u64, frames: &'static [Frame]) -> FreeArea {
        let first_block = base_pfn >> PAGEBLOCK_ORDER;
        let last_block = (base_pfn + frames.len() as u64).div_ceil(PAGEBLOCK_PAGES);
        FreeArea {
            base_pfn,
            frames,
            lists: [[FreeList::EMPTY; MIGRATE_TYPES]; ORDERS],
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

    pub fn frame(&self, index: FrameIndex) -> &'static Frame {
        &self.frames[index as usize]
    }

    pub fn frames(&self) -> &'static [Frame] {
        self.frames
    }

    pub fn pfn(&self, index: FrameIndex) -> u64 {
        self.base_pfn + index as u64
    }

    pub fn index_of(&self, pfn: u64) -> Option<FrameIndex> {
        let index = pfn.checked_sub(self.base_pfn)?;
        (index < self.frames.len() as u64).then_some(index as FrameIndex)
    }

    fn pageblock_slot(&self, index: FrameIndex) -> usize {
        ((self.pfn(index) >> PAGEBLOCK_ORDER) - (self.base_pfn >> PAGEBLOCK_ORDER)) as usize
    }

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
    pub fn push(&mut self, index: FrameIndex, order: u8, kind: MigrateType, end: End) {
        let list = &self.lists[order as usize][kind as usize];
        let place = match end {
            End::Head => Place::Head,
            // The reported run stays whole at the tail.
            End::Tail if list.boundary != NONE => Place::Before(list.boundary),
            End::Tail => Place::Tail,
        };
        self.link(index, order, kind, place);
    }

    /// Links a block that the host has just been told about at the tail of its list, in the
    /// reported run, flagged `REPORTED`.
    fn push_reported(&mut self, index: FrameIndex, order: u8, kind: MigrateType) {
        self.link(index, order, kind, Place::Tail);
        self.frame(index).set_flags(FrameFlags::REPORTED);
        let list = &mut self.lists[order as usize][kind as usize];
        if list.boundary == NONE {
            list.boundary = index;
        }
        list.reported += 1;
        self.reported_pages[order as usize] += 1 << order;
    }

    /// Makes `index` a free head of `order` and links it into its list at `place`.
    fn link(&mut self, index: FrameIndex, order: u8, kind: MigrateType, place: Place) {
        let frame = self.frame(index);
        frame.make_head(FrameState::Free, order, kind as u8);
        let list = &mut self.lists[order as usize][kind as usize];
        let (prev, next) = match place {
            Place::Head => (NONE, list.head),
            Place::Tail => (list.tail, NONE),
            Place::Before(at) => (self.frames[at as usize].prev(), at),
        };
        frame.set_prev(prev);
        frame.set_next(next);
        if prev != NONE {
            self.frames[prev as usize].set_next(index);
        } else {
            list.head = index;
        }
        if next != NONE {
            self.frames[next as usize].set_prev(index);
        } else {
            list.tail = index;
        }
        list.count += 1;
        self.free_pages += 1 << order;
    }

    /// Unlinks a free block from whatever list it is on; it keeps its order and is left in
    /// state `Tail` for the caller to re-label. A reported block loses its flag: it leaves the
    /// reported run, and whoever gets it next may not assume anything of its memory.
    pub fn unlink(&mut self, index: FrameIndex) {
        let frame = self.frame(index);
        if frame.flags().contains(FrameFlags::REPORTED) {
            let (order, kind) = (frame.order(), frame.list());
            let list = &mut self.lists[order as usize][kind as usize];
            if list.boundary == index {
                list.boundary = frame.next();
            }
            list.reported -= 1;
            self.reported_pages[order as usize] -= 1 << order;
            frame.set_flags(frame.flags() - FrameFlags::REPORTED);
        }
        debug_assert_eq!(frame.state(), FrameState::Free);
        let (order, kind) = (frame.order(), frame.list());
        let list = &mut self.lists[order as usize][kind as usize];
        let (prev, next) = (frame.prev(), frame.next());
        if prev != NONE {
            self.frames[prev as usize].set_next(next);
        } else {
            list.head = next;
        }
        if next != NONE {
            self.frames[next as usize].set_prev(prev);
        } else {
            list.tail = prev;
        }
        list.count -= 1;
        self.free_pages -= 1 << order;
        frame.set_next(NONE);
        frame.set_prev(NONE);
        frame.set_state(FrameState::Tail);
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
    pub fn free(&mut self, index: FrameIndex, order: u8) -> Block {
        let (mut index, mut order) = (index, order);
        let isolated =
            |area: &FreeArea, at: FrameIndex| area.pageblock_type(at) == MigrateType::Isolate;
        while order < MAX_ORDER {
            let pfn = self.pfn(index);
            let buddy_pfn = pfn ^ (1 << order);
            let Some(buddy) = self.index_of(buddy_pfn) else {
                break;
            };
            // The whole buddy block must lie in the zone.
            if self.index_of(buddy_pfn + (1 << order) - 1).is_none() {
                break;
            }
            let buddy_frame = self.frame(buddy);
            if buddy_frame.state() != FrameState::Free || buddy_frame.order() != order {
                break;
            }
            if order >= PAGEBLOCK_ORDER && isolated(self, index) != isolated(self, buddy) {
                break;
            }
            self.unlink(buddy);
            self.counters.merges += 1;
            let (low, high) = if buddy < index {
                (buddy, index)
            } else {
                (index, buddy)
            };
            self.frame(high).set_state(FrameState::Tail);
            index = low;
            order += 1;
        }
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
    fn split(&mut self, index: FrameIndex, from: u8, to: u8, kind: MigrateType) {
        let mut order = from;
        while order > to {
            order -= 1;
            self.push(index + (1 << order), order, kind, End::Head);
            self.counters.splits += 1;
        }
    }

    /// Takes a block of `order` from `kind`'s own lists, smallest order first, and warm memory
    /// before cold: an unreported block of any order before a reported one (whose pages the
    /// host must fault in again).
    fn take_smallest(&mut self, order: u8, kind: MigrateType) -> Option<FrameIndex> {
        self.take_smallest_up_to(order, order, kind)
            .map(|(index, _)| index)
    }

    /// The order whose list `take_smallest` takes from: the smallest with a block, unless
    /// that list holds only reported blocks and a higher one has a warm block.
    fn warmest_order(&self, order: u8, kind: MigrateType) -> Option<u8> {
        let lists = &self.lists;
        let first = (order..=MAX_ORDER)
            .find(|current| lists[*current as usize][kind as usize].head != NONE)?;
        let list = &lists[first as usize][kind as usize];
        // The common case: the smallest block there is, is warm.
        if list.head != list.boundary {
            return Some(first);
        }
        // Only reported blocks at that order: a warm block of a higher order, if any.
        Some(
            (first + 1..=MAX_ORDER)
                .find(|higher| {
                    let list = &lists[*higher as usize][kind as usize];
                    list.head != NONE && list.head != list.boundary
                })
                .unwrap_or(first),
        )
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
                        self.push(index, order, kind, End::Head);
                        self.frame(index).set_flags(flags);
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
        for current in (order..=MAX_ORDER).rev() {
            for other in kind.fallbacks() {
                let Some(index) = self.list_end(current, other, End::Head) else {
                    continue;
                };
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
                    self.push(index, current, kind, End::Head);
                    self.frame(index).set_flags(flags);
                } else if claim_whole {
                    let slot = self.pageblock_slot(index);
                    let free = self.move_pageblock_free_blocks(slot, kind);
                    if free >= PAGEBLOCK_PAGES / 2 {
                        self.pageblock_types[slot].store(kind as u8, Relaxed);
                        self.counters.pageblocks_stolen += 1;
                    }
                } else {
                    // A small movable request takes the block without claiming the pageblock.
                    self.unlink(index);
                    self.split(index, current, order, other);
                    return Some(index);
                }
                return self.take_smallest(order, kind);
            }
        }
        None
    }

    /// Allocates a block of `order` for `kind`: own lists first, then fallback. The block's head
    /// is left for the caller to label.
    pub fn allocate(&mut self, order: u8, kind: MigrateType) -> Option<FrameIndex> {
        let index = self
            .take_smallest(order, kind)
            .or_else(|| self.take_fallback(order, kind))?;
        self.frame(index).set_flags(FrameFlags::empty());
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
        let (order, kind) = (frame.order(), frame.list());
        // Unlinking clears a reported block's flag: isolated blocks are never reported.
        self.unlink(index);
        let flags = frame.flags();
        frame.make_head(FrameState::Isolated, order, kind);
        frame.set_flags(flags);
        Some(order)
    }

    /// Returns an isolated block to the lists, at `end`, merging with free buddies. With
    /// `REPORTED` in `flags` (the host has just been told about it) a block that did not merge
    /// joins the reported run at the tail; a merged block is new memory, unreported.
    pub fn put_back_isolated(&mut self, index: FrameIndex, end: End, flags: FrameFlags) -> Block {
        let frame = self.frame(index);
        debug_assert_eq!(frame.state(), FrameState::Isolated);
        let order = frame.order();
        frame.set_state(FrameState::Tail);
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
                self.push_reported(index, order, kind);
                self.frame(index).set_flags(flags | FrameFlags::REPORTED);
            } else {
                self.push(index, order, kind, end);
                self.frame(index).set_flags(flags - FrameFlags::REPORTED);
            }
        }
        block
    }
}

// ---- Batches: whole blocks in and out, no per-page list work -------------------------------

impl FreeArea {
    /// Takes up to `count` blocks of `order` for `kind` in one go, calling `take` with each
    /// one's head index (for the caller to label; the other frames are tails). Blocks come from
    /// the smallest free blocks first, as single allocations would (fragments before whole
    /// blocks, warm before reported), but each free block is taken off its list once and cut
    /// into blocks of `order` in place: a batch of 32 pages from a free 2 MiB block unlinks one
    /// block and pushes the unused halves, instead of one list operation per page. When `kind`'s
    /// own lists run dry it falls back like [`FreeArea::allocate`] (stealing pageblocks).
    /// Stops early if `keep` free pages would not be left. Returns the blocks taken.
    pub fn allocate_batch(
        &mut self,
        order: u8,
        kind: MigrateType,
        count: usize,
        keep: u64,
        mut take: impl FnMut(FrameIndex),
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
            self.frame(index).set_flags(FrameFlags::empty());
            for block in 0..1u32 << (got - order) {
                take(index + (block << order));
            }
            taken += 1 << (got - order);
        }
        taken
    }

    /// Like `take_smallest`, but a block of any order from `order` up to `fit` is taken whole
    /// (a larger one is split down to `fit`). Returns its head and order.
    fn take_smallest_up_to(
        &mut self,
        order: u8,
        fit: u8,
        kind: MigrateType,
    ) -> Option<(FrameIndex, u8)> {
        let current = self.warmest_order(order, kind)?;
        let index = self.lists[current as usize][kind as usize].head;
        self.unlink(index);
        let got = current.min(fit);
        self.split(index, current, got, kind);
        Some((index, got))
    }

    /// Frees a batch of blocks, given as (head, order), each head already in state `Tail` (as
    /// for [`FreeArea::free`]). Runs of adjacent blocks of one order, one after the other in
    /// ascending order (as a batch allocation hands them out, or sorted), are freed as the
    /// largest naturally aligned blocks they form, so pages that were one block go back with
    /// one free (and its merges) instead of one per page.
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
