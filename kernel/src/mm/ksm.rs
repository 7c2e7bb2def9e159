//! KSM: merges identical pages of the user address spaces' mergeable regions into one
//! write-protected shared page (owner [`Owner::KsmShared`]); a write to it gets a private copy
//! again (`space::break_cow`, counted as `cow_ksm`).
//!
//! Owns the scanner thread (ksmd), its cursor, the stable and unstable trees, the shared zero
//! page and the counters (Linux's names). Reaches address spaces through `space::next_space`,
//! `space::find_space` and their public primitives (`mergeable_pages`, `write_protect`,
//! `replace_page`, `translate`, `region_at`, `unmerge`, `ksm_pages`), the reverse map through
//! `rmap::{mappings_into, reserve, add, remove}`, the allocator through `page_alloc`
//! (`set_owner`, `free`) and compaction through `compaction::consolidate`. Its lock ([`LockClass::Ksm`]) comes after the spaces and the reverse map and before
//! the heap: it is never held while a space or the reverse map is locked by KSM itself, and the
//! spaces' paths (the last unmapping of a shared page) take it under their own lock.
//!
//! # Per page (Linux's order)
//! 1. Pages already merged (owner `KsmShared`, which includes the zero page) are skipped.
//! 2. Smart scan (`ksm.smart_scan`, [`skipped`]): a page that stayed the same through three
//!    looks without merging is looked at in only every 2nd to 9th pass (counted as
//!    `pages_skipped`).
//! 3. A checksum of the page is kept in the frame record's `private` field: bit 31 marks it
//!    valid, bits 27-30 hold the page's smart-scan age, bits 0-26 the checksum (a new user page
//!    starts with 0: `rmap::add_new`). The hash is a four-lane multiply-rotate over the page's
//!    64-bit words (xxh64's round function; one multiply per word, no table, no crate): it has
//!    to notice a change anywhere in the page cheaply, not resist an attacker, because every
//!    merge compares the pages word for word again under the locks. A page whose checksum
//!    changed since the last look is *volatile* and waits for the next pass (so a merge takes
//!    two passes).
//! 4. With `ksm.use_zero_pages` 1, a zero-filled page maps the shared zero page.
//! 5. The stable tree (KSM pages), then the unstable tree (pages seen this pass). A candidate
//!    with the same checksum is looked at in three runs of words ([`alike`]); a hit in the
//!    stable tree merges the page into that KSM page, a hit in the unstable tree merges the pair
//!    (the tree's page becomes the KSM page, the other's mappings move to it); a miss inserts
//!    the page. The unstable tree is emptied at the start of every full pass.
//!
//! # The trees: hash buckets, not ordered trees
//! Both are hash tables (`ksm_table`) from the checksum to the pages with that checksum, and
//! no candidate is merged before a compare of the whole pages under the locks. Pages in the
//! unstable tree are writable and change under it: an ordered tree keyed by content would then
//! be ordered wrongly and a lookup could miss or loop through a wrong path; a bucket keyed by
//! the checksum at insertion stays a correct (bounded) lookup: a changed page just no longer
//! compares equal and is skipped. Lookups cost a probe run plus at most [`BUCKET_LOOKS`]
//! candidates. Stable pages are read-only, so their bucket is always right; a stable page
//! leaves its bucket when its last reference goes ([`page_freeing`]).
//!
//! # Merging (the same shape as migration, `mm::migrate`)
//! The scanner holds a reference to both pages. It makes room for the reverse map's nodes and
//! the stable tree's entry, locks every address space that maps either (in id order), checks
//! that the mappings are the ones it read, that every one lies in a mergeable region, that
//! neither page is pinned (`extra_references`) or being migrated, write-protects every mapping
//! (each flushed from the TLB), compares the pages, and only then points every mapping of the
//! duplicate at the KSM page (read-only), moves the reverse map and files a new KSM page in the
//! stable tree; the duplicate's last reference is the scanner's, whose `put` frees it. A task's
//! write before the write-protect lands in its page and makes the compare fail; after it, the
//! write faults and waits for the space's lock, then copies the KSM page: no write is lost. The
//! scanner's buffers ([`Scratch`]) are reused: a merge allocates nothing.
//!
//! # Compaction
//! KSM pages are movable: compaction isolates them like anonymous pages (not the zero page),
//! `migrate_user_page` moves one only while it is in the stable tree and calls [`page_moved`]
//! under the mapping spaces' locks, so the tree names the new frame (an anonymous page's
//! checksum moves with it too). A scanner holding a reference to a KSM page pins it (the move
//! is refused), and a merge into a KSM page checks, under its locks, that the page is still in
//! the stable tree. The duplicates a pass frees lie in 4 KiB holes: at the end of the pass KSM
//! asks compaction to consolidate them into 2 MiB blocks for free page reporting, and kcompactd
//! leaves KSM's frees alone until then ([`consolidation_pending`]).
//!
//! # Scan rate (the defaults)
//! A wake ends after `pages_to_scan` pages or `sleep_millisecs`/4 of work, whichever comes
//! first, so ksmd takes at most ~20% of the CPU whatever a page costs (a look at a page that
//! does not merge costs ~2 us under TCG, a merge ~10-15 us): see the README's KSM section.
//!
//! Idle: with `ksm.run` 0 or 2, or after a full pass that found no mergeable region, ksmd
//! waits on its queue without a timer; `madvise(MERGEABLE)` and every tunable change wake it.

use super::PAGE_SIZE;
use super::frame::{Frame, FrameFlags, Owner};
use super::page_alloc::{self, AllocRequest, Pages};
use super::rmap::{self, Mapping, SpaceId};
use super::space;
use crate::sync::{IrqMutex, LockClass};
use crate::task::{self, WaitQueue};
use crate::time::Instant;
use crate::tunables;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use core::time::Duration;
use table::{Entry, Table};

#[path = "ksm_table.rs"]
mod table;

/// Marks `private` as holding a checksum.
const CHECKSUM_VALID: u32 = 1 << 31;
/// A user page's `private` also holds its smart-scan age (bits 27-30: real looks since its
/// checksum last changed, at most 15); the checksum is the low 27 bits. A KSM page's `private`
/// is its key alone (age 0).
const AGE_SHIFT: u32 = 27;
const AGE_MASK: u32 = 0xf << AGE_SHIFT;
/// Most candidates of one bucket compared per lookup.
const BUCKET_LOOKS: usize = 16;
/// Pages collected under one space lock at a time.
const BATCH: usize = 64;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        #[allow(non_upper_case_globals)]
        mod counter { use core::sync::atomic::AtomicU64; $(pub static $name: AtomicU64 = AtomicU64::new(0);)* }
    };
}

