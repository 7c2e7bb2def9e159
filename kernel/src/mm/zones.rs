//! Zone layout: which physical pages fall in DMA (< 16 MiB), DMA32 (< 4 GiB) and Normal,
//! computed from the firmware memory map. Zones with no RAM do not exist.

use super::PAGE_SIZE;
use alloc::vec::Vec;
use boot::{MemoryKind, MemoryRegion};

/// Where the DMA zone ends (16 MiB) and the DMA32 zone (4 GiB).
const DMA_END: u64 = 16 << 20;
const DMA32_END: u64 = 4 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ZoneKind {
    Dma,
    Dma32,
    Normal,
}

impl ZoneKind {
    pub const ALL: [ZoneKind; 3] = [ZoneKind::Dma, ZoneKind::Dma32, ZoneKind::Normal];

    /// The physical range `[start, end)` this zone may cover.
    pub fn limits(self) -> (u64, u64) {
        match self {
            ZoneKind::Dma => (0, DMA_END),
            ZoneKind::Dma32 => (DMA_END, DMA32_END),
            ZoneKind::Normal => (DMA32_END, u64::MAX),
        }
    }

    /// The zone kind whose range holds `pfn` (two comparisons: the page allocator's free path
    /// finds a frame's zone this way).
    #[inline]
    pub const fn of_pfn(pfn: u64) -> ZoneKind {
        if pfn >= DMA32_END / PAGE_SIZE {
            ZoneKind::Normal
        } else if pfn >= DMA_END / PAGE_SIZE {
            ZoneKind::Dma32
        } else {
            ZoneKind::Dma
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ZoneKind::Dma => "DMA",
            ZoneKind::Dma32 => "DMA32",
            ZoneKind::Normal => "Normal",
        }
    }
}

/// The RAM of one zone: its span (first to last RAM page) and how many pages are RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneSpan {
    pub kind: ZoneKind,
    pub start_pfn: u64,
    pub end_pfn: u64,
    pub present_pages: u64,
}

/// The page-aligned RAM ranges of the map (partial pages at the edges are not usable).
pub fn ram_ranges(map: &[MemoryRegion]) -> impl Iterator<Item = (u64, u64)> + '_ {
    map.iter()
        .filter(|region| region.kind == MemoryKind::Ram)
        .filter_map(|region| {
            let start = region.start.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            let end = region.end() / PAGE_SIZE * PAGE_SIZE;
            (end > start).then_some((start, end))
        })
}

/// The zones the memory map gives, lowest first, only those with RAM.
pub fn zone_spans(map: &[MemoryRegion]) -> Vec<ZoneSpan> {
    ZoneKind::ALL
        .into_iter()
        .filter_map(|kind| zone_span(map, kind))
        .collect()
}

/// The RAM of zone `kind` in the map, if it has any (allocates nothing: usable before the heap).
pub fn zone_span(map: &[MemoryRegion], kind: ZoneKind) -> Option<ZoneSpan> {
    let (zone_start, zone_end) = kind.limits();
    let mut span: Option<ZoneSpan> = None;
    for (start, end) in ram_ranges(map) {
        let start = start.max(zone_start);
        let end = end.min(zone_end);
        if end <= start {
            continue;
        }
        let (start_pfn, end_pfn) = (start / PAGE_SIZE, end / PAGE_SIZE);
        let entry = span.get_or_insert(ZoneSpan {
            kind,
            start_pfn,
            end_pfn,
            present_pages: 0,
        });
        entry.start_pfn = entry.start_pfn.min(start_pfn);
        entry.end_pfn = entry.end_pfn.max(end_pfn);
        entry.present_pages += end_pfn - start_pfn;
    }
    span
}

/// Bytes of the page-frame database for this map: one record per frame of every zone's span
/// (holes inside a span included), each zone's table with its padding
/// ([`super::frame::FrameTable::storage_len`]), rounded up to a page.
pub fn database_bytes(map: &[MemoryRegion]) -> u64 {
    ZoneKind::ALL
        .into_iter()
        .filter_map(|kind| zone_span(map, kind))
        .map(|span| span.database_bytes())
        .sum::<u64>()
        .next_multiple_of(PAGE_SIZE)
}

impl ZoneSpan {
    /// Bytes of this zone's frame table, padding included (the next zone's starts there).
    pub fn database_bytes(&self) -> u64 {
        let count = (self.end_pfn - self.start_pfn) as usize;
        let records = super::frame::FrameTable::storage_len(self.start_pfn, count);
        (records * size_of::<super::frame::Frame>()) as u64
    }
}

/// Highest physical address of RAM.
pub fn ram_end(map: &[MemoryRegion]) -> u64 {
    ram_ranges(map).map(|(_, end)| end).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(start: u64, size: u64) -> MemoryRegion {
        MemoryRegion {
            start,
            size,
            kind: MemoryKind::Ram,
        }
    }

    #[test_case]
    fn zones_split_at_16mib_and_4gib() {
        let map = [
            ram(0, 0x9fc00),
            MemoryRegion {
                start: 0xf0000,
                size: 0x10000,
                kind: MemoryKind::Reserved,
            },
            ram(0x100000, (3 << 30) - 0x100000),
            ram(4 << 30, 1 << 30),
        ];
        let spans = zone_spans(&map);
        assert_eq!(spans.len(), 3);
        assert_eq!(
            spans[0],
            ZoneSpan {
                kind: ZoneKind::Dma,
                start_pfn: 0,
                end_pfn: 4096,
                present_pages: 159 + 3840
            }
        );
        assert_eq!(spans[1].kind, ZoneKind::Dma32);
        assert_eq!(spans[1].start_pfn, 4096);
        assert_eq!(spans[1].present_pages, (3u64 << 30) / 4096 - 4096);
        assert_eq!(
            spans[2],
            ZoneSpan {
                kind: ZoneKind::Normal,
                start_pfn: 1 << 20,
                end_pfn: (5 << 30) / 4096,
                present_pages: 1 << 18
            }
        );
    }

    #[test_case]
    fn empty_zones_do_not_exist_and_partial_pages_are_dropped() {
        let map = [ram(0x1000_0800, 0x2000), ram(0x2000_0000, 0x1000)];
        let spans = zone_spans(&map);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].kind, ZoneKind::Dma32);
        assert_eq!(spans[0].present_pages, 2);
    }
}
