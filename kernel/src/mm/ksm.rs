//! KSM: merges identical pages of the user address spaces' mergeable regions into one
//! write-protected shared page (owner [`Owner::KsmShared`]); a write to it gets a private copy
//! again (`space::break_cow`, counted as `cow_ksm`).
//!
//! Owns the scanner thread (ksmd), its cursor, the stable and unstable trees, the shared zero
//! page and the counters (Linux's names). Reaches address spaces through `space::next_space`,
//! `space::find_space` and their public primitives (`mergeable_pages`, `write_protect`,
//! `replace_page`, `translate`, `region_at`, `unmerge`), the reverse map through
//! `rmap::{mappings, add, remove}`, and the allocator through `page_alloc` (`set_owner`,
//! `free`). Its lock ([`LockClass::Ksm`]) comes after the spaces and the reverse map and before
//! the heap: it is never held while a space or the reverse map is locked by KSM itself, and the
//! spaces' paths (the last unmapping of a shared page) take it under their own lock.
//!
//! # Per page (Linux's order)
//! 1. Pages already merged (owner `KsmShared`, which includes the zero page) are skipped.
//! 2. A checksum of the page is kept in the frame record's `private` field (bit 31 set marks
//!    it as a checksum). The hash is a four-lane multiply-rotate over the page's 64-bit words
//!    (xxh64's round function; one multiply per word, no table, no crate): it has to notice a
//!    change anywhere in the page cheaply, not resist an attacker, because every merge compares
//!    the pages byte for byte again under the locks. A page whose checksum changed since the
//!    last pass is *volatile* and waits for the next pass (so a merge takes two passes).
//! 3. With `ksm.use_zero_pages` 1, a zero-filled page maps the shared zero page.
//! 4. The stable tree (KSM pages), then the unstable tree (pages seen this pass). A hit in the
//!    unstable tree merges the pair (the tree's page becomes the KSM page, the other's mappings
//!    move to it); a miss inserts the page. The unstable tree is emptied at the start of every
//!    full pass.
//!
//! # The trees: hash buckets, not ordered trees
//! Both are maps from the 31-bit checksum to the pages with that checksum, and every candidate
//! is compared with the whole page before anything is done with it. Pages in the unstable tree
//! are writable and change under it: an ordered tree keyed by content would then be ordered
//! wrongly and a lookup could miss or loop through a wrong path; a bucket keyed by the checksum
//! at insertion stays a correct (bounded) lookup: a changed page just no longer compares equal
//! and is skipped. Lookups cost a `BTreeMap` search plus at most [`BUCKET_LOOKS`] page
//! compares. Stable pages are read-only, so their bucket is always right; a stable page leaves
//! its bucket when its last reference goes ([`page_freeing`]).
//!
//! # Merging (the same shape as migration, `mm::migrate`)
//! The scanner holds a reference to both pages. It locks every address space that maps either
//! (in id order), checks that the mappings are the ones it read, that every one lies in a
//! mergeable region, that neither page is pinned (`extra_references`) or being migrated,
//! write-protects every mapping (each flushed from the TLB), compares the pages, and only then
//! points every mapping of the duplicate at the KSM page (read-only) and moves the reverse map;
//! the duplicate's last reference is the scanner's, whose `put` frees it. A task's write before
//! the write-protect lands in its page and makes the compare fail; after it, the write faults
//! and waits for the space's lock, then copies the KSM page: no write is lost.
//!
//! # Compaction
//! KSM pages are movable: compaction isolates them like anonymous pages (not the zero page),
//! `migrate_user_page` moves one only while it is in the stable tree and calls [`page_moved`]
//! under the mapping spaces' locks, so the tree names the new frame. A scanner holding a
//! reference to a KSM page pins it (the move is refused), and a merge into a KSM page checks,
//! under its locks, that the page is still in the stable tree.
//!
//! # Scan rate (the defaults)
//! Measured under TCG on this QEMU (`scenario=ksm`, see README): hashing or comparing a page
//! costs about 10 us, a full look at one page (walk, checksum, bucket lookup, compare) 8-15 us
//! and a merge about 30 us. At `pages_to_scan` = 400 and `sleep_millisecs` = 20 a wake works
//! about 4-6 ms per 24-26 ms, at most ~20% of the CPU, and scans ~16,000 pages per second.
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
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use core::time::Duration;

