//! The reverse map: for every user page, each (address space, virtual address) mapping it.
//!
//! A page mapped once (the common case) keeps its mapping inline in its frame record (`rmap`);
//! a page mapped more than once (after a clone, or merged by KSM) keeps all of them in a side
//! table keyed by pfn. The frame's `mapcount` always equals the number of mappings. Every
//! mapping holds one reference (`refcount`); anything else that holds a user page (compaction
//! moving it, KSM comparing it) holds one more, taken with `Frame::try_get`. The page is freed
//! by whoever drops the last reference, mapping or not.
//!
//! Owns the `rmap` and `mapcount` fields of user frames and the side table. Address spaces call
//! [`add`] and [`remove`] under their own lock; compaction and KSM will call [`mappings`].

use super::page_alloc;
use crate::sync::{IrqMutex, LockClass};
use alloc::collections::BTreeMap;
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

static SHARED: IrqMutex<BTreeMap<u64, Vec<Mapping>>> =
    IrqMutex::with_class(BTreeMap::new(), LockClass::Rmap);

fn frame(pfn: u64) -> &'static super::frame::Frame {
    page_alloc::zone_of(pfn)
        .expect("user page is in a zone")
        .frame(pfn)
}

/// Records that `mapping` maps `pfn`, taking a reference for it; returns the new map count.
pub fn add(pfn: u64, mapping: Mapping) -> u32 {
    let record = frame(pfn);
    record.get();
    link(pfn, record, mapping)
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
    link(pfn, record, mapping)
}

fn link(pfn: u64, record: &super::frame::Frame, mapping: Mapping) -> u32 {
    let mut shared = SHARED.lock();
    let count = record.mapcount.load(Relaxed);
    match count {
        0 => record.rmap.store(pack(mapping), Relaxed),
        1 => {
            let first = unpack(record.rmap.load(Relaxed));
            shared.insert(pfn, alloc::vec![first, mapping]);
            record.rmap.store(0, Relaxed);
        }
        _ => shared
            .get_mut(&pfn)
            .expect("shared page has a table entry")
            .push(mapping),
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
/// bug, reported as `None` (nothing changes).
pub fn remove(pfn: u64, mapping: Mapping) -> Option<Unmapped> {
    let record = frame(pfn);
    let mut shared = SHARED.lock();
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
            let list = shared.get_mut(&pfn).expect("shared page has a table entry");
            let position = list.iter().position(|entry| *entry == mapping)?;
            list.swap_remove(position);
            if list.len() == 1 {
                let last = list[0];
                shared.remove(&pfn);
                record.rmap.store(pack(last), Relaxed);
            }
        }
    }
    record.mapcount.store(count - 1, Relaxed);
    drop(shared);
    Some(Unmapped {
        mapcount: count - 1,
        last_reference: record.put(),
    })
}

/// Moves every mapping of `from` to `to` (a page migrated: the page tables already point at
/// `to`): the map count, the mappings' references and the inline entry or side-table key go
/// over; `from` keeps only references that were not mappings'. Allocates at most a node of the
/// side table.
pub fn move_mappings(from: u64, to: u64) {
    let (old, new) = (frame(from), frame(to));
    let mut shared = SHARED.lock();
    let count = old.mapcount.load(Relaxed);
    if count > 1
        && let Some(list) = shared.remove(&from)
    {
        // Re-keying moves the list; a BTreeMap insert may allocate a node, which the lock
        // order allows here (the reverse map comes before the heap).
        shared.insert(to, list);
    }
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
    let record = frame(pfn);
    let shared = SHARED.lock();
    match record.mapcount.load(Relaxed) {
        0 => Vec::new(),
        1 => alloc::vec![unpack(record.rmap.load(Relaxed))],
        _ => shared.get(&pfn).cloned().unwrap_or_default(),
    }
}

/// Every mapping of `pfn`, into `out` (cleared first): allocates only if `out` must grow.
pub fn mappings_into(pfn: u64, out: &mut Vec<Mapping>) {
    out.clear();
    let record = frame(pfn);
    let shared = SHARED.lock();
    match record.mapcount.load(Relaxed) {
        0 => {}
        1 => out.push(unpack(record.rmap.load(Relaxed))),
        _ => {
            if let Some(list) = shared.get(&pfn) {
                out.extend_from_slice(list);
            }
        }
    }
}

/// The one mapping of `pfn` if it has exactly one (no allocation: migration's common case).
pub fn single_mapping(pfn: u64) -> Option<Mapping> {
    let record = frame(pfn);
    let _shared = SHARED.lock();
    (record.mapcount.load(Relaxed) == 1).then(|| unpack(record.rmap.load(Relaxed)))
}

/// Whether `mapping` is recorded for `pfn` (no allocation: the checker's question).
pub fn contains(pfn: u64, mapping: Mapping) -> bool {
    let record = frame(pfn);
    let shared = SHARED.lock();
    match record.mapcount.load(Relaxed) {
        0 => false,
        1 => unpack(record.rmap.load(Relaxed)) == mapping,
        _ => shared.get(&pfn).is_some_and(|list| list.contains(&mapping)),
    }
}

/// The smallest mapping recorded for `pfn` (a page's representative, for walks that must meet
/// each page once without keeping a list of them).
pub fn first_mapping(pfn: u64) -> Option<Mapping> {
    let record = frame(pfn);
    let shared = SHARED.lock();
    match record.mapcount.load(Relaxed) {
        0 => None,
        1 => Some(unpack(record.rmap.load(Relaxed))),
        _ => shared.get(&pfn).and_then(|list| list.iter().min().copied()),
    }
}

/// How many mappings `pfn` has.
pub fn map_count(pfn: u64) -> u32 {
    frame(pfn).mapcount.load(Relaxed)
}

/// Pages with more than one mapping.
pub fn shared_pages() -> usize {
    SHARED.lock().len()
}