counters!(
    full_scans,
    pages_scanned,
    pages_volatile_pass,
    pages_volatile_last,
    cow_ksm,
    merges,
    merge_pinned,
    merge_changed,
    merge_differs,
    sharing_cap_hits,
    scan_ns,
    pass_regions,
    pass_pages,
    pass_merges,
    pages_skipped,
);

fn count(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Relaxed);
}

/// The counters, with Linux's names where the meaning is the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KsmStats {
    /// KSM pages in the stable tree.
    pub pages_shared: u64,
    /// Mappings of those pages beyond the first of each (pages saved).
    pub pages_sharing: u64,
    /// Pages in the unstable tree.
    pub pages_unshared: u64,
    /// Pages found changed since the previous pass during the last full pass.
    pub pages_volatile: u64,
    /// Looks smart scan skipped (pages that stayed unmerged through several looks).
    pub pages_skipped: u64,
    pub full_scans: u64,
    /// Mappings of the shared zero page.
    pub ksm_zero_pages: u64,
    /// Bytes saved: (sharing + zero pages) x 4 KiB minus the unstable tree's entries.
    pub general_profit: i64,
    /// Contents held by more than one KSM page (the sharing cap was reached).
    pub stable_node_chains: u64,
    /// KSM pages beyond the first of such contents.
    pub stable_node_dups: u64,
    pub cow_ksm: u64,
    pub pages_scanned: u64,
    pub merges: u64,
    /// Merges abandoned: a page pinned, mappings changed, contents differed at the last compare.
    pub merge_pinned: u64,
    pub merge_changed: u64,
    pub merge_differs: u64,
    /// Stable-tree hits refused because the KSM page had `max_page_sharing` mappings.
    pub sharing_cap_hits: u64,
    /// Time the scanner spent working (not sleeping), in nanoseconds.
    pub scan_ns: u64,
    /// Heap the stable and unstable trees hold (their hash tables), in bytes.
    pub tables_bytes: u64,
}

/// Both trees are hash tables of (checksum, merge domain, pfn) (`ksm_table`): a bucket is one
/// checksum's entries; pages of different domains never meet in one. `chains` and `dups`
/// follow the stable tree's buckets holding more than one page (the sharing cap's copies).
struct Trees {
    stable: Table,
    unstable: Table,
    chains: u64,
    dups: u64,
}

static TREES: IrqMutex<Trees> = IrqMutex::with_class(
    Trees {
        stable: Table::new(),
        unstable: Table::new(),
        chains: 0,
        dups: 0,
    },
    LockClass::Ksm,
);

impl Trees {
    /// Files a new KSM page. Allocates nothing after `stable.reserve_one()` returned true.
    fn insert_stable(&mut self, entry: Entry) -> bool {
        let others = self.stable.count(entry.domain, entry.key);
        if !self.stable.insert(entry) {
            return false;
        }
        if others >= 1 {
            self.dups += 1;
        }
        if others == 1 {
            self.chains += 1;
        }
        true
    }

    fn remove_stable(&mut self, key: u32, pfn: u64) -> Option<Entry> {
        let entry = self.stable.remove(key, pfn)?;
        let others = self.stable.count(entry.domain, key);
        if others >= 1 {
            self.dups -= 1;
        }
        if others == 1 {
            self.chains -= 1;
        }
        Some(entry)
    }
}

/// The merge domain of the KSM page `pfn`, if it is in the stable tree.
fn stable_domain(pfn: u64) -> Option<u32> {
    let key = frame(pfn)?.private.load(Relaxed);
    TREES.lock().stable.get(key, pfn).map(|entry| entry.domain)
}

/// The shared zero page (0: not allocated yet). KSM holds one reference to it for good.
static ZERO_PFN: AtomicU64 = AtomicU64::new(0);
/// The checksum of a zero-filled page.
static ZERO_CHECKSUM: spin::Once<u32> = spin::Once::new();

/// Whoever scans (ksmd, or a test calling [`scan_pages`]) holds this.
static SCANNING: AtomicBool = AtomicBool::new(false);
/// The cursor: the space and address the next scan starts at.
static CURSOR_SPACE: AtomicU64 = AtomicU64::new(0);
static CURSOR_ADDRESS: AtomicU64 = AtomicU64::new(0);

static WAKE: WaitQueue = WaitQueue::new();
static IDLE: WaitQueue = WaitQueue::new();
static REQUESTED: AtomicBool = AtomicBool::new(false);
static STARTED: AtomicBool = AtomicBool::new(false);

fn frame(pfn: u64) -> Option<&'static Frame> {
    page_alloc::zone_of(pfn).map(|zone| zone.frame(pfn))
}

fn words(pfn: u64) -> *const u64 {
    super::phys_to_virt(pfn * PAGE_SIZE) as *const u64
}

const WORDS: usize = (PAGE_SIZE / 8) as usize;

/// Reads word `index` of page `pfn`. Volatile: a task may write the page meanwhile (the value
/// is then only a hint; merging compares again under the locks).
fn word(page: *const u64, index: usize) -> u64 {
    // SAFETY: `page` is the direct-mapped address of a RAM page the caller holds a reference
    // to (it cannot be freed meanwhile), and `index` < 512 stays inside it.
    unsafe { page.add(index).read_volatile() }
}

