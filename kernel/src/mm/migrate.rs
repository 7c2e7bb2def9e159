//! Page migration: moves a movable page's contents to another frame and points every mapping
//! of it there, so that compaction can change which frame holds a page (anonymous or KSM)
//! without its tasks noticing; KSM's stable tree follows a moved KSM page.
//!
//! Owns the move of one page. Reaches address spaces through `space::find_space` and their
//! `replace_page`, the reverse map through `rmap::mappings` and `rmap::move_mappings`, and the
//! allocator through `page_alloc`. Touches no free list.
//!
//! The protocol (the same for every path that meets a page being moved):
//! 1. The mover takes a reference with `Frame::try_get` and sets `FrameFlags::MIGRATING`
//!    (compaction's isolation). From then on the page cannot be freed under it: a task that
//!    unmaps or exits drops only its mapping's reference, and the mover's `put` frees the page
//!    if it was the last.
//! 2. It reads the page's mappings, then locks every address space that maps it, in id order
//!    (the lock order's rule for address spaces), with interrupts off while they are held.
//!    Faults, copy-on-write, `munmap`, clone and exit all take their space's lock, so none of
//!    them runs during the move; on one CPU the move is atomic.
//! 3. Under the locks it checks that nothing changed (same mappings, each page table still maps
//!    the page) and that the page is not pinned (no reference beyond its mappings and the
//!    mover's): any difference abandons the move, nothing lost.
//! 4. It copies the contents, points every mapping at the new frame (flushing each TLB entry),
//!    moves the reverse map, and gives the new frame the page's owner.
//! 5. The mover clears `MIGRATING` and drops its reference; the old frame, now unmapped, is
//!    freed by that `put`.

use super::PAGE_SIZE;
use super::frame::{FrameFlags, Owner};
use super::page_alloc::{self, Pages};
use super::rmap::{self, Mapping};
use super::space;
use alloc::vec::Vec;

/// Why a page was not moved (it stays where it was, intact).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrateError {
    /// No mapping is left (the task unmapped it meanwhile).
    Unmapped,
    /// Someone holds a reference besides its mappings (the page is in use outside the page
    /// tables): it must not move.
    Pinned,
    /// Its mappings changed between the look and the move (a clone, an unmap, an exit).
    Changed,
    /// The target is not a fresh order-0 page.
    BadTarget,
}

/// Moves the user page `pfn` into `target`. The caller holds a reference to `pfn` (step 1 of
/// the protocol) and keeps it; `target` is a freshly allocated order-0 page with one reference.
/// On success `target` holds the page, owned by its mappings; on failure the target comes back.
pub fn migrate_user_page(pfn: u64, target: Pages) -> Result<(), (MigrateError, Pages)> {
    if target.order() != 0 {
        return Err((MigrateError::BadTarget, target));
    }
    let moved = match rmap::single_mapping(pfn) {
        Some(mapping) => migrate_single(pfn, &target, mapping),
        None => migrate_mapped_often(pfn, &target),
    };
    match moved {
        Ok(()) => {
            // The mappings own the new frame now (the reverse map records them).
            target.into_raw();
            Ok(())
        }
        Err(error) => Err((error, target)),
    }
}

/// A page mapped more than once: every mapping space locked, in id order.
fn migrate_mapped_often(pfn: u64, target: &Pages) -> Result<(), MigrateError> {
    let mut mappings = rmap::mappings(pfn);
    if mappings.is_empty() {
        return Err(MigrateError::Unmapped);
    }
    mappings.sort_unstable();
    // Every space that maps the page, in id order (the mappings are sorted by space first).
    let mut spaces = Vec::with_capacity(mappings.len());
    for mapping in &mappings {
        if spaces
            .last()
            .is_some_and(|(id, _): &(u32, space::SharedSpace)| *id == mapping.space)
        {
            continue;
        }
        let shared = space::find_space(mapping.space).ok_or(MigrateError::Changed)?;
        spaces.push((mapping.space, shared));
    }
    let mut guards = Vec::with_capacity(spaces.len());
    let outcome = (|| {
        for (_, shared) in &spaces {
            guards.push(shared.lock());
        }
        let mut now = rmap::mappings(pfn);
        now.sort_unstable();
        if now != mappings {
            return Err(MigrateError::Changed);
        }
        let record = page_alloc::zone_of(pfn)
            .ok_or(MigrateError::Changed)?
            .frame(pfn);
        if record.extra_references(1) != 0 {
            return Err(MigrateError::Pinned);
        }
        // A KSM page moves only while it is in the stable tree (the tree follows it below,
        // under these locks; a page that became a KSM page after isolation is in it too).
        let owner = record.owner();
        let ksm_page = owner == Owner::KsmShared;
        if !matches!(owner, Owner::UserAnon | Owner::KsmShared)
            || (ksm_page && !super::ksm::is_stable(pfn))
        {
            return Err(MigrateError::Changed);
        }
        for mapping in &mappings {
            let guard = guards
                .iter_mut()
                .find(|guard| guard.id() == mapping.space)
                .ok_or(MigrateError::Changed)?;
            if guard.translate(mapping.address).map(|(at, _)| at) != Some(pfn) {
                return Err(MigrateError::Changed);
            }
        }
        copy_page(pfn, target);
        for &Mapping { space, address } in &mappings {
            let guard = guards
                .iter_mut()
                .find(|guard| guard.id() == space)
                .ok_or(MigrateError::Changed)?;
            // Checked above under the same locks: it still maps `pfn`.
            let replaced = guard.replace_page(address, pfn, target.pfn());
            debug_assert!(replaced);
        }
        page_alloc::set_owner(target.pfn(), owner);
        rmap::move_mappings(pfn, target.pfn());
        if ksm_page {
            super::ksm::page_moved(pfn, target.pfn());
        }
        Ok(())
    })();
    // Last locked, first released: each guard restores the interrupt state from before it,
    // so the first one must go last (or interrupts come back while later locks are held).
    while let Some(guard) = guards.pop() {
        drop(guard);
    }
    outcome
}

