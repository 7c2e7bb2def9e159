//! A frame-state check of one zone's [`FreeArea`] through its public interface, for the host
//! tests and the model test on the host (the kernel's `mm::checker` does the same for every
//! zone, with the per-CPU caches and the owners' data).
//!
//! Proves: every frame is reserved or covered by exactly one block (free, cached, isolated,
//! allocated) whose other frames are tails; blocks are naturally aligned and inside the zone;
//! every free head is on the one list of its order and migratetype, each list's links and
//! counts are consistent, its reported blocks form one run at the tail starting at the list's
//! boundary, and the free and reported page counts match the lists.

use crate::buddy::{FreeArea, MAX_ORDER, MigrateType};
use crate::frame::{FrameFlags, FrameState, NONE};

/// What a check counted, in pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AreaCensus {
    pub reserved: u64,
    pub free: u64,
    pub cached: u64,
    pub isolated: u64,
    pub allocated: u64,
    pub free_blocks: u64,
    pub reported: u64,
}

/// An inconsistency: what, and at which frame index (or list order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckError {
    pub what: &'static str,
    pub at: u64,
}

fn fail<T>(what: &'static str, at: impl Into<u64>) -> Result<T, CheckError> {
    Err(CheckError {
        what,
        at: at.into(),
    })
}

impl FreeArea {
    /// Checks the zone's records and lists (see the module's documentation).
    pub fn check(&self) -> Result<AreaCensus, CheckError> {
        let frames = self.frames();
        let mut census = AreaCensus::default();
        let mut listed_blocks = 0u64;
        let mut listed_pages = 0u64;
        for order in 0..=MAX_ORDER {
            let mut reported_pages = 0;
            for kind in MigrateType::ALL {
                let (reported, boundary) = self.reported_run(order, kind);
                let (mut count, mut seen_reported, mut in_run) = (0u32, 0u32, false);
                let mut prev = NONE;
                for index in self.list_iter(order, kind) {
                    let frame = self.frame(index);
                    if frame.state() != FrameState::Free
                        || frame.order() != order
                        || frame.list() != kind as u8
                    {
                        return fail("listed block is not a free head of its list", index);
                    }
                    if frame.prev() != prev {
                        return fail("list link back is wrong", index);
                    }
                    if !self.pfn(index).is_multiple_of(1 << order) {
                        return fail("listed block not aligned to its order", index);
                    }
                    if Some(index) == boundary {
                        in_run = true;
                    }
                    let flagged = frame.flags().contains(FrameFlags::REPORTED);
                    if flagged != in_run {
                        return fail("reported flag and the list's boundary disagree", index);
                    }
                    seen_reported += u32::from(flagged);
                    prev = index;
                    count += 1;
                    if count > self.list_count(order, kind) {
                        return fail("list longer than its count (a cycle?)", index);
                    }
                }
                if self.list_end(order, kind, crate::buddy::End::Tail)
                    != (prev != NONE).then_some(prev)
                {
                    return fail("list tail is wrong", order);
                }
                if count != self.list_count(order, kind) || seen_reported != reported {
                    return fail("list count or reported count is wrong", order);
                }
                if boundary.is_some() && !in_run {
                    return fail("boundary is not on its list", order);
                }
                reported_pages += u64::from(reported) << order;
                listed_blocks += u64::from(count);
                listed_pages += u64::from(count) << order;
            }
            if reported_pages != self.reported_pages(order) {
                return fail("reported pages per order are wrong", order);
            }
            census.reported += reported_pages;
        }
        let mut index = 0usize;
        while index < frames.len() {
            let frame = &frames[index];
            let state = frame.state();
            let size = match state {
                FrameState::Reserved => {
                    census.reserved += 1;
                    index += 1;
                    continue;
                }
                FrameState::Tail => return fail("tail frame outside any block", index as u64),
                FrameState::Cached if crate::pcp::pcp_order_slot(frame.order()).is_none() => {
                    return fail(
                        "cached block of an order with no per-CPU list",
                        index as u64,
                    );
                }
                _ => 1usize << frame.order(),
            };
            if !self.pfn(index as u32).is_multiple_of(size as u64) || index + size > frames.len() {
                return fail("block not aligned or not inside the zone", index as u64);
            }
            if frames
                .sub(index + 1..index + size)
                .iter()
                .any(|tail| tail.state() != FrameState::Tail)
            {
                return fail("a frame inside a block is not a tail", index as u64);
            }
            let counter = match state {
                FrameState::Free => {
                    census.free_blocks += 1;
                    &mut census.free
                }
                FrameState::Cached => &mut census.cached,
                FrameState::Isolated => &mut census.isolated,
                _ => &mut census.allocated,
            };
            *counter += size as u64;
            index += size;
        }
        if census.free_blocks != listed_blocks || census.free != listed_pages {
            return fail("free heads and listed blocks differ", census.free_blocks);
        }
        if census.free != self.free_pages {
            return fail("the area's free count is wrong", self.free_pages);
        }
        Ok(census)
    }
}