/// The page's checksum (see the module documentation), with [`CHECKSUM_VALID`] set.
fn checksum(pfn: u64) -> u32 {
    const P1: u64 = 0x9e37_79b1_85eb_ca87;
    const P2: u64 = 0xc2b2_ae3d_27d4_eb4f;
    let page = words(pfn);
    let mut lanes = [P1.wrapping_add(P2), P2, 0, P1.wrapping_neg()];
    let mut index = 0;
    while index < WORDS {
        for (lane, value) in lanes.iter_mut().enumerate() {
            let input = word(page, index + lane);
            *value = value
                .wrapping_add(input.wrapping_mul(P2))
                .rotate_left(31)
                .wrapping_mul(P1);
        }
        index += 4;
    }
    let mut hash = lanes.iter().fold(0u64, |hash, lane| {
        (hash ^ lane).wrapping_mul(P1).rotate_left(27)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(P2);
    hash ^= hash >> 29;
    (hash >> 37) as u32 | CHECKSUM_VALID
}

/// Words of one page read before the same words of the other: see [`same_content`].
const COMPARE_RUN: usize = 8;
const _: () = assert!(COMPARE_RUN == 8 && WORDS.is_multiple_of(COMPARE_RUN));

/// Whether pages `a` and `b` hold the same bytes. Reads a run of [`COMPARE_RUN`] words of `a`
/// (kept in registers), then the same words of `b`, instead of alternating word by word: under
/// TCG the software TLB is direct-mapped, and two pages whose frame numbers collide in it (two
/// spaces filled one after the other: often) evict each other on every alternate load. Over
/// the 16,384 pairs of `bench=ksm` that made a compare cost 13.7 us word by word, 3.1 us in runs
/// of 8 (a page against itself: 1.6 and 1.2 us); runs of 64 through a buffer on the stack cost
/// 5.7 us (every word is stored and loaded once more).
fn same_content(a: u64, b: u64) -> bool {
    let (a, b) = (words(a), words(b));
    let mut start = 0;
    while start < WORDS {
        if !same_run(a, b, start) {
            return false;
        }
        start += COMPARE_RUN;
    }
    true
}

/// Whether pages `a` and `b` agree in three runs of words (first, middle, last): a look
/// before a merge, whose locked compare of the whole pages decides. With equal checksums the
/// pages almost always are equal, and comparing them in full once more before the locks
/// would cost a third of a merge under TCG (Linux compares twice too: in the tree's search
/// and after write-protecting); a page that changed since its checksum was taken, and passes
/// this look, costs its task one write fault (its mapping was write-protected) and the merge
/// fails as `merge_differs`.
fn alike(a: u64, b: u64) -> bool {
    let (a, b) = (words(a), words(b));
    same_run(a, b, 0) && same_run(a, b, WORDS / 2) && same_run(a, b, WORDS - COMPARE_RUN)
}

/// Whether `a` and `b` agree in the [`COMPARE_RUN`] words from `start` (a multiple of the run:
/// `start | k` is its word k, with no overflow check to execute).
#[inline(always)]
fn same_run(a: *const u64, b: *const u64, start: usize) -> bool {
    let x = [
        word(a, start),
        word(a, start | 1),
        word(a, start | 2),
        word(a, start | 3),
        word(a, start | 4),
        word(a, start | 5),
        word(a, start | 6),
        word(a, start | 7),
    ];
    let differ = (x[0] ^ word(b, start))
        | (x[1] ^ word(b, start | 1))
        | (x[2] ^ word(b, start | 2))
        | (x[3] ^ word(b, start | 3))
        | (x[4] ^ word(b, start | 4))
        | (x[5] ^ word(b, start | 5))
        | (x[6] ^ word(b, start | 6))
        | (x[7] ^ word(b, start | 7));
    differ == 0
}

fn is_zero_filled(pfn: u64) -> bool {
    let page = words(pfn);
    (0..WORDS).all(|index| word(page, index) == 0)
}

/// Whether `pfn` is the shared zero page.
pub fn is_zero_page(pfn: u64) -> bool {
    pfn != 0 && ZERO_PFN.load(Relaxed) == pfn
}

/// 1 if the zero page exists and nothing maps it (it is KSM's, not a user page), else 0.
pub fn unmapped_zero_page() -> u64 {
    let pfn = ZERO_PFN.load(Relaxed);
    u64::from(pfn != 0 && rmap::map_count(pfn) == 0)
}

/// The zero page, allocated on first use.
fn zero_page() -> Option<u64> {
    let pfn = ZERO_PFN.load(Relaxed);
    if pfn != 0 {
        return Some(pfn);
    }
    let pages = page_alloc::alloc(AllocRequest::new(0).zeroed().owner(Owner::KsmShared))?;
    // Kept for the kernel's life, by its frame number.
    let pfn = pages.into_raw();
    if let Some(record) = frame(pfn) {
        record.private.store(zero_checksum(), Relaxed);
    }
    ZERO_PFN.store(pfn, Relaxed);
    Some(pfn)
}

fn zero_checksum() -> u32 {
    *ZERO_CHECKSUM.call_once(|| {
        // Any zeroed page gives it; take one for a moment.
        match page_alloc::alloc(AllocRequest::new(0).zeroed()) {
            Some(pages) => checksum(pages.pfn()),
            None => 0,
        }
    })
}

/// Whether `pfn` is a KSM page in the stable tree.
pub fn is_stable(pfn: u64) -> bool {
    stable_domain(pfn).is_some()
}

/// A KSM page's last reference is gone and it is about to be freed: it leaves the stable tree.
/// Called by whoever dropped that reference (the last unmapping, or the scanner's `put`); a
/// page of another owner is left alone. Allocates nothing.
pub fn page_freeing(pfn: u64) {
    let Some(record) = frame(pfn) else {
        return;
    };
    if record.owner() != Owner::KsmShared {
        return;
    }
    let key = record.private.load(Relaxed);
    TREES.lock().remove_stable(key, pfn);
}

/// Compaction moved the KSM page `from` to `to` (under every mapping space's lock, see
/// `mm::migrate`): the stable tree and the checksum follow. Allocates nothing.
pub fn page_moved(from: u64, to: u64) {
    let (Some(old), Some(new)) = (frame(from), frame(to)) else {
        return;
    };
    let key = old.private.load(Relaxed);
    new.private.store(key, Relaxed);
    let mut trees = TREES.lock();
    if let Some(entry) = trees.stable.remove(key, from) {
        // The slot just freed: this insert allocates nothing.
        let moved = trees.stable.insert(Entry { pfn: to, ..entry });
        debug_assert!(moved);
    }
}

/// Drops the scanner's reference to `pfn`, freeing it if that was the last.
fn put_page(pfn: u64) {
    let Some(record) = frame(pfn) else {
        return;
    };
    if record.put() {
        page_freeing(pfn);
        // SAFETY: that was the last reference: no mapping and no other holder owns the page,
        // so the reference this scanner held is the ownership of the page.
        let page = unsafe { Pages::from_raw(pfn, 0) };
        if let Err(error) = page_alloc::free(page) {
            log::error!("ksm: freeing {pfn:#x}: {error:?}");
        }
    }
}

/// Takes a reference to `pfn` if it is an allocated user page of `owner`.
fn try_get(pfn: u64, owner: Owner) -> bool {
    let Some(record) = frame(pfn) else {
        return false;
    };
    if !record.try_get() {
        return false;
    }
    if record.owner() != owner || record.order() != 0 {
        put_page(pfn);
        return false;
    }
    true
}

/// Counts a copy-on-write of a KSM page (`space::break_cow`).
pub fn count_cow() {
    count(&counter::cow_ksm, 1);
}

/// The counters now.
pub fn stats() -> KsmStats {
    let trees = TREES.lock();
    let sharing: u64 = trees
        .stable
        .iter()
        .map(|entry| u64::from(rmap::map_count(entry.pfn).saturating_sub(1)))
        .sum();
    let (chains, dups) = (trees.chains, trees.dups);
    let (shared, unshared) = (trees.stable.len() as u64, trees.unstable.len() as u64);
    let tables_bytes = (trees.stable.heap_bytes() + trees.unstable.heap_bytes()) as u64;
    drop(trees);
    let zero = ZERO_PFN.load(Relaxed);
    let zero_pages = if zero == 0 {
        0
    } else {
        u64::from(rmap::map_count(zero))
    };
    KsmStats {
        pages_shared: shared,
        pages_sharing: sharing,
        pages_unshared: unshared,
        pages_volatile: counter::pages_volatile_last.load(Relaxed),
        pages_skipped: counter::pages_skipped.load(Relaxed),
        full_scans: counter::full_scans.load(Relaxed),
        ksm_zero_pages: zero_pages,
        general_profit: ((sharing + zero_pages) * PAGE_SIZE) as i64
            - (unshared * size_of::<Entry>() as u64) as i64,
        stable_node_chains: chains,
        stable_node_dups: dups,
        cow_ksm: counter::cow_ksm.load(Relaxed),
        pages_scanned: counter::pages_scanned.load(Relaxed),
        merges: counter::merges.load(Relaxed),
        merge_pinned: counter::merge_pinned.load(Relaxed),
        merge_changed: counter::merge_changed.load(Relaxed),
        merge_differs: counter::merge_differs.load(Relaxed),
        sharing_cap_hits: counter::sharing_cap_hits.load(Relaxed),
        scan_ns: counter::scan_ns.load(Relaxed),
        tables_bytes,
    }
}

/// One task's KSM figures, Linux's `/proc/PID/ksm_stat` (for its address space).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceStats {
    /// Pages of the task's mergeable regions ksmd has looked at (Linux: its `rmap_item`s, one
    /// per page ksmd visited; ours are a bit in the page's entry, `space::KSM_VISITED`).
    pub ksm_rmap_items: u64,
    /// The task's pages ksmd merged, or found mapping a KSM page (`space::KSM_COUNTED`): a
    /// clone's start at 0, as Linux's.
    pub ksm_merging_pages: u64,
    /// The same for the shared zero page (`use_zero_pages`).
    pub ksm_zero_pages: u64,
    /// Bytes saved for the task, Linux's formula: (merging + zero pages) x 4 KiB minus
    /// `ksm_rmap_items` x the bytes KSM may spend per page it tracks (an entry of the
    /// unstable tree, [`RMAP_ITEM_BYTES`]).
    pub ksm_process_profit: i64,
}

/// What KSM may spend per page it tracks: one entry of the unstable tree (Linux: the 64-byte
/// `rmap_item`).
pub const RMAP_ITEM_BYTES: u64 = size_of::<Entry>() as u64;

/// The KSM figures of the task whose address space is `space` (locks it).
pub fn space_stats(space: &space::SharedSpace) -> SpaceStats {
    let (items, merging, zero) = space.lock().ksm_pages();
    SpaceStats {
        ksm_rmap_items: items,
        ksm_merging_pages: merging,
        ksm_zero_pages: zero,
        ksm_process_profit: ((merging + zero) * PAGE_SIZE) as i64
            - (items * RMAP_ITEM_BYTES) as i64,
    }
}

/// The per-task lines of the console's `ksm`: one line per task, Linux's `ksm_stat` names.
pub fn write_task_report(
    out: &mut impl core::fmt::Write,
    tasks: impl Iterator<Item = (u64, String, space::SharedSpace)>,
) -> core::fmt::Result {
    for (pid, name, shared) in tasks {
        let stats = space_stats(&shared);
        writeln!(
            out,
            "task {pid} {name}: ksm_rmap_items {} ksm_merging_pages {} ksm_zero_pages {} ksm_process_profit {}",
            stats.ksm_rmap_items,
            stats.ksm_merging_pages,
            stats.ksm_zero_pages,
            stats.ksm_process_profit
        )?;
    }
    Ok(())
}

/// The console's `ksm` report: the run state, then one counter per line (Linux's names).
pub fn write_report(out: &mut impl core::fmt::Write) -> core::fmt::Result {
    let stats = stats();
    writeln!(
        out,
        "run {} pages_to_scan {} sleep_millisecs {} use_zero_pages {} max_page_sharing {} smart_scan {}",
        tunables::KSM_RUN.get(),
        tunables::KSM_PAGES_TO_SCAN.get(),
        tunables::KSM_SLEEP_MILLISECS.get(),
        tunables::KSM_USE_ZERO_PAGES.get(),
        tunables::KSM_MAX_PAGE_SHARING.get(),
        tunables::KSM_SMART_SCAN.get()
    )?;
    for (name, value) in [
        ("pages_shared", stats.pages_shared as i64),
        ("pages_sharing", stats.pages_sharing as i64),
        ("pages_unshared", stats.pages_unshared as i64),
        ("pages_volatile", stats.pages_volatile as i64),
        ("pages_skipped", stats.pages_skipped as i64),
        ("full_scans", stats.full_scans as i64),
        ("ksm_zero_pages", stats.ksm_zero_pages as i64),
        ("general_profit", stats.general_profit),
        ("stable_node_chains", stats.stable_node_chains as i64),
        ("stable_node_dups", stats.stable_node_dups as i64),
        ("cow_ksm", stats.cow_ksm as i64),
        ("pages_scanned", stats.pages_scanned as i64),
        ("merges", stats.merges as i64),
        ("merge_pinned", stats.merge_pinned as i64),
        ("merge_changed", stats.merge_changed as i64),
        ("merge_differs", stats.merge_differs as i64),
        ("sharing_cap_hits", stats.sharing_cap_hits as i64),
        ("scan_ms", (stats.scan_ns / 1_000_000) as i64),
        ("tables_bytes", stats.tables_bytes as i64),
    ] {
        writeln!(out, "{name:<20} {value}")?;
    }
    Ok(())
}

/// The cost of the two page operations a scan is made of, on a page of `pfn`'s memory:
/// (checksum ns, plain whole-page compare ns), each the median of nine batches of `rounds`/9
/// (benchmarks, scenario=ksm).
pub fn measure_page_costs(rounds: u64) -> (u64, u64) {
    let Some(a) = page_alloc::alloc(AllocRequest::new(0)) else {
        return (0, 0);
    };
    let Some(b) = page_alloc::alloc(AllocRequest::new(0)) else {
        return (0, 0);
    };
    // SAFETY: two pages just allocated for this measurement, direct-mapped RAM.
    unsafe {
        core::ptr::write_bytes(a.virt() as *mut u8, 0x5a, PAGE_SIZE as usize);
        core::ptr::write_bytes(b.virt() as *mut u8, 0x5a, PAGE_SIZE as usize);
    }
    // The median of nine batches: the host's other work (QEMU shares the machine) lands in a
    // batch or two instead of in the figure.
    const BATCHES: usize = 9;
    let per_batch = (rounds / BATCHES as u64).max(1);
    let median_ns = |op: &mut dyn FnMut()| {
        let mut times = [0u64; BATCHES];
        for time in &mut times {
            let started = Instant::now();
            for _ in 0..per_batch {
                op();
            }
            *time = started.elapsed().as_nanos() as u64 / per_batch;
        }
        times.sort_unstable();
        times[BATCHES / 2]
    };
    let mut sink = 0u32;
    let checksum_ns = median_ns(&mut || sink ^= checksum(a.pfn()));
    let mut equal = 0;
    // A plain compare, word by word (two neighbouring pages: no TLB collision), the baseline
    // `bench=ksm` divides the merge rate by (`same_content` took 0.83 us on them, this 1.05).
    let (first, second) = (words(a.pfn()), words(b.pfn()));
    let compare_ns = median_ns(&mut || {
        equal += u64::from((0..WORDS).all(|index| word(first, index) == word(second, index)));
    });
    log::debug!("ksm: measured ({sink:#x}, {equal})");
    (checksum_ns, compare_ns)
}

/// Sets `ksm.run=1` unless the command line set `ksm.run` (scenario=ksm and the demo).
pub fn run_unless_set_on_command_line() {
    if crate::cmdline::value("ksm.run").is_none()
        && let Err(error) = tunables::KSM_RUN.set(1)
    {
        log::error!("ksm: setting ksm.run=1: {error}");
    }
}

/// Proves the stable tree: every entry is an allocated, mapped, read-only-owned KSM page of
/// order 0 filed under its own checksum, each once, and the count matches.
pub fn check() -> Result<(), String> {
    let trees = TREES.lock();
    let mut all: Vec<u64> = Vec::with_capacity(trees.stable.len());
    for entry in trees.stable.iter() {
        let (key, pfn) = (entry.key, entry.pfn);
        let record = frame(pfn).ok_or_else(|| alloc::format!("ksm: {pfn:#x} not in a zone"))?;
        if record.state() != super::frame::FrameState::Allocated
            || record.owner() != Owner::KsmShared
            || record.private.load(Relaxed) != key
            || record.mapcount.load(Relaxed) == 0
        {
            return Err(alloc::format!(
                "ksm: stable {pfn:#x}: state {:?} owner {:?} checksum {:#x} (filed {key:#x}) mapcount {}",
                record.state(),
                record.owner(),
                record.private.load(Relaxed),
                record.mapcount.load(Relaxed)
            ));
        }
        if trees.stable.get(key, pfn) != Some(*entry) {
            return Err(alloc::format!(
                "ksm: stable {pfn:#x} is not found under its checksum {key:#x}"
            ));
        }
        all.push(pfn);
    }
    // Buckets with more than one KSM page: each is a chain, its pages beyond the first dups.
    let mut copies: Vec<(u32, u32)> = trees
        .stable
        .iter()
        .filter(|entry| trees.stable.count(entry.domain, entry.key) > 1)
        .map(|entry| (entry.domain, entry.key))
        .collect();
    let in_chains = copies.len() as u64;
    copies.sort_unstable();
    copies.dedup();
    let chains = copies.len() as u64;
    let dups = in_chains - chains;
    if (chains, dups) != (trees.chains, trees.dups) {
        return Err(alloc::format!(
            "ksm: {chains} chains and {dups} dups in the stable tree, counted {} and {}",
            trees.chains,
            trees.dups
        ));
    }
    drop(trees);
    all.sort_unstable();
    if all.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(String::from(
            "ksm: a page is filed twice in the stable tree",
        ));
    }
    Ok(())
}

