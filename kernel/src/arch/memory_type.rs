//! Memory types (how the CPU caches an access): the MTRRs the firmware set for physical ranges
//! and the PAT entries the page tables select. RAM must be write-back: an uncached direct map
//! is correct but many times slower, and under KVM the guest's MTRRs and PAT decide the type
//! (with an assigned device, or a host that honours guest memory types, a wrong one costs
//! real time). Logged at boot; the tests check that the direct map of RAM resolves to
//! write-back.
//!
//! Owns nothing: reads IA32_MTRRCAP, IA32_MTRR_DEF_TYPE, the fixed and variable MTRRs and
//! IA32_PAT (the `x86_64` crate has no types for these, only [`Msr`]).

use alloc::vec::Vec;
use boot::MemoryRegion;
use x86_64::registers::model_specific::Msr;

const IA32_MTRRCAP: u32 = 0xfe;
const IA32_MTRR_PHYSBASE0: u32 = 0x200;
const IA32_MTRR_FIX64K_00000: u32 = 0x250;
const IA32_MTRR_FIX16K_80000: u32 = 0x258;
const IA32_MTRR_FIX16K_A0000: u32 = 0x259;
const IA32_MTRR_FIX4K_C0000: u32 = 0x268;
const IA32_PAT: u32 = 0x277;
const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;

/// MTRR_DEF_TYPE: MTRRs enabled (E) and fixed ranges enabled (FE).
const DEF_TYPE_ENABLE: u64 = 1 << 11;
const DEF_TYPE_FIXED_ENABLE: u64 = 1 << 10;
/// MTRRCAP: variable range count (VCNT) and fixed ranges supported (FIX).
const CAP_VARIABLE_COUNT: u64 = 0xff;
const CAP_FIXED: u64 = 1 << 8;
/// PHYSMASKn: the range is in use.
const MASK_VALID: u64 = 1 << 11;
/// Address bits of PHYSBASEn/PHYSMASKn: 12 up to the CPU's physical address width.
fn address_bits() -> u64 {
    // CPUID 0x8000_0008 EAX[7:0]: MAXPHYADDR (every x86_64 CPU has the leaf).
    let width = (core::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff).clamp(32, 52);
    ((1u64 << width) - 1) & !0xfff
}

/// A memory type, as MTRRs and PAT entries encode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryType {
    Uncacheable,
    WriteCombining,
    WriteThrough,
    WriteProtected,
    WriteBack,
    /// PAT only: uncacheable unless an MTRR says write-combining.
    UncachedMinus,
    Reserved(u8),
}

impl MemoryType {
    pub fn from_bits(bits: u8) -> MemoryType {
        match bits {
            0 => Self::Uncacheable,
            1 => Self::WriteCombining,
            4 => Self::WriteThrough,
            5 => Self::WriteProtected,
            6 => Self::WriteBack,
            7 => Self::UncachedMinus,
            other => Self::Reserved(other),
        }
    }

    /// The short name Linux prints.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Uncacheable => "UC",
            Self::WriteCombining => "WC",
            Self::WriteThrough => "WT",
            Self::WriteProtected => "WP",
            Self::WriteBack => "WB",
            Self::UncachedMinus => "UC-",
            Self::Reserved(_) => "reserved",
        }
    }
}

/// The eight PAT entries, from an IA32_PAT value.
pub fn pat_entries(pat: u64) -> [MemoryType; 8] {
    core::array::from_fn(|index| MemoryType::from_bits((pat >> (index * 8)) as u8 & 0x7))
}

/// The PAT as this CPU has it (the power-on value 0x0007040600070406 when no one changed it).
pub fn pat() -> Option<[MemoryType; 8]> {
    // CPUID.1:EDX bit 16: PAT.
    if core::arch::x86_64::__cpuid(1).edx & (1 << 16) == 0 {
        return None;
    }
    Some(pat_entries(read_msr(IA32_PAT)))
}

/// Which PAT entry a page-table entry selects: PAT (bit 7 in a 4 KiB entry, bit 12 in a
/// 2 MiB or 1 GiB one), PCD (bit 4), PWT (bit 3).
pub fn pat_index(entry: u64, huge: bool) -> usize {
    let pat_bit = if huge { 12 } else { 7 };
    let pat = (entry >> pat_bit) & 1;
    let pcd = (entry >> 4) & 1;
    let pwt = (entry >> 3) & 1;
    (pat << 2 | pcd << 1 | pwt) as usize
}

