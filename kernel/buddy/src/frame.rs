//! The page-frame database: one 32-byte record per 4 KiB frame of RAM, per zone.
//!
//! Owns the records' layout and the one place where raw memory becomes the database. Every
//! field is atomic, so a record can be read and written through a shared reference from any
//! context without `unsafe`; which code may write which field is a protocol, not a lock:
//! - the head word (`state`, `order`, `list`, `flags`) and `next`, `prev`: the zone's
//!   allocator, under its lock (and the per-CPU cache for the frames it holds); of an allocated
//!   head, also its owner, a freeing thread and compaction, each with an atomic
//!   read-modify-write of the word (see [`Frame`]);
//! - `refcount`, `mapcount`, `rmap`: the owner of an allocated frame (user spaces, KSM).
//!
//! Only the head frame of a block describes it: the other frames of a free or allocated block
//! of order > 0 are in state [`FrameState::Tail`]. That keeps allocation and freeing O(1) in
//! the size of the block; the state checker proves every tail is covered by its head.
//!
//! ## Layout: a cache line of padding after every pageblock
//!
//! A zone's records are a [`FrameTable`], indexed by frame index (pfn - the zone's base pfn)
//! like the plain slice it replaces, but laid out with one unused 64-byte cache line
//! ([`PAD_RECORDS`] records) after every pageblock's 512 records (runs aligned to absolute pfn
//! multiples of 512): index `i` is at slot `i + 2 * ((i + skew) >> 9)`, `skew` = base pfn mod
//! 512. Without the padding, the heads of 2 MiB blocks (pageblocks, order-9 and order-10
//! blocks) would be exactly 16 KiB apart, a power-of-two stride: QEMU TCG's software TLB is
//! direct-mapped (512 entries, indexed by page number), so 256 such heads all missed it (81.5
//! ns per access, against 3.9 ns at a 12 or 20 KiB stride, measured in the guest), and natively
//! they all fall in the same L1 cache set. With it the heads are 16,448 bytes apart: 4 pages
//! and a line, so consecutive heads take different TLB entries and cache sets. It costs 1/256
//! of the database (64 bytes per 2 MiB) and, per access, an add, a shift and a `lea`. The
//! padding is never read as a frame ([`init_records`] writes it reserved all the same).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Index of a frame inside its zone's database (list links use it; `NONE` ends a list).
pub type FrameIndex = u32;
pub const NONE: FrameIndex = u32::MAX;

/// The one state a frame is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameState {
    /// Never allocatable: firmware, the kernel image, the frame database.
    Reserved = 0,
    /// Head of a free block on a buddy free list.
    Free = 1,
    /// Part of a block whose head is elsewhere.
    Tail = 2,
    /// A free order-0 page held in a per-CPU cache.
    Cached = 3,
    /// Head of a free block taken off the lists (being reported to the host or migrated).
    Isolated = 4,
    /// Head of an allocated block; `list` holds its owner.
    Allocated = 5,
}

impl FrameState {
    #[inline]
    fn from_u8(value: u8) -> FrameState {
        match value {
            1 => FrameState::Free,
            2 => FrameState::Tail,
            3 => FrameState::Cached,
            4 => FrameState::Isolated,
            5 => FrameState::Allocated,
            _ => FrameState::Reserved,
        }
    }
}

/// Who holds an allocated block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Owner {
    Kernel = 0,
    PageTable = 1,
    Heap = 2,
    UserAnon = 3,
    KsmShared = 4,
    Balloon = 5,
    Stack = 6,
    /// Device memory: virtqueues and driver buffers.
    Device = 7,
}

impl Owner {
    pub const ALL: [Owner; 8] = [
        Owner::Kernel,
        Owner::PageTable,
        Owner::Heap,
        Owner::UserAnon,
        Owner::KsmShared,
        Owner::Balloon,
        Owner::Stack,
        Owner::Device,
    ];

    pub fn from_u8(value: u8) -> Owner {
        Owner::ALL
            .get(value as usize)
            .copied()
            .unwrap_or(Owner::Kernel)
    }
}