/// Test hook: runs in `merge` after the scanner compared the pages and before it locks the
/// spaces, once with each page's pfn (a task's write landing in that window).
#[cfg(test)]
type RaceHook = alloc::boxed::Box<dyn FnMut(u64) + Send>;
#[cfg(test)]
static RACE_HOOK: IrqMutex<Option<RaceHook>> = IrqMutex::new(None);

#[cfg(test)]
fn set_race_hook(hook: Option<RaceHook>) {
    *RACE_HOOK.lock() = hook;
}

#[cfg(test)]
fn run_race_hook(pfn: u64) {
    // Taken out while it runs (it locks spaces; no lock of ours is held meanwhile).
    let hook = RACE_HOOK.lock().take();
    if let Some(mut hook) = hook {
        hook(pfn);
        let mut slot = RACE_HOOK.lock();
        if slot.is_none() {
            *slot = Some(hook);
        }
    }
}

// ---- Merging -------------------------------------------------------------------------------

/// Why a merge did not happen (both pages stay as they were, intact).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeError {
    /// A page is used outside the page tables (or compaction is moving it).
    Pinned,
    /// Mappings changed, a page left its state, a region is no longer mergeable.
    Changed,
    /// The contents differ (compared under the locks, after write-protecting).
    Differs,
    /// The KSM page already has `ksm.max_page_sharing` mappings.
    Full,
    /// No heap for the reverse map's or the stable tree's entries (checked before anything
    /// changes).
    NoMemory,
}

