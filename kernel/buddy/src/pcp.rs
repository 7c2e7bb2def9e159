//! One list of the per-CPU cache of order-0 pages: the pages themselves, and moving them
//! between the list and a zone's [`FreeArea`] a batch at a time.
//!
//! Owns the list's slots (frame numbers of pages in state [`FrameState::Cached`]). The caller
//! holds the cache's lock for the list, and the zone's lock for the area it passes in; the
//! kernel's `mm::page_alloc` decides when to refill and drain.

use crate::buddy::{FreeArea, MigrateType};
use crate::frame::{FrameIndex, FrameState};

/// Pages moved between a per-CPU list and its zone at a time.
pub const PCP_BATCH: usize = 32;
/// A per-CPU list holding more than this drains a batch back to its zone.
pub const PCP_HIGH: usize = 4 * PCP_BATCH;

/// A stack of cached order-0 pages (frame numbers); the top is the warmest.
pub struct PcpList {
    pfns: [u64; PCP_HIGH + 1],
    len: usize,
}

impl PcpList {
    pub const EMPTY: PcpList = PcpList {
        pfns: [0; PCP_HIGH + 1],
        len: 0,
    };

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cached pages, oldest first.
    pub fn pfns(&self) -> &[u64] {
        &self.pfns[..self.len]
    }

    /// Takes the warmest page; its record is still `Cached` for the caller to relabel.
    pub fn pop(&mut self) -> Option<u64> {
        self.len = self.len.checked_sub(1)?;
        Some(self.pfns[self.len])
    }

    /// Adds a page whose record the caller has made `Cached`. True when the list now holds more
    /// than [`PCP_HIGH`] pages: the caller should [`PcpList::drain_batch`] under the zone lock.
    pub fn push(&mut self, pfn: u64) -> bool {
        self.pfns[self.len] = pfn;
        self.len += 1;
        self.len > PCP_HIGH
    }

    /// Refills up to [`PCP_BATCH`] pages of `kind` from `area` (whose zone this list caches),
    /// keeping more than `mark` pages free there. Each page comes out `Cached`. Returns the
    /// pages added.
    pub fn refill(&mut self, area: &mut FreeArea, kind: MigrateType, mark: u64) -> usize {
        let before = self.len;
        let base_pfn = area.pfn(0);
        let frames = area.frames();
        let (pfns, len) = (&mut self.pfns, &mut self.len);
        // In one batch (whole blocks cut into pages), pushed so that the lowest page is on top.
        let wanted = PCP_BATCH.saturating_sub(*len);
        let taken = area.allocate_batch(0, kind, wanted, mark, |index| {
            frames[index as usize].make_head(FrameState::Cached, 0, kind as u8);
            pfns[*len] = base_pfn + index as u64;
            *len += 1;
        });
        pfns[before..*len].reverse();
        taken
    }

    /// Gives the oldest [`PCP_BATCH`] pages (the bottom of the stack) back to `area`; the warm
    /// ones stay.
    pub fn drain_batch(&mut self, area: &mut FreeArea) {
        let count = PCP_BATCH.min(self.len);
        free_cached(area, &self.pfns[..count]);
        self.pfns.copy_within(count..self.len, 0);
        self.len -= count;
    }

    /// Gives every page back to `area`; returns how many.
    pub fn drain_all(&mut self, area: &mut FreeArea) -> usize {
        free_cached(area, &self.pfns[..self.len]);
        core::mem::take(&mut self.len)
    }
}

/// Frees cached pages of `area`'s zone back to its lists, in one batch: sorted, so that pages
/// that were one block go back as that block.
fn free_cached(area: &mut FreeArea, pfns: &[u64]) {
    let mut indices = [0 as FrameIndex; PCP_HIGH + 1];
    let indices = &mut indices[..pfns.len()];
    for (slot, &pfn) in indices.iter_mut().zip(pfns) {
        let index = area.index_of(pfn).expect("cached pfn is in its zone");
        area.frame(index).set_state(FrameState::Tail);
        *slot = index;
    }
    indices.sort_unstable();
    area.free_batch(indices.iter().map(|&index| (index, 0)));
}