/// The common case, a page mapped once: the same steps with one space and nothing allocated.
fn migrate_single(pfn: u64, target: &Pages, mapping: Mapping) -> Result<(), MigrateError> {
    let shared = space::find_space(mapping.space).ok_or(MigrateError::Changed)?;
    let mut guard = shared.lock();
    if rmap::single_mapping(pfn) != Some(mapping) {
        return Err(MigrateError::Changed);
    }
    let record = page_alloc::zone_of(pfn)
        .ok_or(MigrateError::Changed)?
        .frame(pfn);
    if record.extra_references(1) != 0 {
        return Err(MigrateError::Pinned);
    }
    if guard.translate(mapping.address).map(|(at, _)| at) != Some(pfn) {
        return Err(MigrateError::Changed);
    }
    copy_page(pfn, target);
    if !guard.replace_page(mapping.address, pfn, target.pfn()) {
        return Err(MigrateError::Changed);
    }
    page_alloc::set_owner(target.pfn(), record.owner());
    rmap::move_mappings(pfn, target.pfn());
    drop(guard);
    Ok(())
}

/// Copies the page `pfn` into `target`.
fn copy_page(pfn: u64, target: &Pages) {
    // SAFETY: the caller holds the lock of every space mapping `pfn` (nobody can write it
    // while we copy) and owns `target`; both are direct-mapped RAM of 4 KiB.
    unsafe {
        core::ptr::copy_nonoverlapping(
            super::phys_to_virt(pfn * PAGE_SIZE) as *const u8,
            target.virt() as *mut u8,
            PAGE_SIZE as usize,
        )
    };
}

/// Step 1 for a page found by scanning: takes a reference and marks it as being moved. False
/// if it is not an allocated user page (any more), or is being moved already.
pub fn isolate_user_page(pfn: u64) -> bool {
    let Some(zone) = page_alloc::zone_of(pfn) else {
        return false;
    };
    let record = zone.frame(pfn);
    if record.order() != 0
        || !matches!(record.owner(), Owner::UserAnon | Owner::KsmShared)
        || super::ksm::is_zero_page(pfn)
        || record.flags().contains(FrameFlags::MIGRATING)
        || !record.try_get()
    {
        return false;
    }
    record.set_flags(record.flags() | FrameFlags::MIGRATING);
    true
}

/// Step 5: clears the mark and drops the mover's reference (freeing the old frame if that was
/// the last, as after a successful move).
pub fn release_user_page(pfn: u64) {
    let Some(zone) = page_alloc::zone_of(pfn) else {
        return;
    };
    let record = zone.frame(pfn);
    record.set_flags(record.flags() - FrameFlags::MIGRATING);
    if record.put() {
        // A KSM page whose mappings all went meanwhile leaves the stable tree first (after a
        // move the tree already names the new frame: nothing to do).
        super::ksm::page_freeing(pfn);
        // SAFETY: that was the last reference: the page has no mapping left (they moved to
        // the new frame, or went meanwhile) and no other holder, so the mover owns it.
        let page = unsafe { Pages::from_raw(pfn, 0) };
        if let Err(error) = page_alloc::free(page) {
            log::error!("migration: freeing the old frame {pfn:#x}: {error:?}");
        }
    }
}