bitflags::bitflags! {
    /// Flags of a head frame.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FrameFlags: u8 {
        /// A free block whose memory the host has been told it may discard.
        const REPORTED = 1 << 0;
        /// The block's contents are known to be zero.
        const ZEROED = 1 << 1;
        /// An allocated user page that compaction has taken a reference to and is moving (see
        /// `mm::migrate`): it is never picked twice, and the checkers expect the extra reference.
        const MIGRATING = 1 << 2;
    }
}

/// One frame's record. 32 bytes: 4 of head word (state, order, list, flags), 8 of list links,
/// 8 of counts, 12 for the reverse map and owners' data.
///
/// The head word packs what describes a block into one atomic, so that labelling a head is one
/// store and reading its state and order one load. Two ways to write it:
/// - the single-field setters ([`Frame::set_state`], [`Frame::set_order`], [`Frame::set_list`],
///   [`Frame::set_flags`]) are atomic read-modify-writes of the word: on an allocated head
///   several writers may race (compaction's `MIGRATING` flag, an owner change), and none
///   may undo another's write;
/// - the whole-word writes ([`Frame::make_head`], [`Frame::relabel`] and the zone's own list
///   work) are plain stores, for frames nobody else writes: free, tail and cached frames (the
///   zone lock's or the per-CPU cache's holder) and blocks in transit (one being freed, which
///   its owner alone may write: see [`Frame::claim_for_free`], or a block just taken off the
///   lists).
#[repr(C)]
pub struct Frame {
    /// State (bits 0..8), order (8..16), list (16..24: free, the migratetype of its list;
    /// allocated, its [`Owner`]) and flags (24..32).
    head: AtomicU32,
    next: AtomicU32,
    prev: AtomicU32,
    pub refcount: AtomicU32,
    pub mapcount: AtomicU32,
    /// Owner's data (e.g. a KSM checksum).
    pub private: AtomicU32,
    /// Reverse-map data: for a page mapped once, its (space, address); otherwise an index
    /// into the owner's reverse-map table.
    pub rmap: AtomicU64,
}

const _: () = assert!(size_of::<Frame>() == 32);

const ORDER_SHIFT: u32 = 8;
const LIST_SHIFT: u32 = 16;
const FLAGS_SHIFT: u32 = 24;
const STATE_MASK: u32 = 0xff;
const ORDER_MASK: u32 = 0xff << ORDER_SHIFT;
const LIST_MASK: u32 = 0xff << LIST_SHIFT;
const FLAGS_MASK: u32 = 0xff << FLAGS_SHIFT;

/// A frame's head word, as read at once (see [`Frame`]): its fields without further loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadWord(u32);

impl HeadWord {
    /// The label of a head on its way to a zone's lists (a freed block just claimed), as
    /// `FreeArea::free` takes it: a tail of `order`, unflagged.
    #[inline]
    pub const fn in_transit(order: u8) -> HeadWord {
        HeadWord::new(FrameState::Tail, order, 0, FrameFlags::empty())
    }

    /// The word of a head in `state` of `order` on `list` with `flags`.
    #[inline]
    pub const fn new(state: FrameState, order: u8, list: u8, flags: FrameFlags) -> HeadWord {
        HeadWord(
            state as u32
                | (order as u32) << ORDER_SHIFT
                | (list as u32) << LIST_SHIFT
                | (flags.bits() as u32) << FLAGS_SHIFT,
        )
    }
    #[inline]
    pub fn state(self) -> FrameState {
        FrameState::from_u8(self.0 as u8)
    }
    #[inline]
    pub fn order(self) -> u8 {
        (self.0 >> ORDER_SHIFT) as u8
    }
    #[inline]
    pub fn list(self) -> u8 {
        (self.0 >> LIST_SHIFT) as u8
    }
    #[inline]
    pub fn flags(self) -> FrameFlags {
        FrameFlags::from_bits_truncate((self.0 >> FLAGS_SHIFT) as u8)
    }
    /// Whether this is the word of a head in `state` of `order` (one comparison).
    #[inline]
    pub fn is(self, state: FrameState, order: u8) -> bool {
        self.0 & (STATE_MASK | ORDER_MASK) == state as u32 | (order as u32) << ORDER_SHIFT
    }
    /// The same word in `state`.
    #[inline]
    pub fn with_state(self, state: FrameState) -> HeadWord {
        HeadWord(self.0 & !STATE_MASK | state as u32)
    }
    /// The same word with `flags`.
    #[inline]
    pub fn with_flags(self, flags: FrameFlags) -> HeadWord {
        HeadWord(self.0 & !FLAGS_MASK | (flags.bits() as u32) << FLAGS_SHIFT)
    }
}