/// Buffers one scan reuses from page to page: once they have grown, looking at a page and
/// merging it allocate nothing here (the first version made ~10 small heap allocations per
/// merge, each a walk of the linked-list heap).
#[derive(Default)]
struct Scratch {
    page_maps: Vec<Mapping>,
    target_maps: Vec<Mapping>,
    /// The mappings read again under the locks.
    now: Vec<Mapping>,
    ids: Vec<SpaceId>,
    spaces: Vec<space::SharedSpace>,
}

/// Spaces a merge locks without a heap allocation (a page and its twin: one or two spaces).
const LOCKED_INLINE: usize = 4;

type SpaceGuard<'a> = crate::sync::IrqMutexGuard<'a, space::AddressSpace>;

/// The address spaces of one merge, locked in id order (the lock order's rule for spaces) and
/// released in the opposite order (each guard restores the interrupt state from before it).
struct Locked<'a> {
    inline: [Option<SpaceGuard<'a>>; LOCKED_INLINE],
    more: Vec<SpaceGuard<'a>>,
}

impl<'a> Locked<'a> {
    /// Locks `spaces` (sorted by id).
    fn lock(spaces: &'a [space::SharedSpace]) -> Locked<'a> {
        let mut locked = Locked {
            inline: [const { None }; LOCKED_INLINE],
            more: Vec::new(),
        };
        for (index, shared) in spaces.iter().enumerate() {
            match locked.inline.get_mut(index) {
                Some(slot) => *slot = Some(shared.lock()),
                None => locked.more.push(shared.lock()),
            }
        }
        locked
    }

    fn get(&mut self, id: SpaceId) -> Option<&mut space::AddressSpace> {
        self.inline
            .iter_mut()
            .flatten()
            .chain(self.more.iter_mut())
            .find(|guard| guard.id() == id)
            .map(|guard| &mut **guard)
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        while let Some(guard) = self.more.pop() {
            drop(guard);
        }
        for slot in self.inline.iter_mut().rev() {
            drop(slot.take());
        }
    }
}

/// Whether `pfn`'s mappings are exactly `expected` (sorted), read into `now`.
fn mappings_unchanged(pfn: u64, expected: &[Mapping], now: &mut Vec<Mapping>) -> bool {
    rmap::mappings_into(pfn, now);
    now.sort_unstable();
    now.as_slice() == expected
}

/// Points every mapping of `page` at `target` (see the module documentation). The caller holds
/// a reference to both. `target_new`: `target` is an unstable-tree page that becomes a KSM
/// page with checksum `key` (its mappings are write-protected and checked too); otherwise it
/// is a KSM page already (stable, or the zero page).
fn merge(
    scratch: &mut Scratch,
    page: u64,
    target: u64,
    target_new: bool,
    key: u32,
    domain: u32,
) -> Result<(), MergeError> {
    if page == target {
        return Err(MergeError::Changed);
    }
    let outcome = merge_with(scratch, page, target, target_new, key, domain);
    scratch.spaces.clear();
    match outcome {
        Ok(()) => {
            count(&counter::merges, 1);
            LAST_MERGE_NS.store(Instant::now().as_nanos(), Relaxed);
            if counter::pass_merges.fetch_add(1, Relaxed) + 1 >= CONSOLIDATE_EVERY_PAGES {
                consolidate();
            }
        }
        Err(MergeError::Pinned) => count(&counter::merge_pinned, 1),
        Err(MergeError::Changed) => count(&counter::merge_changed, 1),
        Err(MergeError::Differs) => count(&counter::merge_differs, 1),
        Err(MergeError::Full | MergeError::NoMemory) => {}
    }
    outcome
}

fn merge_with(
    scratch: &mut Scratch,
    page: u64,
    target: u64,
    target_new: bool,
    key: u32,
    domain: u32,
) -> Result<(), MergeError> {
    let Scratch {
        page_maps,
        target_maps,
        now,
        ids,
        spaces,
    } = scratch;
    rmap::mappings_into(page, page_maps);
    if target_new {
        rmap::mappings_into(target, target_maps);
    } else {
        target_maps.clear();
    }
    if page_maps.is_empty() || (target_new && target_maps.is_empty()) {
        return Err(MergeError::Changed);
    }
    let cap = tunables::KSM_MAX_PAGE_SHARING.get();
    let target_count = if target_new {
        target_maps.len() as u64
    } else {
        u64::from(rmap::map_count(target))
    };
    if !is_zero_page(target) && target_count + page_maps.len() as u64 > cap {
        return Err(MergeError::Full);
    }
    page_maps.sort_unstable();
    target_maps.sort_unstable();
    ids.clear();
    ids.extend(
        page_maps
            .iter()
            .chain(target_maps.iter())
            .map(|mapping| mapping.space),
    );
    ids.sort_unstable();
    ids.dedup();
    // The reverse map takes nodes under the spaces' locks (the target's first mapping leaves
    // its frame record too), and a new KSM page needs a slot in the stable tree: make room for
    // both now, or refuse.
    if rmap::reserve(page_maps.len() + 1).is_err()
        || (target_new && !TREES.lock().stable.reserve_one())
    {
        return Err(MergeError::NoMemory);
    }
    for &id in ids.iter() {
        spaces.push(space::find_space(id).ok_or(MergeError::Changed)?);
    }
    let (page_record, target_record) = (
        frame(page).ok_or(MergeError::Changed)?,
        frame(target).ok_or(MergeError::Changed)?,
    );
    #[cfg(test)]
    run_race_hook(page);
    #[cfg(test)]
    run_race_hook(target);
    let mut locked = Locked::lock(spaces);
    if !mappings_unchanged(page, page_maps, now)
        || (target_new && !mappings_unchanged(target, target_maps, now))
    {
        return Err(MergeError::Changed);
    }
    let unpinned = |record: &Frame, owner: Owner| {
        if record.owner() != owner {
            return Err(MergeError::Changed);
        }
        if record.flags().contains(FrameFlags::MIGRATING) || record.extra_references(1) != 0 {
            return Err(MergeError::Pinned);
        }
        Ok(())
    };
    unpinned(page_record, Owner::UserAnon)?;
    if target_new {
        unpinned(target_record, Owner::UserAnon)?;
    } else if target_record.owner() != Owner::KsmShared
        || !(is_zero_page(target) || stable_domain(target) == Some(domain))
    {
        // Compaction moved it meanwhile (the old frame is no longer in the tree).
        return Err(MergeError::Changed);
    }
    // Every mapping in a mergeable region; then write-protect all of them (each flushed).
    for (pfn, maps) in [(page, &*page_maps), (target, &*target_maps)] {
        for mapping in maps {
            let space = locked.get(mapping.space).ok_or(MergeError::Changed)?;
            if space.merge_domain() != domain {
                return Err(MergeError::Changed);
            }
            let mergeable = space
                .region_at(mapping.address)
                .is_some_and(|region| region.flags.contains(space::RegionFlags::MERGEABLE));
            if !mergeable || !space.write_protect(mapping.address, pfn) {
                return Err(MergeError::Changed);
            }
        }
    }
    // Nothing can write either page now: compare for real.
    if !same_content(page, target) {
        return Err(MergeError::Differs);
    }
    if target_new {
        page_alloc::set_owner(target, Owner::KsmShared);
        target_record.private.store(key, Relaxed);
    }
    for &mapping in page_maps.iter() {
        let space = locked.get(mapping.space).ok_or(MergeError::Changed)?;
        // Checked above under the same locks: it still maps `page`, now read-only.
        let replaced = space.replace_page(mapping.address, page, target);
        debug_assert!(replaced);
        space.mark_ksm_merged(mapping.address, target);
        rmap::add(target, mapping);
        // The scanner's reference keeps `page` alive: this is never the last one.
        let _ = rmap::remove(page, mapping);
    }
    if target_new {
        // The twin's mappings are merged pages of their spaces now.
        for mapping in target_maps.iter() {
            if let Some(space) = locked.get(mapping.space) {
                space.mark_ksm_merged(mapping.address, target);
            }
        }
        // Under the spaces' locks, so that nobody sees a KSM page outside the stable tree;
        // room was reserved above (this allocates nothing).
        let mut trees = TREES.lock();
        trees.unstable.remove(key, target);
        let filed = trees.insert_stable(Entry {
            key,
            domain,
            pfn: target,
        });
        debug_assert!(filed);
    }
    drop(locked);
    Ok(())
}

// ---- Scanning ------------------------------------------------------------------------------

/// One page of a space in merge domain `domain`; the caller holds a reference to it.
fn scan_page(scratch: &mut Scratch, pfn: u64, domain: u32) {
    count(&counter::pages_scanned, 1);
    let Some(record) = frame(pfn) else {
        return;
    };
    if record.owner() != Owner::UserAnon {
        return;
    }
    let old = record.private.load(Relaxed);
    let age = if old & CHECKSUM_VALID != 0 {
        (old & AGE_MASK) >> AGE_SHIFT
    } else {
        0
    };
    if tunables::KSM_SMART_SCAN.get() == 1 && skipped(age, counter::full_scans.load(Relaxed)) {
        count(&counter::pages_skipped, 1);
        return;
    }
    let key = checksum(pfn);
    if old & !AGE_MASK != key {
        // New, or changed since the last look: volatile, and young again.
        record.private.store(key, Relaxed);
        count(&counter::pages_volatile_pass, 1);
        return;
    }
    record
        .private
        .store(key | (age + 1).min(15) << AGE_SHIFT, Relaxed);
    if tunables::KSM_USE_ZERO_PAGES.get() == 1
        && key == zero_checksum()
        && is_zero_filled(pfn)
        && let Some(zero) = zero_page()
    {
        let _ = merge(scratch, pfn, zero, false, key, domain);
        return;
    }
    // The stable tree.
    let mut candidates = [0u64; BUCKET_LOOKS];
    let found = TREES.lock().stable.candidates(domain, key, &mut candidates);
    for &kpfn in &candidates[..found] {
        if !try_get(kpfn, Owner::KsmShared) {
            continue;
        }
        let result = if alike(pfn, kpfn) {
            Some(merge(scratch, pfn, kpfn, false, key, domain))
        } else {
            None
        };
        put_page(kpfn);
        match result {
            Some(Ok(())) => return,
            Some(Err(MergeError::Full)) => count(&counter::sharing_cap_hits, 1),
            // Another content under the same checksum: the next candidate may match.
            Some(Err(MergeError::Differs)) => {}
            Some(Err(_)) => return,
            None => {}
        }
    }
    // The unstable tree.
    let found = TREES
        .lock()
        .unstable
        .candidates(domain, key, &mut candidates);
    for &upfn in &candidates[..found] {
        if upfn == pfn || !try_get(upfn, Owner::UserAnon) {
            continue;
        }
        // A hit moves `upfn` from the unstable to the stable tree (in `merge`).
        let result = alike(pfn, upfn).then(|| merge(scratch, pfn, upfn, true, key, domain));
        put_page(upfn);
        match result {
            None | Some(Err(MergeError::Differs)) => {}
            Some(_) => return,
        }
    }
    // A full table that cannot grow: the page just is not filed this pass.
    let _ = TREES.lock().unstable.insert(Entry { key, domain, pfn });
}

/// Smart scan (Linux 6.7's, on by default there too): a page that stayed the same through
/// three looks without merging is looked at in only every 2nd pass, from its 4th look every 3rd,
/// from its 6th every 5th, from its 9th every 9th (Linux skips it 1, 2, 4, 8 times between
/// looks). A change seen at a look makes it young again. Whether pass `pass` skips a page of
/// age `age` (looks since its checksum last changed).
fn skipped(age: u32, pass: u64) -> bool {
    let every = match age {
        0..=2 => return false,
        3 => 2,
        4..=5 => 3,
        6..=8 => 5,
        _ => 9,
    };
    !pass.is_multiple_of(every)
}

/// What a scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub pages: u64,
    /// Full passes completed.
    pub passes: u64,
    /// A pass completed that found no mergeable region at all.
    pub nothing_mergeable: bool,
}

