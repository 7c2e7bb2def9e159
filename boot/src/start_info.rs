//! Reads the firmware's `hvm_start_info` (PVH boot protocol) into a [`BootInfo`] the kernel keeps.
//!
//! The firmware's structures live in low memory that the kernel will reuse, so everything is
//! copied here, before `kernel_entry` runs.

use crate::DIRECT_MAP_BASE;
use core::mem::MaybeUninit;

/// Most memory-map entries kept (QEMU's PVH option ROM passes at most 128).
pub const MAX_MEMORY_REGIONS: usize = 128;
/// Size of the command-line buffer, in bytes, with its terminating NUL: QEMU's PVH option ROM
/// has 4 KiB for it, and a longer line overflows that buffer into the memory map.
pub const MAX_CMDLINE: usize = 4096;
/// The highest physical address x86_64 can have (52 address bits).
pub const PHYSICAL_ADDRESS_LIMIT: u64 = 1 << 52;

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
    /// The firmware's entry count (`memmap_entries`), as it said.
    pub regions_given: u32,
    /// Whether the firmware's start_info was found (right magic, readable).
    pub start_info_found: bool,
    /// The magic word found at the start_info's address (0 if unreadable).
    pub start_info_magic: u32,
    /// The start_info's version and map address, when the map could not be read.
    pub map_unreadable: Option<(u32, u64)>,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// The command line filled its whole buffer without a terminating NUL: it was longer
    /// than [`MAX_CMDLINE`] - 1 bytes, and what is kept is cut.
    pub cmdline_truncated: bool,
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

    /// The kernel command line (`-append`) as the firmware gave it: bytes, not necessarily
    /// UTF-8 (the kernel's command-line parser says which words are not).
    pub fn cmdline_bytes(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    /// Whether the memory map is one the kernel can trust (see [`check_memory_map`]).
    pub fn check_memory_map(&self) -> Result<(), MemoryMapProblem> {
        if !self.start_info_found {
            return Err(MemoryMapProblem::NoStartInfo {
                magic: self.start_info_magic,
            });
        }
        if let Some((version, address)) = self.map_unreadable {
            return Err(MemoryMapProblem::Unreadable { version, address });
        }
        if self.regions_given as usize > MAX_MEMORY_REGIONS {
            return Err(MemoryMapProblem::TooManyEntries {
                given: self.regions_given,
            });
        }
        check_memory_map(self.memory_map())
    }
}

/// What makes a memory map untrustworthy. QEMU's PVH option ROM keeps its boot information
/// behind its 4 KiB command-line buffer (here the start_info 32 bytes after its end), so a
/// longer command line overwrites it with text: a wrong magic, entries beyond the physical
/// address space, overlaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMapProblem {
    /// No `hvm_start_info` (wrong magic or unreadable address): not booted through PVH, or
    /// the start_info was overwritten (QEMU keeps it after the command-line buffer too).
    NoStartInfo { magic: u32 },
    /// More entries than any firmware passes.
    TooManyEntries { given: u32 },
    /// The start_info gives no map the kernel can read (version 0, or an address outside the
    /// early direct map).
    Unreadable { version: u32, address: u64 },
    /// An entry that reaches beyond the 52-bit physical address space (or wraps around).
    BeyondAddressSpace { region: MemoryRegion },
    /// Two entries claim the same memory, one of them as RAM.
    Overlap {
        first: MemoryRegion,
        second: MemoryRegion,
    },
    /// Not one page of RAM.
    NoRam,
}