impl Frame {
    pub const fn reserved() -> Frame {
        Frame::blank(FrameState::Reserved)
    }

    /// A fresh record in `state`: no links, counts, flags or owner's data.
    pub const fn blank(state: FrameState) -> Frame {
        Frame {
            head: AtomicU32::new(state as u32),
            next: AtomicU32::new(NONE),
            prev: AtomicU32::new(NONE),
            refcount: AtomicU32::new(0),
            mapcount: AtomicU32::new(0),
            private: AtomicU32::new(0),
            rmap: AtomicU64::new(0),
        }
    }

    /// The head word, in one load.
    #[inline]
    pub fn head_word(&self) -> HeadWord {
        HeadWord(self.head.load(Relaxed))
    }

    /// Writes the whole head word in one store. Only for a frame nobody else may write (see
    /// [`Frame`]): free, tail, cached, or a block in transit.
    #[inline]
    pub fn relabel(&self, word: HeadWord) {
        self.head.store(word.0, Relaxed)
    }

    /// Replaces the bits of `mask` with `bits` in one atomic read-modify-write.
    #[inline]
    fn update(&self, mask: u32, bits: u32) {
        let mut current = self.head.load(Relaxed);
        loop {
            let new = current & !mask | bits;
            match self
                .head
                .compare_exchange_weak(current, new, Relaxed, Relaxed)
            {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    #[inline]
    pub fn state(&self) -> FrameState {
        self.head_word().state()
    }
    /// Sets the state alone (an atomic read-modify-write of the head word).
    #[inline]
    pub fn set_state(&self, state: FrameState) {
        self.update(STATE_MASK, state as u32)
    }
    #[inline]
    pub fn order(&self) -> u8 {
        self.head_word().order()
    }
    /// Sets the order alone (an atomic read-modify-write of the head word).
    #[inline]
    pub fn set_order(&self, order: u8) {
        self.update(ORDER_MASK, (order as u32) << ORDER_SHIFT)
    }
    #[inline]
    pub fn list(&self) -> u8 {
        self.head_word().list()
    }
    /// Sets the list (or owner) alone (an atomic read-modify-write of the head word).
    #[inline]
    pub fn set_list(&self, list: u8) {
        self.update(LIST_MASK, (list as u32) << LIST_SHIFT)
    }
    #[inline]
    pub fn owner(&self) -> Owner {
        Owner::from_u8(self.list())
    }
    #[inline]
    pub fn flags(&self) -> FrameFlags {
        self.head_word().flags()
    }
    /// Sets the flags alone (an atomic read-modify-write of the head word).
    #[inline]
    pub fn set_flags(&self, flags: FrameFlags) {
        self.update(FLAGS_MASK, (flags.bits() as u32) << FLAGS_SHIFT)
    }
    #[inline]
    pub fn next(&self) -> FrameIndex {
        self.next.load(Relaxed)
    }
    #[inline]
    pub fn set_next(&self, next: FrameIndex) {
        self.next.store(next, Relaxed)
    }
    #[inline]
    pub fn prev(&self) -> FrameIndex {
        self.prev.load(Relaxed)
    }
    #[inline]
    pub fn set_prev(&self, prev: FrameIndex) {
        self.prev.store(prev, Relaxed)
    }

    /// Takes a reference to a page found by scanning the database (compaction, KSM): succeeds
    /// only on the head of an allocated user page that still has a reference (a page whose
    /// last reference is being dropped, a free, isolated or reserved frame are refused). A
    /// compare-and-swap loop, so it cannot resurrect a page another CPU is freeing.
    pub fn try_get(&self) -> bool {
        let mut count = self.refcount.load(core::sync::atomic::Ordering::Acquire);
        loop {
            if count == 0
                || self.state() != FrameState::Allocated
                || !matches!(self.owner(), Owner::UserAnon | Owner::KsmShared)
            {
                return false;
            }
            match self.refcount.compare_exchange_weak(
                count,
                count + 1,
                core::sync::atomic::Ordering::AcqRel,
                core::sync::atomic::Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => count = now,
            }
        }
    }

    /// Takes one more reference to a page the caller already holds one to.
    pub fn get(&self) {
        let before = self.refcount.fetch_add(1, Relaxed);
        assert!(
            before > 0 && before < u32::MAX,
            "reference count {before} of a held page"
        );
    }

    /// Drops a reference; true if it was the last one (the caller then frees the page).
    /// Release ordering: what the holder wrote is visible to whoever frees the page.
    pub fn put(&self) -> bool {
        let before = self
            .refcount
            .fetch_sub(1, core::sync::atomic::Ordering::AcqRel);
        assert!(before > 0, "reference count underflow");
        before == 1
    }

    /// Clears what the owner of a block kept in its head's record (its counts and reverse map):
    /// for a block just claimed for freeing.
    #[inline]
    pub fn clear_owner_counts(&self) {
        self.refcount.store(0, Relaxed);
        self.mapcount.store(0, Relaxed);
        self.rmap.store(0, Relaxed);
    }

    /// References beyond the page's mappings and `holders` (whom the caller knows of): a
    /// page with any is pinned (someone uses it outside the page tables) and is never moved
    /// or merged.
    pub fn extra_references(&self, holders: u32) -> u32 {
        self.refcount
            .load(Relaxed)
            .saturating_sub(self.mapcount.load(Relaxed) + holders)
    }

    /// The one transition that frees an allocated block: if this is the head of an allocated
    /// block of `order`, writes `label` (the state of the list the block goes to: `Cached`, or
    /// `Tail` in transit to the zone's lists) in one store; otherwise changes nothing and
    /// returns the state found (`Allocated` for a wrong order).
    ///
    /// A load, the checks and a store, no atomic read-modify-write. The caller holds the lock of
    /// the list the block goes to, and both kinds (the zone's and the per-CPU cache's) keep
    /// preemption off: on the one CPU there is, no other free runs between this load and store,
    /// whichever list it goes to, so of two frees of one block the second finds the state the
    /// first left, and is refused. (With more CPUs, two frees of one block could take different
    /// locks, a per-CPU list's on one CPU and the zone's on another, as the per-CPU route is
    /// chosen by a hint read without a lock: the claim then needs its compare-and-swap back.)
    /// No one else writes an allocated head while its owner frees it: compaction's `MIGRATING`
    /// flag and an owner change are written by holders of a reference, and the free comes after
    /// the last reference is dropped, as Linux's free path relies on too. The swap this replaced
    /// was three quarters of a batch free natively.
    #[inline]
    pub fn claim_for_free(&self, order: u8, label: HeadWord) -> Result<(), FrameState> {
        // Acquire: the freeing thread sees what the block's owner wrote before handing it over.
        let current = HeadWord(self.head.load(core::sync::atomic::Ordering::Acquire));
        if !current.is(FrameState::Allocated, order) {
            // `Allocated` here means another order.
            return Err(current.state());
        }
        self.relabel(label);
        Ok(())
    }

    /// Makes this frame the head of a block in `state`, with no flags and no links: one store
    /// of the head word and two of the links. Only for a frame nobody else may write (see
    /// [`Frame`]): a block just taken off the lists, a tail becoming a head, a block in transit.
    #[inline]
    pub fn make_head(&self, state: FrameState, order: u8, list: u8) {
        self.relabel(HeadWord::new(state, order, list, FrameFlags::empty()));
        self.set_next(NONE);
        self.set_prev(NONE);
    }
}

// ---- The table: a zone's records, padded after every pageblock -----------------------------

/// Log2 of the records in a run: one pageblock's worth (2 MiB of frames), aligned to absolute
/// pfns, as the buddy allocator's `PAGEBLOCK_ORDER`.
pub const RUN_SHIFT: u32 = 9;
/// Records in a whole run.
pub const RUN_RECORDS: usize = 1 << RUN_SHIFT;
/// Unused records after every whole run: one 64-byte cache line (see the module's
/// documentation for why).
pub const PAD_RECORDS: usize = 2;
// A run is a pageblock's records: `FrameTable::at_with_run` names pageblocks by runs.
const _: () = assert!(RUN_SHIFT == crate::buddy::PAGEBLOCK_ORDER as u32);
/// Indices are clamped to this before the slot arithmetic, so that no index, however large,
/// can wrap around to a slot inside a table (no table is this long: [`FrameTable::new`]).
const INDEX_LIMIT: usize = 1 << 48;

/// A zone's frame records, indexed by frame index (pfn - the zone's base pfn), laid out in
/// memory with [`PAD_RECORDS`] unused records after every pageblock's [`RUN_RECORDS`] (see the
/// module's documentation). `Copy`: a view of memory that lives for good, like the
/// `&'static [Frame]` it replaces.
///
/// Index `i` lives at slot `i + PAD_RECORDS * ((i + skew) >> RUN_SHIFT)` of the storage, where
/// `skew` is the base pfn's offset in its pageblock: a shift, an add and a `lea`, no branch.
/// The storage of a table of `len` records ends exactly where record `len` would be, padding
/// after a last whole run included ([`FrameTable::storage_len`]); since slots grow with
/// indices, the storage's bounds check alone rejects every index `>= len`.
#[derive(Clone, Copy)]
pub struct FrameTable {
    /// The records and the padding among (and after) them: `storage_len` records.
    storage: &'static [Frame],
    len: usize,
    /// The offset of index 0 in its pageblock (base pfn mod [`RUN_RECORDS`]).
    skew: usize,
}

impl FrameTable {
    #[inline(always)]
    const fn slot_in(skew: usize, index: usize) -> usize {
        index + PAD_RECORDS * Self::run_in(skew, index)
    }

    /// The run (pageblock) `index` is in, counted from the table's first.
    #[inline(always)]
    const fn run_in(skew: usize, index: usize) -> usize {
        (index + skew) >> RUN_SHIFT
    }

    #[inline(always)]
    const fn skew_of(base_pfn: u64) -> usize {
        (base_pfn & (RUN_RECORDS as u64 - 1)) as usize
    }

    /// Records of memory (padding included) that a table of `count` records for pfns
    /// `base_pfn..` takes: what to reserve for it, and where the next table may start.
    pub const fn storage_len(base_pfn: u64, count: usize) -> usize {
        Self::slot_in(Self::skew_of(base_pfn), count)
    }

    /// The table of `count` records for pfns `base_pfn..` over `storage`, which must hold at
    /// least [`FrameTable::storage_len`] records (the rest is not used).
    pub fn new(base_pfn: u64, count: usize, storage: &'static [Frame]) -> FrameTable {
        assert!(count < INDEX_LIMIT, "frame table of {count} records");
        let needed = Self::storage_len(base_pfn, count);
        assert!(
            storage.len() >= needed,
            "frame table of {count} records needs {needed} of storage, got {}",
            storage.len()
        );
        FrameTable {
            storage: &storage[..needed],
            len: count,
            skew: Self::skew_of(base_pfn),
        }
    }

    /// A table of `count` fresh [`FrameState::Reserved`] records for pfns `base_pfn..`, on the
    /// heap for good (the host tests and the simulator; the kernel's is in reserved RAM).
    pub fn leak(base_pfn: u64, count: usize) -> FrameTable {
        let storage: &'static [Frame] = alloc::vec::Vec::leak(
            (0..Self::storage_len(base_pfn, count))
                .map(|_| Frame::reserved())
                .collect(),
        );
        FrameTable::new(base_pfn, count, storage)
    }

    /// Records in the table.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this table's index 0 is the frame of `pfn` (or another pfn at the same offset in
    /// its pageblock): the layout matches a zone based there.
    pub fn fits_base(&self, pfn: u64) -> bool {
        self.skew == Self::skew_of(pfn)
    }

    /// Records of memory the table spans, padding included.
    pub fn storage_records(&self) -> usize {
        self.storage.len()
    }

    /// The storage slot of `index` (for an index `>= len`, one outside the storage).
    #[inline(always)]
    fn slot(&self, index: usize) -> usize {
        // The clamp is free for indices known to fit (a `FrameIndex` widened).
        Self::slot_in(self.skew, index.min(INDEX_LIMIT))
    }

    /// The record of `index`, if it is in the table.
    #[inline(always)]
    pub fn get(&self, index: usize) -> Option<&'static Frame> {
        // Built-in indexing, no slice method: under Miri a call that takes the whole storage
        // retags all of it, which made every access cost as much as the zone.
        (index < self.len).then(|| &self.storage[self.slot(index)])
    }

    /// The record of `index`, for good, and the number of its run counted from the table's
    /// first (for a table laid out for its zone's base: the index of its pageblock in the
    /// zone, runs being pageblocks), from one shift. Panics as [`FrameTable::at`] does.
    #[inline(always)]
    #[track_caller]
    pub fn at_with_run(&self, index: usize) -> (&'static Frame, usize) {
        // As `slot`, keeping the run it computes on the way.
        let index = index.min(INDEX_LIMIT);
        let run = Self::run_in(self.skew, index);
        (&self.storage[index + PAD_RECORDS * run], run)
    }

    /// The record of `index`, for good; panics if it is not in the table (one bounds check, the
    /// storage's, as a slice's: it reports the slot).
    #[inline(always)]
    #[track_caller]
    pub fn at(&self, index: usize) -> &'static Frame {
        // Built-in indexing (see `get`).
        &self.storage[self.slot(index)]
    }