/// Duplicates freed in one pass after which compaction consolidates even before the pass ends
/// (256 MiB: a bound on how long the host waits for the saving of a very large pass).
const CONSOLIDATE_EVERY_PAGES: u64 = 65_536;

/// The duplicates merged lie in 4 KiB holes between pages that stay: once merging pauses
/// (the end of a pass, ksmd stopping, or [`CONSOLIDATE_EVERY_PAGES`] freed), compaction makes
/// whole 2 MiB blocks of them for free page reporting. While KSM merges, kcompactd leaves the
/// frees alone ([`consolidation_pending`]): compacting during a merge moves duplicates that are
/// about to be freed into fresh memory, and the host got back 85% of the duplicates, not 96%.
fn consolidate() {
    if counter::pass_merges.swap(0, Relaxed) > 0 {
        super::compaction::consolidate();
    }
}

/// When the last merge happened (ns since boot).
static LAST_MERGE_NS: AtomicU64 = AtomicU64::new(0);

/// How long after its last merge KSM counts as merging still (the pass may go on for long
/// over pages that do not merge: kcompactd then answers other frees again).
const MERGING_FOR: Duration = Duration::from_secs(1);

/// Whether KSM is merging (a merge in the last [`MERGING_FOR`]) and will ask compaction to
/// consolidate the duplicates freed (kcompactd does not start for the frees meanwhile).
pub fn consolidation_pending() -> bool {
    counter::pass_merges.load(Relaxed) > 0
        && Instant::now()
            .as_nanos()
            .saturating_sub(LAST_MERGE_NS.load(Relaxed))
            < MERGING_FOR.as_nanos() as u64
}