impl core::fmt::Display for MemoryMapProblem {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let range = |region: &MemoryRegion| {
            (
                region.start,
                region.start.wrapping_add(region.size),
                region.kind,
            )
        };
        match self {
            Self::NoStartInfo { magic } => {
                write!(f, "no PVH start_info: its magic reads {magic:#x}")?;
                let bytes = magic.to_le_bytes();
                if bytes.iter().all(|byte| byte.is_ascii_graphic()) {
                    write!(f, " (text: '{}')", bytes.escape_ascii())?;
                }
                write!(
                    f,
                    ", not {HVM_START_MAGIC:#x}. Either the kernel was not booted through PVH (QEMU's -kernel), or the start_info was overwritten: a kernel command line longer than {} bytes overflows QEMU's PVH buffer into it; shorten the command line",
                    MAX_CMDLINE - 1
                )
            }
            Self::TooManyEntries { given } => write!(
                f,
                "{given} entries, more than the {MAX_MEMORY_REGIONS} any firmware passes"
            ),
            Self::BeyondAddressSpace { region } => {
                let (start, end, kind) = range(region);
                write!(
                    f,
                    "entry {start:#x}-{end:#x} {kind:?} reaches beyond the 52-bit physical address space"
                )
            }
            Self::Overlap { first, second } => {
                let (a_start, a_end, a_kind) = range(first);
                let (b_start, b_end, b_kind) = range(second);
                write!(
                    f,
                    "entries {a_start:#x}-{a_end:#x} {a_kind:?} and {b_start:#x}-{b_end:#x} {b_kind:?} overlap"
                )
            }
            Self::Unreadable { version, address } => write!(
                f,
                "the start_info (version {version}) gives no readable map (at {address:#x})"
            ),
            Self::NoRam => f.write_str("no RAM in it"),
        }
    }
}

/// Checks a memory map sorted by start address: every entry inside the physical address
/// space, no RAM entry overlapping another entry, and some RAM.
pub fn check_memory_map(map: &[MemoryRegion]) -> Result<(), MemoryMapProblem> {
    for region in map {
        let end = region.start.checked_add(region.size);
        if end.is_none_or(|end| end > PHYSICAL_ADDRESS_LIMIT) {
            return Err(MemoryMapProblem::BeyondAddressSpace { region: *region });
        }
    }
    for pair in map.windows(2) {
        let (first, second) = (pair[0], pair[1]);
        let involves_ram = first.kind == MemoryKind::Ram || second.kind == MemoryKind::Ram;
        if second.start < first.end() && involves_ram {
            return Err(MemoryMapProblem::Overlap { first, second });
        }
    }
    if !map
        .iter()
        .any(|region| region.kind == MemoryKind::Ram && region.size > 0)
    {
        return Err(MemoryMapProblem::NoRam);
    }
    Ok(())
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
        regions_given: 0,
        start_info_found: false,
        start_info_magic: 0,
        map_unreadable: None,
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        cmdline_truncated: false,
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
    info.start_info_magic = start.magic;
    if start.magic != HVM_START_MAGIC {
        return;
    }
    info.start_info_found = true;
    if start.rsdp_paddr != 0 {
        info.rsdp_phys = Some(start.rsdp_paddr);
    }
    if phys_ok(start.cmdline_paddr, MAX_CMDLINE as u64) {
        // Up to the NUL; a buffer full without one held a longer line, cut to MAX_CMDLINE - 1.
        let mut len = 0;
        info.cmdline_truncated = true;
        while len < MAX_CMDLINE {
            // SAFETY: inside the early direct map (checked above for the whole buffer).
            let byte: u8 = unsafe { read_phys(start.cmdline_paddr + len as u64) };
            if byte == 0 {
                info.cmdline_truncated = false;
                break;
            }
            info.cmdline[len] = byte;
            len += 1;
        }
        info.cmdline_len = len.min(MAX_CMDLINE - 1);
    }
    let entry_size = size_of::<HvmMemmapEntry>() as u64;
    info.regions_given = start.memmap_entries;
    // A count beyond what any firmware passes is reported by `check_memory_map`; read no more.
    let count = (start.memmap_entries as u64).min(MAX_MEMORY_REGIONS as u64);
    if start.version < 1 || !phys_ok(start.memmap_paddr, count * entry_size) {
        info.map_unreadable = Some((start.version, start.memmap_paddr));
    } else {
        for index in 0..count {
            // SAFETY: inside the early direct map (checked above for the whole table).
            let entry: HvmMemmapEntry =
                unsafe { read_phys(start.memmap_paddr + index * entry_size) };
            // microvm's qboot can end the map with a zero-size entry of type 0.
            if entry.size == 0 {
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