/// Marks `private` as holding a checksum.
const CHECKSUM_VALID: u32 = 1 << 31;
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
}

/// Both trees are keyed by (checksum, pfn): a bucket is the range of one checksum. No
/// allocation per entry beyond the B-tree's nodes (the heap is a linked list: many small
/// allocations make every allocation and free slower).
/// Keys are (merge domain, checksum, pfn): pages of different domains never meet in a bucket.
/// `domains` names each stable page's domain (for the paths that start from a frame).
struct Trees {
    stable: BTreeSet<(u32, u32, u64)>,
    domains: BTreeMap<u64, u32>,
    unstable: BTreeMap<(u32, u32, u64), Mapping>,
}

static TREES: IrqMutex<Trees> = IrqMutex::with_class(
    Trees {
        stable: BTreeSet::new(),
        domains: BTreeMap::new(),
        unstable: BTreeMap::new(),
    },
    LockClass::Ksm,
);

fn bucket(domain: u32, key: u32) -> core::ops::RangeInclusive<(u32, u32, u64)> {
    (domain, key, 0)..=(domain, key, u64::MAX)
}

/// The merge domain of the KSM page `pfn`, if it is in the stable tree.
fn stable_domain(pfn: u64) -> Option<u32> {
    let key = frame(pfn)?.private.load(Relaxed);
    let trees = TREES.lock();
    let domain = *trees.domains.get(&pfn)?;
    trees.stable.contains(&(domain, key, pfn)).then_some(domain)
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
    (hash >> 32) as u32 | CHECKSUM_VALID
}

fn same_content(a: u64, b: u64) -> bool {
    let (a, b) = (words(a), words(b));
    (0..WORDS).all(|index| word(a, index) == word(b, index))
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
    let mut trees = TREES.lock();
    if let Some(domain) = trees.domains.remove(&pfn) {
        trees.stable.remove(&(domain, key, pfn));
    }
}

/// Compaction moved the KSM page `from` to `to` (under every mapping space's lock, see
/// `mm::migrate`): the stable tree and the checksum follow. Allocates at most a tree node.
pub fn page_moved(from: u64, to: u64) {
    let (Some(old), Some(new)) = (frame(from), frame(to)) else {
        return;
    };
    let key = old.private.load(Relaxed);
    new.private.store(key, Relaxed);
    let mut trees = TREES.lock();
    if let Some(domain) = trees.domains.remove(&from)
        && trees.stable.remove(&(domain, key, from))
    {
        trees.stable.insert((domain, key, to));
        trees.domains.insert(to, domain);
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
    let mut sharing = 0;
    let mut chains = 0;
    let mut dups = 0;
    let mut last_key = None;
    let mut in_bucket = 0u64;
    for &(domain, key, pfn) in &trees.stable {
        let key = (domain, key);
        sharing += u64::from(rmap::map_count(pfn).saturating_sub(1));
        if last_key == Some(key) {
            in_bucket += 1;
            dups += 1;
            if in_bucket == 2 {
                chains += 1;
            }
        } else {
            last_key = Some(key);
            in_bucket = 1;
        }
    }
    let (shared, unshared) = (trees.stable.len() as u64, trees.unstable.len() as u64);
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
        full_scans: counter::full_scans.load(Relaxed),
        ksm_zero_pages: zero_pages,
        general_profit: ((sharing + zero_pages) * PAGE_SIZE) as i64
            - (unshared * size_of::<((u32, u64), Mapping)>() as u64) as i64,
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
    }
}

/// The console's `ksm` report: the run state, then one counter per line (Linux's names).
pub fn write_report(out: &mut impl core::fmt::Write) -> core::fmt::Result {
    let stats = stats();
    writeln!(
        out,
        "run {} pages_to_scan {} sleep_millisecs {} use_zero_pages {} max_page_sharing {}",
        tunables::KSM_RUN.get(),
        tunables::KSM_PAGES_TO_SCAN.get(),
        tunables::KSM_SLEEP_MILLISECS.get(),
        tunables::KSM_USE_ZERO_PAGES.get(),
        tunables::KSM_MAX_PAGE_SHARING.get()
    )?;
    for (name, value) in [
        ("pages_shared", stats.pages_shared as i64),
        ("pages_sharing", stats.pages_sharing as i64),
        ("pages_unshared", stats.pages_unshared as i64),
        ("pages_volatile", stats.pages_volatile as i64),
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
    ] {
        writeln!(out, "{name:<20} {value}")?;
    }
    Ok(())
}