fn read_msr(index: u32) -> u64 {
    // SAFETY: callers read only MSRs that CPUID says exist (MTRR and PAT architectural MSRs);
    // reading them has no side effect.
    unsafe { Msr::new(index).read() }
}

/// One variable-range MTRR in use: `[base, base + size)` (`size` 0 for a non-contiguous mask,
/// which matches scattered addresses; `type_of` still applies it exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VariableRange {
    pub base: u64,
    pub size: u64,
    /// The address bits of PHYSMASKn (bits 12 up to the physical address width).
    pub mask: u64,
    pub kind: MemoryType,
}

impl VariableRange {
    /// The range PHYSBASEn and PHYSMASKn describe, for a CPU of `address_bits`.
    pub fn new(base: u64, mask: u64, address_bits: u64) -> VariableRange {
        let mask_bits = mask & address_bits;
        // A contiguous mask is ones from the top of the address bits down to the range's size.
        let size = (!mask_bits & address_bits) + 0x1000;
        VariableRange {
            base: base & address_bits,
            size: if size.is_power_of_two() { size } else { 0 },
            mask: mask_bits,
            kind: MemoryType::from_bits(base as u8),
        }
    }

    fn contains(&self, phys: u64) -> bool {
        (phys & self.mask) == (self.base & self.mask)
    }
}

/// The MTRRs as the firmware left them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mtrrs {
    pub enabled: bool,
    pub fixed_enabled: bool,
    pub default_type: MemoryType,
    pub variable_count: u8,
    pub variable: Vec<VariableRange>,
    /// The types of the 88 fixed ranges below 1 MiB, as (start, size, type).
    pub fixed: Vec<(u64, u64, MemoryType)>,
}

impl Mtrrs {
    /// Reads the MTRRs; `None` when the CPU has none (CPUID.1:EDX bit 12).
    pub fn read() -> Option<Mtrrs> {
        if core::arch::x86_64::__cpuid(1).edx & (1 << 12) == 0 {
            return None;
        }
        let cap = read_msr(IA32_MTRRCAP);
        let def_type = read_msr(IA32_MTRR_DEF_TYPE);
        let variable_count = (cap & CAP_VARIABLE_COUNT) as u8;
        let address_bits = address_bits();
        let variable = (0..u32::from(variable_count))
            .filter_map(|index| {
                let base = read_msr(IA32_MTRR_PHYSBASE0 + 2 * index);
                let mask = read_msr(IA32_MTRR_PHYSBASE0 + 2 * index + 1);
                (mask & MASK_VALID != 0).then(|| VariableRange::new(base, mask, address_bits))
            })
            .collect();
        let mut fixed = Vec::new();
        if cap & CAP_FIXED != 0 {
            let groups: [(u32, u32, u64, u64); 3] = [
                (IA32_MTRR_FIX64K_00000, 1, 0, 64 << 10),
                (IA32_MTRR_FIX16K_80000, 2, 0x8_0000, 16 << 10),
                (IA32_MTRR_FIX4K_C0000, 8, 0xc_0000, 4 << 10),
            ];
            for (first_msr, msrs, start, size) in groups {
                for msr in 0..msrs {
                    // The two 16 KiB MSRs are 0x258 and 0x259; the 4 KiB ones 0x268..0x26f.
                    let index = if first_msr == IA32_MTRR_FIX16K_80000 && msr == 1 {
                        IA32_MTRR_FIX16K_A0000
                    } else {
                        first_msr + msr
                    };
                    let value = read_msr(index);
                    for byte in 0..8u64 {
                        let range_start = start + (u64::from(msr) * 8 + byte) * size;
                        let kind = MemoryType::from_bits((value >> (byte * 8)) as u8);
                        fixed.push((range_start, size, kind));
                    }
                }
            }
        }
        Some(Mtrrs {
            enabled: def_type & DEF_TYPE_ENABLE != 0,
            fixed_enabled: def_type & DEF_TYPE_FIXED_ENABLE != 0 && !fixed.is_empty(),
            default_type: MemoryType::from_bits(def_type as u8),
            variable_count,
            variable,
            fixed,
        })
    }