    /// The records `range` (indices of this table) as a table of their own (its index 0 is
    /// `range.start`). Panics if the range is not inside the table, as slicing does.
    pub fn sub(&self, range: core::ops::Range<usize>) -> FrameTable {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "records {range:?} of a table of {}",
            self.len
        );
        let start = self.slot(range.start);
        // Where record `range.end` would be: the padding after a last whole run is in.
        let end = self.slot(range.end);
        FrameTable {
            storage: &self.storage[start..end],
            len: range.end - range.start,
            skew: (self.skew + range.start) & (RUN_RECORDS - 1),
        }
    }

    /// The first `len` records (a zone's initialised ones).
    #[inline]
    pub fn prefix(&self, len: usize) -> FrameTable {
        self.sub(0..len)
    }

    /// The records as runs contiguous in memory, in index order: one slice per pageblock (the
    /// first and the last may be partial). For loops that walk many records.
    pub fn runs(&self) -> Runs {
        Runs {
            rest: self.storage,
            left: self.len,
            next: RUN_RECORDS - self.skew,
        }
    }

    /// Every record, in index order.
    pub fn iter(&self) -> core::iter::Flatten<Runs> {
        self.runs().flatten()
    }
}

impl core::ops::Index<usize> for FrameTable {
    type Output = Frame;

