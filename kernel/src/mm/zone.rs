//! A zone: a range of physical memory with its own lock, buddy allocator, watermarks and frame
//! records. Zones are built once at boot from the firmware map and live forever.
//!
//! A zone's records are initialised from its start up to its *initialised boundary*
//! ([`Zone::initialised_end_pfn`]); beyond it they hold whatever the memory held, and their
//! free pages are counted as [`Zone::deferred_pages`] until `mm::deferred_init` writes them
//! and gives them to the buddy allocator (under the zone's lock). Code that walks records
//! ([`Zone::frames`], the checker, compaction's scanners) stops at the boundary.

use super::buddy::{FreeArea, MigrateType, PAGEBLOCK_ORDER};
use super::frame::{Frame, FrameIndex, FrameTable};
use super::zones::ZoneKind;
use crate::sync::{LockClass, PreemptMutex, PreemptMutexGuard};
use core::sync::atomic::{
    AtomicU8, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

/// Free-page thresholds of a zone, in pages. Below `min` only allocations allowed to use
/// reserves succeed; `low` and `high` steer background reclaim (the balloon, compaction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watermarks {
    pub min: u64,
    pub low: u64,
    pub high: u64,
}

pub struct Zone {
    pub kind: ZoneKind,
    /// First and one-past-last pfn of the zone's span (holes inside are reserved records).
    pub start_pfn: u64,
    pub end_pfn: u64,
    /// RAM pages in the span.
    pub present_pages: u64,
    /// Pages the allocator manages (present minus reserved), from the memory map at boot:
    /// those on its lists, in caches or allocated, plus the deferred ones.
    pub managed_pages: u64,
    pub watermarks: Watermarks,
    frames: FrameTable,
    pageblock_types: &'static [AtomicU8],
    area: PreemptMutex<FreeArea>,
    /// Free pages on the lists, readable without the lock (updated under it).
    free_pages: AtomicU64,
    /// Records below this pfn are initialised (only grows, under the zone's lock, in whole
    /// max-order blocks of absolute pfns, so a buddy of an initialised block is initialised).
    initialised_end: AtomicU64,
    /// Managed pages beyond the boundary: free, but not yet on the lists.
    deferred_pages: AtomicU64,
}