    /// The type the MTRRs give `phys` (Intel SDM 12.11.4.1: MTRRs off is uncacheable; below
    /// 1 MiB the fixed ranges; else the variable ranges that match, uncacheable winning, then
    /// write-through over write-back; no match: the default).
    pub fn type_of(&self, phys: u64) -> MemoryType {
        if !self.enabled {
            return MemoryType::Uncacheable;
        }
        if self.fixed_enabled && phys < 1 << 20 {
            return self
                .fixed
                .iter()
                .find(|(start, size, _)| (*start..start + size).contains(&phys))
                .map_or(MemoryType::Uncacheable, |(_, _, kind)| *kind);
        }
        let mut matched = self.variable.iter().filter(|range| range.contains(phys));
        let Some(first) = matched.next() else {
            return self.default_type;
        };
        matched.fold(first.kind, |kind, range| match (kind, range.kind) {
            (MemoryType::Uncacheable, _) | (_, MemoryType::Uncacheable) => MemoryType::Uncacheable,
            (MemoryType::WriteThrough, MemoryType::WriteBack)
            | (MemoryType::WriteBack, MemoryType::WriteThrough) => MemoryType::WriteThrough,
            (same, other) if same == other => same,
            // Other overlaps are undefined: say so by the strictest answer.
            _ => MemoryType::Uncacheable,
        })
    }

    /// The parts of RAM that the MTRRs do not make write-back: (start, end, type). The type is
    /// looked up between every two range edges, so the answer is exact for contiguous
    /// variable ranges (the only kind firmware sets).
    pub fn ram_not_write_back(&self, map: &[MemoryRegion]) -> Vec<(u64, u64, MemoryType)> {
        // Every address where the type can change: RAM edges, fixed and variable range edges.
        let mut edges: Vec<u64> = Vec::new();
        for (start, end) in crate::mm::zones::ram_ranges(map) {
            edges.extend([start, end]);
        }
        for (start, size, _) in &self.fixed {
            edges.extend([*start, start + size]);
        }
        for range in &self.variable {
            edges.extend([range.base, range.base.saturating_add(range.size)]);
        }
        edges.sort_unstable();
        edges.dedup();
        let mut found: Vec<(u64, u64, MemoryType)> = Vec::new();
        for (start, end) in crate::mm::zones::ram_ranges(map) {
            for piece in edges.windows(2) {
                let (piece_start, piece_end) = (piece[0].max(start), piece[1].min(end));
                if piece_start >= piece_end {
                    continue;
                }
                let kind = self.type_of(piece_start);
                if kind == MemoryType::WriteBack {
                    continue;
                }
                match found.last_mut() {
                    Some(last) if last.1 == piece_start && last.2 == kind => last.1 = piece_end,
                    _ => found.push((piece_start, piece_end, kind)),
                }
            }
        }
        found
    }
}

/// Logs the MTRRs, the PAT and whether RAM is write-back (a warning for any RAM that is not).
pub fn log_at_boot(map: &[MemoryRegion]) {
    use core::fmt::Write;
    let mut details = alloc::string::String::new();
    let mut verdict = "RAM write-back";
    match Mtrrs::read() {
        None => details.push_str("no MTRRs"),
        Some(mtrrs) => {
            let _ = write!(
                details,
                "MTRRs {}: default {}, fixed ranges {}, {} of {} variable ranges set",
                if mtrrs.enabled { "on" } else { "OFF" },
                mtrrs.default_type.short_name(),
                if mtrrs.fixed_enabled { "on" } else { "off" },
                mtrrs.variable.len(),
                mtrrs.variable_count,
            );
            for range in &mtrrs.variable {
                let _ = write!(
                    details,
                    "; {:#x}+{} MiB {}",
                    range.base,
                    range.size >> 20,
                    range.kind.short_name()
                );
            }
            for (start, end, kind) in mtrrs.ram_not_write_back(map) {
                verdict = "RAM NOT all write-back";
                log::warn!(
                    "memory types: RAM {start:#x}-{end:#x} is {} by the MTRRs, not write-back: slow",
                    kind.short_name()
                );
            }
        }
    }
    match pat() {
        None => details.push_str("; no PAT"),
        Some(entries) => {
            details.push_str("; PAT");
            for entry in entries {
                let _ = write!(details, " {}", entry.short_name());
            }
            // The direct map's entries select PAT entry 0.
            if entries[0] != MemoryType::WriteBack {
                verdict = "RAM NOT write-back";
                log::warn!(
                    "memory types: PAT entry 0, which the direct map uses, is {}, not write-back: slow",
                    entries[0].short_name()
                );
            }
        }
    }
    log::info!("memory types: {verdict} ({details})");
}