    /// The record of `index`; panics if it is not in the table (see [`FrameTable::at`]).
    #[inline(always)]
    #[track_caller]
    fn index(&self, index: usize) -> &Frame {
        self.at(index)
    }
}

impl core::fmt::Debug for FrameTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameTable")
            .field("len", &self.len)
            .field("skew", &self.skew)
            .field("storage_records", &self.storage.len())
            .finish()
    }
}

/// The runs of a [`FrameTable`] that are contiguous in memory (see [`FrameTable::runs`]).
#[derive(Clone)]
pub struct Runs {
    /// The storage from the next run on.
    rest: &'static [Frame],
    /// Records not yet handed out.
    left: usize,
    /// Records in the next run if the table goes on that far (to its pageblock's end).
    next: usize,
}

impl Iterator for Runs {
    type Item = &'static [Frame];

    #[inline]
    fn next(&mut self) -> Option<&'static [Frame]> {
        if self.left == 0 {
            return None;
        }
        let count = self.next.min(self.left);
        let (run, rest) = self.rest.split_at(count);
        self.left -= count;
        // A run that reached its pageblock's end is followed by padding (in the storage, even
        // after the last run: see `FrameTable::storage_len`).
        self.rest = if count == self.next {
            &rest[PAD_RECORDS..]
        } else {
            rest
        };
        self.next = RUN_RECORDS;
        Some(run)
    }
}

