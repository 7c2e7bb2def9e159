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
///   several writers may race (a freeing thread's [`Frame::begin_free`], compaction's
///   `MIGRATING` flag, an owner change), and none may undo another's write;
/// - the whole-word writes ([`Frame::make_head`], [`Frame::relabel`] and the zone's own list
///   work) are plain stores, for frames nobody else writes: free, tail and cached frames (the
///   zone lock's or the per-CPU cache's holder) and blocks in transit (the winner of
///   `begin_free`, or a block just taken off the lists).
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

    /// References beyond the page's mappings and `holders` (whom the caller knows of): a
    /// page with any is pinned (someone uses it outside the page tables) and is never moved
    /// or merged.
    pub fn extra_references(&self, holders: u32) -> u32 {
        self.refcount
            .load(Relaxed)
            .saturating_sub(self.mapcount.load(Relaxed) + holders)
    }

    /// The one transition that starts freeing an allocated block: `Allocated` (with `order`)
    /// becomes `Isolated` (in transit to the free lists) in a single compare-and-swap of the head
    /// word, so of two frees of the same block racing each other exactly one wins; the other sees
    /// the state the winner left and is refused. Returns the state found when the swap did not
    /// happen.
    #[inline]
    pub fn begin_free(&self, order: u8) -> Result<(), FrameState> {
        // Acquire on success: the winner sees everything the allocation's owner wrote before
        // it freed. A wrong order is refused before the swap (the state is left alone); a word
        // that changed meanwhile (flags, owner) is read again.
        let mut current = self.head_word();
        loop {
            if current.state() != FrameState::Allocated {
                return Err(current.state());
            }
            if current.order() != order {
                return Err(FrameState::Allocated);
            }
            match self.head.compare_exchange_weak(
                current.0,
                current.with_state(FrameState::Isolated).0,
                core::sync::atomic::Ordering::Acquire,
                Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => current = HeadWord(now),
            }
        }
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

/// Turns `count` frames' worth of memory at `records` into a database of records, all
/// [`FrameState::Reserved`]. With [`database_at`], the one place where raw memory becomes frame
/// records.
///
/// # Safety
/// `records` must point to `count * 32` bytes of writable memory, aligned for a `Frame`, used by
/// nothing else, now or later (the kernel: RAM it reserved, through the direct map).
pub unsafe fn build_database(records: *mut Frame, count: usize) -> &'static [Frame] {
    // SAFETY: the caller's promise is exactly `database_at`'s.
    let records = unsafe { database_at(records, count) };
    // SAFETY: the records were just handed to us and nobody else uses them yet.
    unsafe { init_records(records, FrameState::Reserved) };
    records
}

/// The records of `count` frames at `records`, as they are: nothing is written, so a record
/// holds whatever the memory held until [`init_records`] writes it (deferred initialisation:
/// see the kernel's `mm::deferred_init`). Every bit pattern is a valid `Frame` (all fields are
/// atomic integers), so reading an unwritten record is meaningless but not undefined.
///
/// # Safety
/// `records` must point to `count * 32` bytes of memory, aligned for a `Frame`, used by nothing
/// else, now or later.
pub unsafe fn database_at(records: *mut Frame, count: usize) -> &'static [Frame] {
    // SAFETY: the caller gives us this memory for good; it is properly aligned and any content
    // is a valid `Frame`.
    unsafe { core::slice::from_raw_parts(records, count) }
}

/// Writes every record of `records` as a fresh record in `state` (links `NONE`, counts and
/// flags zero), in bulk: one plain 32-byte store per record instead of ten atomic ones.
///
/// # Safety
/// Nothing else may read or write these records while this runs (they lie beyond their zone's
/// initialised boundary, or the database is being built).
pub unsafe fn init_records(records: &[Frame], state: FrameState) {
    let first = records.as_ptr() as *mut Frame;
    for index in 0..records.len() {
        // SAFETY: inside `records`, aligned; every field of a `Frame` is an atomic (interior
        // mutability), so writing through a pointer derived from a shared reference is allowed,
        // and the caller guarantees no concurrent access. `Frame` has no drop glue.
        unsafe { first.add(index).write(Frame::blank(state)) };
    }
}
