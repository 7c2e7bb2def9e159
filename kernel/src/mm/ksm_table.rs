//! KSM's stable and unstable trees as hash tables: open addressing with linear probing in one
//! flat array of 16-byte entries (checksum, merge domain, pfn), grown by doubling.
//!
//! Why not `BTreeMap`s (the first version): the kernel heap is a linked list, and a B-tree
//! allocates and frees nodes as it grows, splits and empties; every such allocation walks the
//! free list and makes the next ones slower. Here an insert allocates only when the table
//! doubles (log n times in all), a lookup or removal never, and an entry costs 16 bytes at a
//! load of at most a half (32-64 bytes a page, against Linux's 64-byte `rmap_item` per page
//! scanned plus its tree nodes).
//!
//! Pages with the same checksum land in one probe run (a *bucket*): a lookup walks the run
//! from the checksum's home slot to the first empty slot and yields the entries of the wanted
//! checksum and domain. Nothing is trusted about the pages' contents: the caller compares
//! every candidate in full (see `mm::ksm`, "The trees"). Removal shifts the following entries
//! back (no tombstones), so runs stay as short as the load makes them. The home slot depends
//! on the checksum only, so a page can be found from its frame alone (checksum in the frame
//! record, pfn) without knowing its domain.

use alloc::vec::Vec;

/// One page filed under its checksum. `key` 0 marks an empty slot (a filed checksum always
/// has bit 31 set, see `mm::ksm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: u32,
    pub domain: u32,
    pub pfn: u64,
}

const EMPTY: Entry = Entry {
    key: 0,
    domain: 0,
    pfn: 0,
};

/// Slots of a table's first allocation.
const FIRST_CAPACITY: usize = 64;

/// The table is kept at most half full.
#[derive(Default)]
pub struct Table {
    slots: Vec<Entry>,
    len: usize,
}

