//! The reverse map: for every user page, each (address space, virtual address) mapping it.
//!
//! A page mapped once (the common case) keeps its mapping inline in its frame record (`rmap`);
//! a page mapped more than once (after a clone, or merged by KSM) keeps all of them in a list
//! in the side table, and its `rmap` holds the index of the list's first node. The frame's
//! `mapcount` always equals the number of mappings.
//!
//! The side table is an array of 16-byte nodes (a packed mapping and the next node's index) in
//! chunks of 256, with a bitmap of the nodes in use: adding a mapping takes the lowest free
//! node, removing one frees it, and trailing chunks of free nodes are given back. No heap allocation per mapping
//! (the first version kept a `BTreeMap` of vectors: a KSM merge spent 15k cycles of its ~40k
//! in the allocations of `add`, the kernel heap being a linked list); the array grows by whole
//! chunks, and [`reserve`] grows it before a path that must not fail under its locks. Every
//! mapping holds one reference (`refcount`); anything else that holds a user page (compaction
//! moving it, KSM comparing it) holds one more, taken with `Frame::try_get`. The page is freed
//! by whoever drops the last reference, mapping or not.
//!
//! Owns the `rmap` and `mapcount` fields of user frames and the side table. Address spaces call
//! [`add`] and [`remove`] under their own lock; compaction and KSM call [`mappings`].

use super::page_alloc;
use crate::sync::{IrqMutex, LockClass};
use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

/// Names an address space in the reverse map.
pub type SpaceId = u32;

/// One mapping of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mapping {
    pub space: SpaceId,
    pub address: u64,
}

/// Bits of a space id in the inline encoding, and the largest id (address spaces reuse ids,
/// see `space::AddressSpace::new`, so they always fit).
pub const SPACE_ID_BITS: u32 = 28;
pub const MAX_SPACE_ID: SpaceId = (1 << SPACE_ID_BITS) - 1;

/// Inline encoding: space id in the top 28 bits, virtual page number in the low 36.
fn pack(mapping: Mapping) -> u64 {
    debug_assert!(
        mapping.space <= MAX_SPACE_ID,
        "space id {} does not fit the reverse map",
        mapping.space
    );
    ((mapping.space as u64) << 36) | (mapping.address >> 12)
}

fn unpack(value: u64) -> Mapping {
    Mapping {
        space: (value >> 36) as SpaceId,
        address: (value & ((1 << 36) - 1)) << 12,
    }
}

/// One mapping in a shared page's list.
#[derive(Clone, Copy)]
struct Node {
    mapping: u64,
    next: u32,
}

/// Ends a list.
const NIL: u32 = u32::MAX;
const UNUSED: Node = Node {
    mapping: 0,
    next: NIL,
};
/// Nodes the table grows and shrinks by (a 4 KiB allocation each).
const CHUNK: usize = 256;
const CHUNK_WORDS: usize = CHUNK / 64;

/// A chunk of nodes and the bitmap of those in use.
struct Chunk {
    used: [u64; CHUNK_WORDS],
    nodes: alloc::boxed::Box<[Node]>,
}

/// The side table: the lists of every page mapped more than once. Node `i` is node `i % 256`
/// of chunk `i / 256`; growing adds a chunk (4 KiB, never a copy of the table), and chunks at
/// the end that hold no node in use are given back (one kept spare).
struct Table {
    chunks: Vec<Chunk>,
    /// Nodes in use.
    live: usize,
    /// No chunk below this one has a free node.
    hint: usize,
    /// Pages with a list.
    pages: usize,
}

static SHARED: IrqMutex<Table> = IrqMutex::with_class(
    Table {
        chunks: Vec::new(),
        live: 0,
        hint: 0,
        pages: 0,
    },
    LockClass::Rmap,
);

impl Table {
    /// Adds a chunk of free nodes; false if the heap had no room (nothing changed).
    fn try_grow(&mut self) -> bool {
        let mut nodes = Vec::new();
        if self.chunks.try_reserve(1).is_err() || nodes.try_reserve_exact(CHUNK).is_err() {
            return false;
        }
        nodes.resize(CHUNK, UNUSED);
        self.chunks.push(Chunk {
            used: [0; CHUNK_WORDS],
            nodes: nodes.into_boxed_slice(),
        });
        true
    }

    fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    fn node(&self, index: u32) -> Node {
        let index = index as usize;
        self.chunks[index / CHUNK].nodes[index % CHUNK]
    }

    fn node_mut(&mut self, index: u32) -> &mut Node {
        let index = index as usize;
        &mut self.chunks[index / CHUNK].nodes[index % CHUNK]
    }