/// Ends a full pass: counts it and empties the unstable tree. True if the pass saw no page.
fn end_pass(report: &mut ScanReport) -> bool {
    count(&counter::full_scans, 1);
    report.passes += 1;
    counter::pages_volatile_last.store(counter::pages_volatile_pass.swap(0, Relaxed), Relaxed);
    if counter::pass_regions.swap(0, Relaxed) == 0 {
        report.nothing_mergeable = true;
    }
    consolidate();
    let mut trees = TREES.lock();
    let unstable = core::mem::take(&mut trees.unstable);
    drop(trees);
    // Freed outside the lock (the heap comes after it anyway; shorter hold).
    drop(unstable);
    counter::pass_pages.swap(0, Relaxed) == 0
}

/// Scans up to `budget` pages from the cursor on (stopping at the end of a pass if
/// `stop_at_pass_end`, and once it has worked `time_limit`). Only one scanner at a time: this
/// waits for another to finish.
pub fn scan_pages(budget: u64, stop_at_pass_end: bool, time_limit: Option<Duration>) -> ScanReport {
    while SCANNING.swap(true, Relaxed) {
        task::yield_now();
    }
    let started = Instant::now();
    let mut report = ScanReport::default();
    let mut batch: Vec<(u64, u64)> = Vec::with_capacity(BATCH);
    let mut scratch = Scratch::default();
    while report.pages < budget {
        let from_space = CURSOR_SPACE.load(Relaxed) as SpaceId;
        let Some((id, shared)) = space::next_space(from_space) else {
            CURSOR_SPACE.store(0, Relaxed);
            CURSOR_ADDRESS.store(0, Relaxed);
            let empty = end_pass(&mut report);
            if stop_at_pass_end || empty {
                break;
            }
            continue;
        };
        let from = if id == from_space {
            CURSOR_ADDRESS.load(Relaxed)
        } else {
            0
        };
        batch.clear();
        let want = (budget - report.pages).min(BATCH as u64) as usize;
        let seen;
        let domain;
        let (resume, any_region) = {
            let mut guard = shared.lock();
            domain = guard.merge_domain();
            let result = guard.mergeable_pages(from, want, &mut batch);
            // A reference to each while the space's lock keeps its mapping (and so the page).
            // Pages of other owners (merged already) are counted as scanned and skipped.
            let before = batch.len();
            seen = before;
            batch.retain(|&(_, pfn)| try_get(pfn, Owner::UserAnon));
            count(&counter::pages_scanned, (before - batch.len()) as u64);
            count(&counter::pass_pages, before as u64);
            result
        };
        drop(shared);
        if any_region {
            count(&counter::pass_regions, 1);
        }
        match resume {
            Some(address) => {
                CURSOR_SPACE.store(u64::from(id), Relaxed);
                CURSOR_ADDRESS.store(address, Relaxed);
            }
            None => {
                CURSOR_SPACE.store(u64::from(id) + 1, Relaxed);
                CURSOR_ADDRESS.store(0, Relaxed);
            }
        }
        // At least one per visit, so that a budget ends even over empty regions.
        report.pages += seen.max(1) as u64;
        let mut stopped_at = None;
        for &(address, pfn) in &batch {
            if stopped_at.is_none() && time_limit.is_some_and(|limit| started.elapsed() >= limit) {
                stopped_at = Some(address);
            }
            if stopped_at.is_none() {
                scan_page(&mut scratch, pfn, domain);
            }
            put_page(pfn);
        }
        if let Some(address) = stopped_at {
            // Out of time: the next wake starts at the first page not looked at.
            CURSOR_SPACE.store(u64::from(id), Relaxed);
            CURSOR_ADDRESS.store(address, Relaxed);
            break;
        }
        if time_limit.is_some_and(|limit| started.elapsed() >= limit) {
            break;
        }
    }
    count(&counter::scan_ns, started.elapsed().as_nanos() as u64);
    SCANNING.store(false, Relaxed);
    IDLE.wake_all();
    report
}

