//! A zone: a range of physical memory with its own lock, buddy allocator, watermarks and frame
//! records. Zones are built once at boot from the firmware map and live forever.

use super::buddy::{FreeArea, MigrateType, PAGEBLOCK_ORDER};
use super::frame::Frame;
use super::zones::ZoneKind;
use crate::sync::{IrqMutex, IrqMutexGuard, LockClass};
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

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
    /// Pages handed to the allocator at boot (present minus reserved).
    pub managed_pages: u64,
    pub watermarks: Watermarks,
    frames: &'static [Frame],
    pageblock_types: &'static [AtomicU8],
    area: IrqMutex<FreeArea>,
    /// Free pages on the lists, readable without the lock (updated under it).
    free_pages: AtomicU64,
}

impl Zone {
    pub fn new(
        kind: ZoneKind,
        start_pfn: u64,
        present_pages: u64,
        frames: &'static [Frame],
    ) -> Zone {
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
            area: IrqMutex::with_class(area, LockClass::Zone),
            free_pages: AtomicU64::new(0),
        }
    }

    pub fn contains(&self, pfn: u64) -> bool {
        (self.start_pfn..self.end_pfn).contains(&pfn)
    }

    /// The record of `pfn`, which must be in the zone.
    pub fn frame(&self, pfn: u64) -> &'static Frame {
        &self.frames[(pfn - self.start_pfn) as usize]
    }

    pub fn frames(&self) -> &'static [Frame] {
        self.frames
    }

    /// The migratetype of the pageblock holding `pfn` (no lock needed).
    pub fn pageblock_type(&self, pfn: u64) -> MigrateType {
        let slot = (pfn >> PAGEBLOCK_ORDER) - (self.start_pfn >> PAGEBLOCK_ORDER);
        MigrateType::from_u8(self.pageblock_types[slot as usize].load(Relaxed))
    }

    /// Locks the zone's allocator.
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
    area: core::mem::ManuallyDrop<IrqMutexGuard<'a, FreeArea>>,
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