/// The cost of the two page operations a scan is made of, on a page of `pfn`'s memory:
/// (checksum ns, whole-page compare ns), each the mean of `rounds` (benchmarks, scenario=ksm).
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
    let started = Instant::now();
    let mut sink = 0u32;
    for _ in 0..rounds {
        sink ^= checksum(a.pfn());
    }
    let checksum_ns = started.elapsed().as_nanos() as u64 / rounds.max(1);
    let started = Instant::now();
    let mut equal = 0;
    for _ in 0..rounds {
        equal += u64::from(same_content(a.pfn(), b.pfn()));
    }
    let compare_ns = started.elapsed().as_nanos() as u64 / rounds.max(1);
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
    let mut all: Vec<u64> = Vec::new();
    if trees.domains.len() != trees.stable.len() {
        return Err(alloc::format!(
            "ksm: {} stable pages, {} with a domain",
            trees.stable.len(),
            trees.domains.len()
        ));
    }
    for &(domain, key, pfn) in &trees.stable {
        if trees.domains.get(&pfn) != Some(&domain) {
            return Err(alloc::format!(
                "ksm: stable {pfn:#x} filed in domain {domain}"
            ));
        }
        {
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
            all.push(pfn);
        }
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
    /// No heap for the reverse map's entries (checked before anything changes).
    NoMemory,
}

/// Heap the reverse map may need per mapping moved to a KSM page (a side-table entry, its
/// share of a tree node, the vector growing), reserved before a merge changes anything.
const RMAP_HEAP_PER_MAPPING: u64 = 256;