/// Scans until `passes` full passes have completed (tests, benchmarks); returns the pages
/// looked at.
pub fn scan_full_passes(passes: u64) -> u64 {
    let mut pages = 0;
    let mut done = 0;
    while done < passes {
        let report = scan_pages(u64::MAX, true, None);
        pages += report.pages;
        done += report.passes;
    }
    pages
}

/// Waits until no scan is in progress (the scanner holds references to pages only during
/// one): the checkers then see exact reference counts.
pub fn wait_idle() {
    IDLE.wait_until(|| !SCANNING.load(Relaxed));
}

/// Unmerges every KSM page of every space (`ksm.run=2`); returns how many were unmerged.
pub fn unmerge_all() -> Result<u64, space::SpaceError> {
    let mut next = 0;
    let mut total = 0;
    while let Some((id, shared)) = space::next_space(next) {
        total += shared.lock().unmerge(space::USER_START, space::USER_END)?;
        next = id + 1;
    }
    let mut trees = TREES.lock();
    let unstable = core::mem::take(&mut trees.unstable);
    drop(trees);
    drop(unstable);
    Ok(total)
}

// ---- ksmd ----------------------------------------------------------------------------------

/// A tunable changed: ksmd looks at them again at once.
pub fn poke() {
    REQUESTED.store(true, Relaxed);
    WAKE.wake_all();
}

/// A region became mergeable: an idle ksmd starts scanning again.
pub fn region_became_mergeable() {
    poke();
}

/// Starts ksmd (once).
pub fn start() {
    if STARTED.swap(true, Relaxed) {
        return;
    }
    if let Err(error) = task::spawn("ksmd", daemon) {
        log::error!("ksm: the scanner did not start: {error:?}");
        STARTED.store(false, Relaxed);
    }
}

fn requested() -> bool {
    REQUESTED.swap(false, Relaxed)
}

fn daemon() {
    let mut was_running = false;
    loop {
        // Stopped in the middle of a pass: what it merged is consolidated now.
        let run = tunables::KSM_RUN.get();
        if run != 1 && was_running {
            consolidate();
        }
        was_running = run == 1;
        match run {
            0 => {
                WAKE.wait_until(requested);
                continue;
            }
            2 => {
                match unmerge_all() {
                    Ok(pages) => log::info!("ksm: run=2 unmerged {pages} pages"),
                    Err(error) => log::warn!("ksm: run=2 could not unmerge everything: {error:?}"),
                }
                WAKE.wait_until(requested);
                continue;
            }
            _ => {}
        }
        // At most a fifth of the time: a wake works sleep/4 at most (merges cost ~25 times
        // what a look at a unique page does, so a page count alone cannot bound the share).
        let sleep = tunables::KSM_SLEEP_MILLISECS.get();
        let limit = (sleep > 0).then(|| Duration::from_micros(sleep * 250));
        let report = scan_pages(tunables::KSM_PAGES_TO_SCAN.get(), false, limit);
        if report.nothing_mergeable {
            // No mergeable region anywhere: no timer until madvise or a tunable wakes us.
            consolidate();
            WAKE.wait_until(requested);
            continue;
        }
        match tunables::KSM_SLEEP_MILLISECS.get() {
            0 => task::yield_now(),
            ms => {
                let _ = WAKE.wait_until_timeout(requested, Duration::from_millis(ms));
            }
        }
    }
}

#[cfg(test)]
#[path = "ksm_tests.rs"]
mod tests;

#[path = "ksm_bench.rs"]
pub mod bench;