impl Table {
    pub const fn new() -> Table {
        Table {
            slots: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes the table holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Entry>()
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, key: u32) -> usize {
        // The checksum is a hash already; spread it once more so that its low bits (the
        // slot) depend on all of it.
        (u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & self.mask()
    }

    /// The entries of the probe run that starts at `key`'s home slot, in probe order.
    fn run(&self, key: u32) -> impl Iterator<Item = (usize, &Entry)> {
        let (start, mask) = if self.slots.is_empty() {
            (0, 0)
        } else {
            (self.home(key), self.mask())
        };
        let slots = &self.slots;
        (0..slots.len())
            .map(move |step| (start + step) & mask)
            .map(move |index| (index, &slots[index]))
            .take_while(|(_, entry)| entry.key != 0)
    }

    /// Writes up to `out.len()` pfns filed under (`domain`, `key`) into `out`; returns how many.
    pub fn candidates(&self, domain: u32, key: u32, out: &mut [u64]) -> usize {
        let mut found = 0;
        for (_, entry) in self.run(key) {
            if found == out.len() {
                break;
            }
            if entry.key == key && entry.domain == domain {
                out[found] = entry.pfn;
                found += 1;
            }
        }
        found
    }

    /// How many entries are filed under (`domain`, `key`).
    pub fn count(&self, domain: u32, key: u32) -> usize {
        self.run(key)
            .filter(|(_, entry)| entry.key == key && entry.domain == domain)
            .count()
    }

    fn position(&self, key: u32, pfn: u64) -> Option<usize> {
        self.run(key)
            .find(|(_, entry)| entry.key == key && entry.pfn == pfn)
            .map(|(index, _)| index)
    }

    /// The entry of `pfn` filed under `key`.
    pub fn get(&self, key: u32, pfn: u64) -> Option<Entry> {
        self.position(key, pfn).map(|index| self.slots[index])
    }

    /// Whether the next insert can go without allocating; grows the table now if not. False
    /// only if the heap could not give the larger table.
    pub fn reserve_one(&mut self) -> bool {
        if 2 * (self.len + 1) <= self.slots.len() {
            return true;
        }
        let capacity = (2 * self.slots.len()).max(FIRST_CAPACITY);
        let mut slots = Vec::new();
        if slots.try_reserve_exact(capacity).is_err() {
            return false;
        }
        slots.resize(capacity, EMPTY);
        let old = core::mem::replace(&mut self.slots, slots);
        for entry in old.into_iter().filter(|entry| entry.key != 0) {
            self.place(entry);
        }
        true
    }

    fn place(&mut self, entry: Entry) {
        let mask = self.mask();
        let mut index = self.home(entry.key);
        while self.slots[index].key != 0 {
            index = (index + 1) & mask;
        }
        self.slots[index] = entry;
    }

    /// Files `entry` (its `key` must have bit 31 set). False if the table had to grow and the
    /// heap could not give it room (nothing changed); after [`Table::reserve_one`] returned
    /// true, it allocates nothing and succeeds.
    pub fn insert(&mut self, entry: Entry) -> bool {
        debug_assert!(entry.key != 0, "a filed checksum is never 0");
        if !self.reserve_one() {
            return false;
        }
        self.place(entry);
        self.len += 1;
        true
    }

    /// Removes the entry of `pfn` filed under `key`, shifting the rest of its run back so that
    /// no lookup stops early. Allocates nothing.
    pub fn remove(&mut self, key: u32, pfn: u64) -> Option<Entry> {
        let mut hole = self.position(key, pfn)?;
        let removed = self.slots[hole];
        let mask = self.mask();
        let mut next = (hole + 1) & mask;
        while self.slots[next].key != 0 {
            let home = self.home(self.slots[next].key);
            // The entry at `next` may move back into the hole unless its home lies after the
            // hole (cyclically, up to `next`): then it would end up before its home.
            let distance_to_next = next.wrapping_sub(home) & mask;
            let distance_to_hole = hole.wrapping_sub(home) & mask;
            if distance_to_hole <= distance_to_next {
                self.slots[hole] = self.slots[next];
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
        Some(removed)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().filter(|entry| entry.key != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: u32, domain: u32, pfn: u64) -> Entry {
        Entry {
            key: key | 1 << 31,
            domain,
            pfn,
        }
    }

    fn lookup(table: &Table, domain: u32, key: u32) -> Vec<u64> {
        let mut out = [0u64; 64];
        let found = table.candidates(domain, key | 1 << 31, &mut out);
        let mut pfns = out[..found].to_vec();
        pfns.sort_unstable();
        pfns
    }

    #[test_case]
    fn ksm_table_finds_what_it_filed_across_growth_and_removals() {
        // Few distinct keys: long runs that wrap around, removals from their middles.
        let mut table = Table::new();
        let mut model: Vec<Entry> = Vec::new();
        let mut seed = 7u64;
        for round in 0..4000u64 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let key = ((seed >> 33) % 37) as u32;
            let domain = ((seed >> 20) % 2) as u32;
            if round % 3 == 2 && !model.is_empty() {
                let victim = model.swap_remove((seed >> 40) as usize % model.len());
                assert_eq!(table.remove(victim.key, victim.pfn), Some(victim));
            } else {
                let new = entry(key, domain, round);
                assert!(table.insert(new));
                model.push(new);
            }
            assert_eq!(table.len(), model.len());
        }
        assert!(table.heap_bytes() >= 2 * table.len() * size_of::<Entry>());
        for key in 0..37 {
            for domain in 0..2 {
                let mut want: Vec<u64> = model
                    .iter()
                    .filter(|e| e.key == key | 1 << 31 && e.domain == domain)
                    .map(|e| e.pfn)
                    .collect();
                want.sort_unstable();
                want.truncate(64);
                let got = lookup(&table, domain, key);
                if want.len() < 64 {
                    assert_eq!(got, want, "key {key} domain {domain}");
                }
                assert_eq!(
                    table.count(domain, key | 1 << 31),
                    model
                        .iter()
                        .filter(|e| e.key == key | 1 << 31 && e.domain == domain)
                        .count()
                );
            }
        }
        for e in &model {
            assert_eq!(table.get(e.key, e.pfn), Some(*e));
        }
        assert_eq!(table.iter().count(), model.len());
        for e in model.drain(..) {
            assert_eq!(table.remove(e.key, e.pfn), Some(e));
        }
        assert_eq!(table.len(), 0);
        assert_eq!(table.iter().count(), 0);
        assert_eq!(table.remove(entry(1, 0, 1).key, 1), None);
    }
}