/// Points every mapping of `page` at `target` (see the module documentation). The caller holds
/// a reference to both. `target_new`: `target` is an unstable-tree page that becomes a KSM
/// page with checksum `key` (its mappings are write-protected and checked too); otherwise it
/// is a KSM page already (stable, or the zero page).
fn merge(
    page: u64,
    target: u64,
    target_new: bool,
    key: u32,
    domain: u32,
) -> Result<(), MergeError> {
    if page == target {
        return Err(MergeError::Changed);
    }
    let mut page_maps = rmap::mappings(page);
    let mut target_maps = if target_new {
        rmap::mappings(target)
    } else {
        Vec::new()
    };
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
    let mut ids: Vec<SpaceId> = page_maps
        .iter()
        .chain(target_maps.iter())
        .map(|mapping| mapping.space)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    // The reverse map allocates under the spaces' locks: make sure it can, or refuse now.
    if super::heap::reserve(
        RMAP_HEAP_PER_MAPPING * (page_maps.len() + target_maps.len() + 1) as u64,
    )
    .is_err()
    {
        return Err(MergeError::NoMemory);
    }
    let mut spaces = Vec::with_capacity(ids.len());
    for &id in &ids {
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
    let mut guards = Vec::with_capacity(spaces.len());
    let outcome = (|| {
        // In id order (the lock order's rule for address spaces).
        for shared in &spaces {
            guards.push(shared.lock());
        }
        let mut now = rmap::mappings(page);
        now.sort_unstable();
        if now != page_maps {
            return Err(MergeError::Changed);
        }
        if target_new {
            let mut now = rmap::mappings(target);
            now.sort_unstable();
            if now != target_maps {
                return Err(MergeError::Changed);
            }
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
        for (pfn, maps) in [(page, &page_maps), (target, &target_maps)] {
            for mapping in maps.iter() {
                let guard = guards
                    .iter_mut()
                    .find(|guard| guard.id() == mapping.space)
                    .ok_or(MergeError::Changed)?;
                if guard.merge_domain() != domain {
                    return Err(MergeError::Changed);
                }
                let mergeable = guard
                    .region_at(mapping.address)
                    .is_some_and(|region| region.flags.contains(space::RegionFlags::MERGEABLE));
                if !mergeable || !guard.write_protect(mapping.address, pfn) {
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
        for &mapping in &page_maps {
            let guard = guards
                .iter_mut()
                .find(|guard| guard.id() == mapping.space)
                .ok_or(MergeError::Changed)?;
            // Checked above under the same locks: it still maps `page`, now read-only.
            let replaced = guard.replace_page(mapping.address, page, target);
            debug_assert!(replaced);
            rmap::add(target, mapping);
            // The scanner's reference keeps `page` alive: this is never the last one.
            let _ = rmap::remove(page, mapping);
        }
        Ok(())
    })();
    // Last locked, first released (each guard restores the interrupt state from before it).
    while let Some(guard) = guards.pop() {
        drop(guard);
    }
    match outcome {
        Ok(()) => count(&counter::merges, 1),
        Err(MergeError::Pinned) => count(&counter::merge_pinned, 1),
        Err(MergeError::Changed) => count(&counter::merge_changed, 1),
        Err(MergeError::Differs) => count(&counter::merge_differs, 1),
        Err(MergeError::Full | MergeError::NoMemory) => {}
    }
    outcome
}

// ---- Scanning ------------------------------------------------------------------------------

/// One page, seen at `mapping`; the caller holds a reference to it.
fn scan_page(pfn: u64, mapping: Mapping, domain: u32) {
    count(&counter::pages_scanned, 1);
    let Some(record) = frame(pfn) else {
        return;
    };
    if record.owner() != Owner::UserAnon {
        return;
    }
    let key = checksum(pfn);
    if record.private.swap(key, Relaxed) != key {
        count(&counter::pages_volatile_pass, 1);
        return;
    }
    if tunables::KSM_USE_ZERO_PAGES.get() == 1
        && key == zero_checksum()
        && is_zero_filled(pfn)
        && let Some(zero) = zero_page()
    {
        let _ = merge(pfn, zero, false, key, domain);
        return;
    }
    // The stable tree.
    let candidates: Vec<u64> = TREES
        .lock()
        .stable
        .range(bucket(domain, key))
        .map(|&(_, _, kpfn)| kpfn)
        .take(BUCKET_LOOKS)
        .collect();
    for kpfn in candidates {
        if !try_get(kpfn, Owner::KsmShared) {
            continue;
        }
        let result = if same_content(pfn, kpfn) {
            Some(merge(pfn, kpfn, false, key, domain))
        } else {
            None
        };
        put_page(kpfn);
        match result {
            Some(Ok(())) => return,
            Some(Err(MergeError::Full)) => count(&counter::sharing_cap_hits, 1),
            Some(Err(_)) => return,
            None => {}
        }
    }
    // The unstable tree.
    let candidates: Vec<u64> = TREES
        .lock()
        .unstable
        .range(bucket(domain, key))
        .map(|(&(_, _, upfn), _)| upfn)
        .take(BUCKET_LOOKS)
        .collect();
    for upfn in candidates {
        if upfn == pfn || !try_get(upfn, Owner::UserAnon) {
            continue;
        }
        let result = same_content(pfn, upfn).then(|| merge(pfn, upfn, true, key, domain));
        let merged = matches!(result, Some(Ok(())));
        if merged {
            let mut trees = TREES.lock();
            trees.unstable.remove(&(domain, key, upfn));
            trees.stable.insert((domain, key, upfn));
            trees.domains.insert(upfn, domain);
        }
        put_page(upfn);
        if result.is_some() {
            return;
        }
    }
    TREES.lock().unstable.insert((domain, key, pfn), mapping);
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

/// Ends a full pass: counts it and empties the unstable tree. True if the pass saw no page.
fn end_pass(report: &mut ScanReport) -> bool {
    count(&counter::full_scans, 1);
    report.passes += 1;
    counter::pages_volatile_last.store(counter::pages_volatile_pass.swap(0, Relaxed), Relaxed);
    if counter::pass_regions.swap(0, Relaxed) == 0 {
        report.nothing_mergeable = true;
    }
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
            let guard = shared.lock();
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
                scan_page(pfn, Mapping { space: id, address }, domain);
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
    loop {
        match tunables::KSM_RUN.get() {
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