    /// A free node holding `node`; grows the table if none is free (allocation failure is then
    /// fatal, as it is for any kernel allocation the caller did not [`reserve`]).
    fn take(&mut self, node: Node) -> u32 {
        let free = |chunk: &Chunk| chunk.used.iter().any(|&bits| bits != u64::MAX);
        let at = match (self.hint..self.chunks.len()).find(|&at| free(&self.chunks[at])) {
            Some(at) => at,
            None => {
                assert!(
                    self.try_grow(),
                    "the reverse map's side table cannot grow: no heap"
                );
                self.chunks.len() - 1
            }
        };
        self.hint = at;
        self.live += 1;
        let chunk = &mut self.chunks[at];
        let word = chunk
            .used
            .iter()
            .position(|&bits| bits != u64::MAX)
            .unwrap_or_default();
        let bit = (!chunk.used[word]).trailing_zeros() as usize;
        chunk.used[word] |= 1 << bit;
        let slot = word * 64 + bit;
        chunk.nodes[slot] = node;
        (at * CHUNK + slot) as u32
    }

    /// Frees node `index`, and the chunks at the end that hold no node in use (one is kept).
    fn give_back(&mut self, index: u32) {
        let index = index as usize;
        let (at, slot) = (index / CHUNK, index % CHUNK);
        let bits = &mut self.chunks[at].used[slot / 64];
        debug_assert!(*bits & (1 << (slot % 64)) != 0, "freeing a free rmap node");
        *bits &= !(1 << (slot % 64));
        self.live -= 1;
        self.hint = self.hint.min(at);
        let empty = |chunk: &Chunk| chunk.used.iter().all(|&bits| bits == 0);
        while self.chunks.len() >= 2 && self.chunks[self.chunks.len() - 2..].iter().all(empty) {
            self.chunks.pop();
        }
        if self.chunks.capacity() >= 4 * (self.chunks.len() + 1) {
            self.chunks.shrink_to(2 * (self.chunks.len() + 1));
        }
        self.hint = self.hint.min(self.chunks.len());
    }

    /// The list starting at `head`.
    fn list(&self, head: u32) -> impl Iterator<Item = Mapping> + '_ {
        let mut at = head;
        core::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let node = self.node(at);
            at = node.next;
            Some(unpack(node.mapping))
        })
    }
}

fn frame(pfn: u64) -> &'static super::frame::Frame {
    page_alloc::zone_of(pfn)
        .expect("user page is in a zone")
        .frame(pfn)
}

/// The heap had no room for the reverse map's side table to grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom;

/// Makes room in the side table for `mappings` more mappings of shared pages, so that adding
/// them allocates nothing (KSM and clone call it before taking the spaces' locks).
pub fn reserve(mappings: usize) -> Result<(), NoRoom> {
    let mut table = SHARED.lock();
    while table.capacity() - table.live < mappings {
        if !table.try_grow() {
            return Err(NoRoom);
        }
    }
    Ok(())
}

/// Records that `mapping` maps `pfn`, taking a reference for it; returns the new map count.
pub fn add(pfn: u64, mapping: Mapping) -> u32 {
    let record = frame(pfn);
    record.get();
    link(record, mapping)
}

/// Records the first mapping of a page just allocated: the allocation's reference becomes the
/// mapping's.
pub fn add_new(pfn: u64, mapping: Mapping) -> u32 {
    let record = frame(pfn);
    debug_assert_eq!(record.mapcount.load(Relaxed), 0, "a new page is unmapped");
    debug_assert_eq!(
        record.refcount.load(Relaxed),
        1,
        "a new page has one reference"
    );
    // Nothing of an earlier life of the frame (KSM's checksum and smart-scan age) carries over.
    record.private.store(0, Relaxed);
    link(record, mapping)
}

fn link(record: &super::frame::Frame, mapping: Mapping) -> u32 {
    let mut table = SHARED.lock();
    let count = record.mapcount.load(Relaxed);
    match count {
        0 => record.rmap.store(pack(mapping), Relaxed),
        1 => {
            let first = table.take(Node {
                mapping: record.rmap.load(Relaxed),
                next: NIL,
            });
            let head = table.take(Node {
                mapping: pack(mapping),
                next: first,
            });
            table.pages += 1;
            record.rmap.store(u64::from(head), Relaxed);
        }
        _ => {
            let head = table.take(Node {
                mapping: pack(mapping),
                next: record.rmap.load(Relaxed) as u32,
            });
            record.rmap.store(u64::from(head), Relaxed);
        }
    }
    record.mapcount.store(count + 1, Relaxed);
    count + 1
}

/// What removing a mapping left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmapped {
    pub mapcount: u32,
    /// The mapping held the page's last reference: the caller frees it.
    pub last_reference: bool,
}