/// Turns the memory at `records` into the table of `count` frames' records for pfns
/// `base_pfn..`, all [`FrameState::Reserved`] (the padding too). With [`database_at`], the one
/// place where raw memory becomes frame records.
///
/// # Safety
/// `records` must point to [`FrameTable::storage_len`]`(base_pfn, count) * 32` bytes of
/// writable memory, aligned for a `Frame`, used by nothing else, now or later (the kernel: RAM
/// it reserved, through the direct map).
pub unsafe fn build_database(records: *mut Frame, base_pfn: u64, count: usize) -> FrameTable {
    // SAFETY: the caller's promise is exactly `database_at`'s.
    let table = unsafe { database_at(records, base_pfn, count) };
    // SAFETY: the records were just handed to us and nobody else uses them yet.
    unsafe { init_records(table, FrameState::Reserved) };
    table
}

/// The table of `count` frames' records for pfns `base_pfn..` at `records`, as they are:
/// nothing is written, so a record holds whatever the memory held until [`init_records`] writes
/// it (deferred initialisation: see the kernel's `mm::deferred_init`). Every bit pattern is a
/// valid `Frame` (all fields are atomic integers), so reading an unwritten record is
/// meaningless but not undefined.
///
/// # Safety
/// `records` must point to [`FrameTable::storage_len`]`(base_pfn, count) * 32` bytes of
/// memory, aligned for a `Frame`, used by nothing else, now or later.
pub unsafe fn database_at(records: *mut Frame, base_pfn: u64, count: usize) -> FrameTable {
    let storage = FrameTable::storage_len(base_pfn, count);
    // SAFETY: the caller gives us this memory (`storage` records, padding included) for good;
    // it is properly aligned and any content is a valid `Frame`.
    let storage = unsafe { core::slice::from_raw_parts(records, storage) };
    FrameTable::new(base_pfn, count, storage)
}

