//! The first memory check at boot: before the kernel touches memory beyond what the loader put
//! there (its heap's bootstrap region is in `.noinit`, past the loaded image), it makes sure the
//! firmware's memory map can be trusted and that there is enough RAM to run.
//!
//! Owns nothing; reads the [`BootInfo`] and the kernel layout. Allocates nothing (the heap is
//! not up yet), so a problem can be described before anything else could fail.

use super::zones;
use boot::{AddrRange, BootInfo, MemoryMapProblem, MemoryRegion};

const MIB: u64 = 1 << 20;

/// Free RAM the kernel needs beyond its image and frame database to start its threads, page
/// tables and drivers (the demo uses about 1.2 MiB; the scenarios want a free 2 MiB block).
pub const RUNNING_RESERVE: u64 = 6 * MIB;

/// Why the kernel cannot boot on this memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMemoryError {
    /// The memory map itself is not sane.
    BadMap(MemoryMapProblem),
    /// Too little RAM, or the kernel image (which includes the bootstrap heap) not all in RAM.
    TooSmall {
        ram_bytes: u64,
        image_end: u64,
        needed_mib: u64,
    },
    /// The frame database must lie in one free range of RAM below 4 GiB (the early direct map
    /// builds it); the largest such range is too small for this much RAM.
    DatabaseDoesNotFit {
        ram_bytes: u64,
        database_bytes: u64,
        largest_low_range: u64,
    },
}

impl core::fmt::Display for BootMemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Self::BadMap(problem) => write!(f, "the firmware's memory map is not sane: {problem}"),
            Self::TooSmall {
                ram_bytes,
                image_end,
                needed_mib,
            } => write!(
                f,
                "guest memory too small: {} KiB of RAM; this kernel needs at least {needed_mib} MiB (its image with the {} MiB bootstrap heap ends at {} KiB, then the frame database and {} MiB to run): boot with QEMU_MEM={needed_mib}M or more",
                ram_bytes >> 10,
                super::heap::BOOTSTRAP_HEAP_SIZE >> 20,
                image_end.div_ceil(1024),
                RUNNING_RESERVE >> 20,
            ),
            Self::DatabaseDoesNotFit {
                ram_bytes,
                database_bytes,
                largest_low_range,
            } => write!(
                f,
                "guest memory too large: the frame database for {} MiB of RAM needs {} MiB in one free range of RAM below 4 GiB, and the largest holds {} MiB: boot with at most {} MiB",
                ram_bytes >> 20,
                database_bytes.div_ceil(MIB),
                largest_low_range >> 20,
                // One 32-byte record per 4 KiB frame: 128 bytes of RAM per byte of database.
                largest_low_range * 128 / MIB,
            ),
        }
    }
}

/// RAM the firmware keeps out of the map besides the hole below 1 MiB (QEMU's PVH boot: about
/// 132 KiB for its tables), which `minimum_mib` must not promise to the kernel.
const FIRMWARE_SLACK: u64 = 256 << 10;

/// The least RAM (in MiB) a guest needs when the image ends at `image_end`: everything below
/// the image's end, a frame database for that much memory (the whole guest's, each zone's
/// rounded up to a page), the running reserve and [`FIRMWARE_SLACK`]. The hole below the image
/// (the PC's 640 KiB to 1 MiB) cancels out: `check_size` counts only RAM above the image.
pub fn minimum_mib(image_end: u64) -> u64 {
    let base = image_end.next_multiple_of(super::PAGE_SIZE) + RUNNING_RESERVE;
    let mut mib = base.div_ceil(MIB);
    loop {
        // One 32-byte record per 4 KiB frame (1/128 of memory), plus a page per zone.
        let database = (mib * MIB).div_ceil(128) + 3 * super::PAGE_SIZE;
        if mib * MIB >= base + database + FIRMWARE_SLACK {
            return mib;
        }
        mib += 1;
    }
}

/// Bytes of RAM in the map.
fn ram_bytes(map: &[MemoryRegion]) -> u64 {
    zones::ram_ranges(map).map(|(start, end)| end - start).sum()
}

/// Checks the map (`check_memory_map`), that the image lies in RAM, that RAM holds the image,
/// the frame database and [`RUNNING_RESERVE`], and that the database fits below 4 GiB.
pub fn check(info: &BootInfo, image: AddrRange) -> Result<(), BootMemoryError> {
    info.check_memory_map().map_err(BootMemoryError::BadMap)?;
    check_size(info.memory_map(), image)
}

/// The size part of [`check`], for a map already known to be sane.
pub fn check_size(map: &[MemoryRegion], image: AddrRange) -> Result<(), BootMemoryError> {
    let ram = ram_bytes(map);
    let too_small = BootMemoryError::TooSmall {
        ram_bytes: ram,
        image_end: image.end,
        needed_mib: minimum_mib(image.end),
    };
    let image_in_ram =
        zones::ram_ranges(map).any(|(start, end)| start <= image.start && image.end <= end);
    if !image_in_ram {
        return Err(too_small);
    }
    // Everything below the image's end is reserved (low memory, the image), then the database.
    let reserved_below_image: u64 = zones::ram_ranges(map)
        .map(|(start, end)| end.min(image.end).saturating_sub(start))
        .sum();
    let database_bytes = zones::database_bytes(map);
    let free = ram.saturating_sub(reserved_below_image + database_bytes);
    if free < RUNNING_RESERVE {
        return Err(too_small);
    }
    // Where page_alloc::init can put the database: free RAM above the image, below 4 GiB.
    let largest_low_range = zones::ram_ranges(map)
        .map(|(start, end)| {
            end.min(boot::EARLY_DIRECT_MAP_SIZE)
                .saturating_sub(start.max(image.end.next_multiple_of(super::PAGE_SIZE)))
        })
        .max()
        .unwrap_or(0);
    if database_bytes > largest_low_range {
        return Err(BootMemoryError::DatabaseDoesNotFit {
            ram_bytes: ram,
            database_bytes,
            largest_low_range,
        });
    }
    Ok(())
}

/// Logs the memory map as error lines (after a problem with it).
pub fn log_map(map: &[MemoryRegion]) {
    for region in map {
        log::error!(
            "  memory map: {:#014x}-{:#014x} {:?}",
            region.start,
            region.start.wrapping_add(region.size),
            region.kind
        );
    }
}