impl Zone {
    pub fn new(kind: ZoneKind, start_pfn: u64, present_pages: u64, frames: FrameTable) -> Zone {
        // Frame indices of a zone are `FrameIndex`es (`Zone::frame` narrows to one).
        assert!(
            frames.len() <= FrameIndex::MAX as usize,
            "a zone of {} frames",
            frames.len()
        );
        let area = FreeArea::new(start_pfn, frames);
        Zone {
            pageblock_types: area.pageblock_types(),
            kind,
            start_pfn,
            end_pfn: start_pfn + frames.len() as u64,
            present_pages,
            managed_pages: 0,
            watermarks: Watermarks::default(),
            frames,
            area: PreemptMutex::with_class(area, LockClass::Zone),
            free_pages: AtomicU64::new(0),
            initialised_end: AtomicU64::new(start_pfn),
            deferred_pages: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn contains(&self, pfn: u64) -> bool {
        (self.start_pfn..self.end_pfn).contains(&pfn)
    }

    /// The record of `pfn`, which must be in the zone, below its initialised boundary.
    #[inline]
    pub fn frame(&self, pfn: u64) -> &'static Frame {
        self.frames.at(self.index_of(pfn))
    }

    /// [`Zone::frame`] and [`Zone::pageblock_type`] of `pfn` together (the free path's
    /// look-up: the record's pageblock run is its pageblock, one shift for both).
    #[inline]
    pub fn frame_and_pageblock_type(&self, pfn: u64) -> (&'static Frame, MigrateType) {
        // The table is laid out for the zone's base (`FreeArea::new` checks): runs are
        // pageblocks counted from the zone's first.
        let (frame, pageblock) = self.frames.at_with_run(self.index_of(pfn));
        let kind = MigrateType::from_u8(self.pageblock_types[pageblock].load(Relaxed));
        (frame, kind)
    }

    /// The index in the zone's records of `pfn`, which must be in the zone, below its
    /// initialised boundary.
    #[inline(always)]
    fn index_of(&self, pfn: u64) -> usize {
        debug_assert!(
            pfn < self.initialised_end_pfn(),
            "record of pfn {pfn:#x}, beyond the initialised boundary"
        );
        // A zone's index fits a `FrameIndex` (`Zone::new` checks): the narrowing spares the
        // table the clamp it applies to wider indices.
        (pfn - self.start_pfn) as FrameIndex as usize
    }

    /// The initialised records (from the zone's start up to its boundary).
    pub fn frames(&self) -> FrameTable {
        self.frames
            .prefix((self.initialised_end_pfn() - self.start_pfn) as usize)
    }

    /// Every record of the span, initialised or not: for `mm::deferred_init` only.
    pub(super) fn all_records(&self) -> FrameTable {
        self.frames
    }

    /// Records below this pfn are initialised; `end_pfn` once all are.
    pub fn initialised_end_pfn(&self) -> u64 {
        // Acquire: the records below it were written before it was published.
        self.initialised_end.load(Acquire)
    }

    /// Whether `pfn` is in the zone and its record initialised.
    #[inline]
    pub fn has_record(&self, pfn: u64) -> bool {
        pfn >= self.start_pfn && pfn < self.initialised_end_pfn()
    }

    /// Managed pages not yet initialised (free, but not yet on the lists).
    pub fn deferred_pages(&self) -> u64 {
        self.deferred_pages.load(Relaxed)
    }

    /// Pageblocks wholly initialised, from the zone's first (scanners stop there).
    pub fn initialised_pageblocks(&self) -> usize {
        let end = self.initialised_end_pfn();
        if end <= self.start_pfn {
            return 0;
        }
        (((end - 1) >> PAGEBLOCK_ORDER) + 1 - (self.start_pfn >> PAGEBLOCK_ORDER)) as usize
    }

    /// Sets the deferred pages before any is initialised (boot).
    pub(super) fn set_deferred_pages(&mut self, pages: u64) {
        *self.deferred_pages.get_mut() = pages;
    }

    /// Moves the boundary to `end_pfn` after the records below it were written and `freed`
    /// deferred pages went on the lists. The caller holds the zone's lock.
    pub(super) fn advance_initialised(&self, _locked: &ZoneGuard<'_>, end_pfn: u64, freed: u64) {
        self.deferred_pages.fetch_sub(freed, Relaxed);
        self.initialised_end.store(end_pfn, Release);
    }

    /// The migratetype of the pageblock holding `pfn` (no lock needed).
    #[inline]
    pub fn pageblock_type(&self, pfn: u64) -> MigrateType {
        let slot = (pfn >> PAGEBLOCK_ORDER) - (self.start_pfn >> PAGEBLOCK_ORDER);
        MigrateType::from_u8(self.pageblock_types[slot as usize].load(Relaxed))
    }

    /// Locks the zone's allocator.
    #[inline]
    pub fn lock(&self) -> ZoneGuard<'_> {
        ZoneGuard {
            zone: self,
            area: core::mem::ManuallyDrop::new(self.area.lock()),
        }
    }

    /// Free pages on the lists (a snapshot).
    pub fn free_pages(&self) -> u64 {
        self.free_pages.load(Relaxed)
    }
}

/// The zone's allocator, locked. Keeps the lock-free free-page count in step on release, and
/// passes a reporting request on once the lock is released.
pub struct ZoneGuard<'a> {
    zone: &'a Zone,
    area: core::mem::ManuallyDrop<PreemptMutexGuard<'a, FreeArea>>,
}

impl core::ops::Deref for ZoneGuard<'_> {
    type Target = FreeArea;
    fn deref(&self) -> &FreeArea {
        &self.area
    }
}

impl core::ops::DerefMut for ZoneGuard<'_> {
    fn deref_mut(&mut self) -> &mut FreeArea {
        &mut self.area
    }
}

impl Drop for ZoneGuard<'_> {
    fn drop(&mut self) {
        self.zone.free_pages.store(self.area.free_pages, Relaxed);
        let report = self.area.take_report_wanted();
        // SAFETY: the guard is dropped exactly once, here, and `self.area` is not used after.
        unsafe { core::mem::ManuallyDrop::drop(&mut self.area) };
        if report {
            super::reporting::request();
        }
    }
}
