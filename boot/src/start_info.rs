//! Reads the firmware's `hvm_start_info` (PVH boot protocol) into a [`BootInfo`] the kernel keeps.
//!
//! The firmware's structures live in low memory that the kernel will reuse, so everything is
//! copied here, before `kernel_entry` runs.

use crate::DIRECT_MAP_BASE;
use core::mem::MaybeUninit;

/// Most memory-map entries kept (QEMU's PVH option ROM passes at most 128).
pub const MAX_MEMORY_REGIONS: usize = 128;
/// Longest command line kept, in bytes (QEMU's fw_cfg buffer is 4 KiB).
pub const MAX_CMDLINE: usize = 4096;

const HVM_START_MAGIC: u32 = 0x336e_c578;

/// The e820-style type of a memory-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    Ram,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Unusable,
    Disabled,
    Persistent,
    Other(u32),
}

impl MemoryKind {
    fn from_e820(kind: u32) -> Self {
        match kind {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Unusable,
            6 => Self::Disabled,
            7 => Self::Persistent,
            other => Self::Other(other),
        }
    }
}

/// One entry of the firmware memory map: `size` bytes from physical address `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

impl MemoryRegion {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// What the boot protocol told us, copied out of firmware memory.
pub struct BootInfo {
    regions: [MemoryRegion; MAX_MEMORY_REGIONS],
    region_count: usize,
    /// Entries the firmware passed beyond [`MAX_MEMORY_REGIONS`] (dropped).
    pub regions_dropped: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Physical address of the ACPI RSDP, if the firmware gave one.
    pub rsdp_phys: Option<u64>,
    /// Physical address of `hvm_start_info`.
    pub start_info_phys: u64,
    /// The TSC read by the first instruction of the 32-bit entry.
    pub entry_tsc: u64,
}

impl BootInfo {
    /// The memory map, sorted by start address, without empty entries.
    pub fn memory_map(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    /// The kernel command line (`-append`), up to its first invalid UTF-8 byte.
    pub fn cmdline(&self) -> &str {
        let bytes = &self.cmdline[..self.cmdline_len];
        match core::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                // The prefix up to `valid_up_to` is valid UTF-8 by definition.
                core::str::from_utf8(&bytes[..error.valid_up_to()]).unwrap_or("")
            }
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

static mut BOOT_INFO: MaybeUninit<BootInfo> = MaybeUninit::uninit();

unsafe extern "Rust" {
    /// Defined by the kernel (its `entry_point!` macro).
    fn kernel_entry(info: &'static BootInfo) -> !;
}

/// Reads physical memory through the early direct map.
///
/// # Safety
/// `phys` must be below the early direct map's end and hold a valid `T`.
unsafe fn read_phys<T: Copy>(phys: u64) -> T {
    // SAFETY: the caller guarantees the address is mapped and holds a `T`; unaligned reads are
    // allowed because firmware tables are not guaranteed to be aligned.
    unsafe { core::ptr::read_unaligned((DIRECT_MAP_BASE + phys) as *const T) }
}

fn phys_ok(phys: u64, len: u64) -> bool {
    phys != 0
        && phys
            .checked_add(len)
            .is_some_and(|end| end <= crate::EARLY_DIRECT_MAP_SIZE)
}

/// First Rust code: called by the 64-bit stub on the boot stack with `hvm_start_info`'s address.
pub(crate) extern "C" fn boot_main(start_info_phys: u32) -> ! {
    // SAFETY: single-threaded, interrupts off, and nothing else has a reference to BOOT_INFO:
    // this is the only writer, and it runs once before the kernel starts.
    let info = unsafe {
        let slot = (&raw mut BOOT_INFO).cast::<BootInfo>();
        slot.write(empty_boot_info());
        &mut *slot
    };
    // SAFETY: `boot_entry_tsc` was written by the 32-bit entry and is identity-mapped.
    info.entry_tsc = unsafe { core::ptr::read_volatile(&raw const boot_entry_tsc) };
    info.start_info_phys = start_info_phys as u64;
    read_start_info(info, start_info_phys as u64);
    // SAFETY: `kernel_entry` is defined by the kernel binary with this exact signature.
    unsafe { kernel_entry(info) }
}

unsafe extern "C" {
    static boot_entry_tsc: u64;
}

fn empty_boot_info() -> BootInfo {
    BootInfo {
        regions: [MemoryRegion {
            start: 0,
            size: 0,
            kind: MemoryKind::Reserved,
        }; MAX_MEMORY_REGIONS],
        region_count: 0,
        regions_dropped: 0,
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        rsdp_phys: None,
        start_info_phys: 0,
        entry_tsc: 0,
    }
}

fn read_start_info(info: &mut BootInfo, phys: u64) {
    if !phys_ok(phys, size_of::<HvmStartInfo>() as u64) {
        return;
    }
    // SAFETY: checked to lie inside the early direct map; the firmware put the struct there.
    let start: HvmStartInfo = unsafe { read_phys(phys) };
    if start.magic != HVM_START_MAGIC {
        return;
    }
    if start.rsdp_paddr != 0 {
        info.rsdp_phys = Some(start.rsdp_paddr);
    }
    if phys_ok(start.cmdline_paddr, MAX_CMDLINE as u64) {
        let mut len = 0;
        while len < MAX_CMDLINE - 1 {
            // SAFETY: inside the early direct map (checked above for the whole buffer).
            let byte: u8 = unsafe { read_phys(start.cmdline_paddr + len as u64) };
            if byte == 0 {
                break;
            }
            info.cmdline[len] = byte;
            len += 1;
        }
        info.cmdline_len = len;
    }
    let entry_size = size_of::<HvmMemmapEntry>() as u64;
    let count = start.memmap_entries as u64;
    if start.version >= 1 && phys_ok(start.memmap_paddr, count * entry_size) {
        for index in 0..count {
            // SAFETY: inside the early direct map (checked above for the whole table).
            let entry: HvmMemmapEntry =
                unsafe { read_phys(start.memmap_paddr + index * entry_size) };
            // microvm's qboot can end the map with a zero-size entry of type 0.
            if entry.size == 0 {
                continue;
            }
            if info.region_count == MAX_MEMORY_REGIONS {
                info.regions_dropped += 1;
                continue;
            }
            info.regions[info.region_count] = MemoryRegion {
                start: entry.addr,
                size: entry.size,
                kind: MemoryKind::from_e820(entry.kind),
            };
            info.region_count += 1;
        }
        info.regions[..info.region_count].sort_unstable_by_key(|region| region.start);
    }
}
