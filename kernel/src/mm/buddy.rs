//! The buddy allocator of one zone: free lists per order and migratetype, a migratetype per
//! 2 MiB pageblock, splitting, merging, fallback that steals whole pageblocks, and isolation.
//!
//! Owns a zone's [`FreeArea`]: the free lists and the list fields of the zone's frame records.
//! It is always used under the zone's lock ([`super::zone::Zone`]); nothing else touches the
//! lists. Free lists are intrusive doubly linked lists through the frame records; blocks can be
//! inserted and taken at either end, and removed from the middle, all in O(1).

use super::frame::{Frame, FrameFlags, FrameIndex, FrameState, NONE};
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
}

impl FreeList {
    const EMPTY: FreeList = FreeList {
        head: NONE,
        tail: NONE,
        count: 0,
    };
}

/// Which end of a free list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Head,
    Tail,
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

    /// Links a block into a list as a free head.
    pub fn push(&mut self, index: FrameIndex, order: u8, kind: MigrateType, end: End) {
        let frame = self.frame(index);
        frame.make_head(FrameState::Free, order, kind as u8);
        let list = &mut self.lists[order as usize][kind as usize];
        match end {
            End::Head => {
                frame.set_next(list.head);
                if list.head != NONE {
                    self.frames[list.head as usize].set_prev(index);
                } else {
                    list.tail = index;
                }
                list.head = index;
            }
            End::Tail => {
                frame.set_prev(list.tail);
                if list.tail != NONE {
                    self.frames[list.tail as usize].set_next(index);
                } else {
                    list.head = index;
                }
                list.tail = index;
            }
        }
        list.count += 1;
        self.free_pages += 1 << order;
    }

    /// Unlinks a free block from whatever list it is on; it keeps its order and flags and is
    /// left in state `Tail` for the caller to re-label.
    pub fn unlink(&mut self, index: FrameIndex) {
        let frame = self.frame(index);
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

    /// Takes a block of `order` from `kind`'s own lists, smallest order first, unreported
    /// blocks (at the head) before reported ones.
    fn take_smallest(&mut self, order: u8, kind: MigrateType) -> Option<FrameIndex> {
        for current in order..=MAX_ORDER {
            if let Some(index) = self.list_end(current, kind, End::Head) {
                self.unlink(index);
                self.split(index, current, order, kind);
                return Some(index);
            }
        }
        None
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
                    let flags = frame.flags();
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
                    let flags = self.frame(index).flags();
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

    /// Takes the free block whose head is `index` off its list: it becomes isolated, neither
    /// allocatable nor mergeable, until [`FreeArea::put_back_isolated`].
    pub fn isolate(&mut self, index: FrameIndex) -> Option<u8> {
        let frame = self.frame(index);
        if frame.state() != FrameState::Free {
            return None;
        }
        let (order, kind, flags) = (frame.order(), frame.list(), frame.flags());
        self.unlink(index);
        frame.make_head(FrameState::Isolated, order, kind);
        frame.set_flags(flags);
        Some(order)
    }

    /// Returns an isolated block to the lists, at `end`, merging with free buddies.
    pub fn put_back_isolated(&mut self, index: FrameIndex, end: End, flags: FrameFlags) -> Block {
        let frame = self.frame(index);
        debug_assert_eq!(frame.state(), FrameState::Isolated);
        let order = frame.order();
        frame.set_state(FrameState::Tail);
        let block = self.free(index, order);
        if block.index == index && block.order == order {
            // Not merged: it can keep its flags, and go where the caller wants it.
            let kind = MigrateType::from_u8(self.frame(index).list());
            self.unlink(index);
            self.push(index, order, kind, end);
            self.frame(index).set_flags(flags);
        }
        block
    }
}