/// Writes every record of `records` as a fresh record in `state` (links `NONE`, counts and
/// flags zero), and the padding among and after them as [`FrameState::Reserved`], in bulk: one
/// plain 32-byte store per record instead of ten atomic ones, run by contiguous run.
///
/// # Safety
/// Nothing else may read or write these records while this runs (they lie beyond their zone's
/// initialised boundary, or the database is being built).
// One copy, not one per call site: under TCG, code runs first translated, and the boot-time
// initialisation (three calls per chunk) paid ~0.2 ms more at 2 GiB for the inlined copies.
#[inline(never)]
pub unsafe fn init_records(records: FrameTable, state: FrameState) {
    let fill = |frames: &[Frame], state: FrameState| {
        let first = frames.as_ptr() as *mut Frame;
        for index in 0..frames.len() {
            // SAFETY: inside `frames`, aligned; every field of a `Frame` is an atomic (interior
            // mutability), so writing through a pointer derived from a shared reference is
            // allowed, and the caller guarantees no concurrent access to the table's storage
            // (padding included). `Frame` has no drop glue.
            unsafe { first.add(index).write(Frame::blank(state)) };
        }
    };
    let (mut rest, mut left) = (records.storage, records.len);
    let mut run = RUN_RECORDS - records.skew;
    while left > 0 {
        let count = run.min(left);
        let (frames, after) = rest.split_at(count);
        fill(frames, state);
        left -= count;
        rest = after;
        if count == run {
            // The run reached its pageblock's end: its padding follows, in the storage. Never
            // read as a frame, but written all the same (memory the database owns is defined).
            let (padding, after) = rest.split_at(PAD_RECORDS);
            fill(padding, FrameState::Reserved);
            rest = after;
        }
        run = RUN_RECORDS;
    }
    debug_assert!(rest.is_empty(), "frame table storage not covered");
}