/// Removes `mapping` of `pfn` and drops its reference. A mapping that was never recorded is a
/// bug, reported as `None` (nothing changes). Allocates nothing.
pub fn remove(pfn: u64, mapping: Mapping) -> Option<Unmapped> {
    let record = frame(pfn);
    let mut table = SHARED.lock();
    let count = record.mapcount.load(Relaxed);
    match count {
        0 => return None,
        1 => {
            if unpack(record.rmap.load(Relaxed)) != mapping {
                return None;
            }
            record.rmap.store(0, Relaxed);
        }
        _ => {
            let wanted = pack(mapping);
            let head = record.rmap.load(Relaxed) as u32;
            let (mut previous, mut at) = (NIL, head);
            while at != NIL && table.node(at).mapping != wanted {
                previous = at;
                at = table.node(at).next;
            }
            if at == NIL {
                return None;
            }
            let next = table.node(at).next;
            let head = if previous == NIL {
                next
            } else {
                table.node_mut(previous).next = next;
                head
            };
            table.give_back(at);
            if count == 2 {
                // One mapping left: inline again.
                let last = table.node(head);
                table.give_back(head);
                table.pages -= 1;
                record.rmap.store(last.mapping, Relaxed);
            } else {
                record.rmap.store(u64::from(head), Relaxed);
            }
        }
    }
    record.mapcount.store(count - 1, Relaxed);
    drop(table);
    Some(Unmapped {
        mapcount: count - 1,
        last_reference: record.put(),
    })
}

/// Moves every mapping of `from` to `to` (a page migrated: the page tables already point at
/// `to`): the map count, the mappings' references and the inline entry or list go over; `from`
/// keeps only references that were not mappings'. Allocates nothing.
pub fn move_mappings(from: u64, to: u64) {
    let (old, new) = (frame(from), frame(to));
    let _table = SHARED.lock();
    let count = old.mapcount.load(Relaxed);
    new.rmap.store(old.rmap.load(Relaxed), Relaxed);
    old.rmap.store(0, Relaxed);
    new.mapcount.store(count, Relaxed);
    old.mapcount.store(0, Relaxed);
    // `to` came with its allocation's reference; it now holds one per mapping.
    new.refcount.store(count, Relaxed);
    old.refcount.fetch_sub(count, Relaxed);
}

/// Every mapping of `pfn`.
pub fn mappings(pfn: u64) -> Vec<Mapping> {
    let mut out = Vec::new();
    mappings_into(pfn, &mut out);
    out
}

/// Every mapping of `pfn`, into `out` (cleared first): allocates only if `out` must grow.
pub fn mappings_into(pfn: u64, out: &mut Vec<Mapping>) {
    out.clear();
    let record = frame(pfn);
    let table = SHARED.lock();
    match record.mapcount.load(Relaxed) {
        0 => {}
        1 => out.push(unpack(record.rmap.load(Relaxed))),
        _ => out.extend(table.list(record.rmap.load(Relaxed) as u32)),
    }
}

/// The one mapping of `pfn` if it has exactly one (no allocation: migration's common case).
pub fn single_mapping(pfn: u64) -> Option<Mapping> {
    let record = frame(pfn);
    let _table = SHARED.lock();
    (record.mapcount.load(Relaxed) == 1).then(|| unpack(record.rmap.load(Relaxed)))
}

/// Whether `mapping` is recorded for `pfn` (no allocation: the checker's question).
pub fn contains(pfn: u64, mapping: Mapping) -> bool {
    let record = frame(pfn);
    let table = SHARED.lock();
    match record.mapcount.load(Relaxed) {
        0 => false,
        1 => unpack(record.rmap.load(Relaxed)) == mapping,
        _ => table
            .list(record.rmap.load(Relaxed) as u32)
            .any(|entry| entry == mapping),
    }
}

/// The smallest mapping recorded for `pfn` (a page's representative, for walks that must meet
/// each page once without keeping a list of them).
pub fn first_mapping(pfn: u64) -> Option<Mapping> {
    let record = frame(pfn);
    let table = SHARED.lock();
    match record.mapcount.load(Relaxed) {
        0 => None,
        1 => Some(unpack(record.rmap.load(Relaxed))),
        _ => table.list(record.rmap.load(Relaxed) as u32).min(),
    }
}

/// How many mappings `pfn` has.
pub fn map_count(pfn: u64) -> u32 {
    frame(pfn).mapcount.load(Relaxed)
}

/// Pages with more than one mapping.
pub fn shared_pages() -> usize {
    SHARED.lock().pages
}

/// The side table's nodes in use and its size in nodes (tests, the census).
pub fn table_nodes() -> (usize, usize) {
    let table = SHARED.lock();
    (table.live, table.capacity())
}
