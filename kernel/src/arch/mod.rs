//! x86_64 specifics: descriptor tables, exceptions, the local APIC timer, the TSC clock and the
//! context switch. Everything here that needs `unsafe` keeps it inside this module.

pub mod apic;
pub mod context;
pub mod extable;
pub mod gdt;
pub mod hot_text;
pub mod hpet;
pub mod idt;
pub mod ioapic;
pub mod memory_type;
pub mod pic;
pub mod pit;
pub mod tsc;
pub mod user_entry;

use x86_64::instructions::{hlt, interrupts};

/// Interrupt vectors the kernel uses (exceptions take 0..32).
pub mod vectors {
    pub const TIMER: u8 = 0x30;
    /// virtio-balloon (MSI-X): configuration change, and used buffers on any queue.
    pub const BALLOON_CONFIG: u8 = 0x40;
    pub const BALLOON_QUEUES: u8 = 0x41;

    pub const SPURIOUS: u8 = 0xff;
}

/// Loads the GDT, TSS and IDT and silences the legacy PIC. Interrupts stay off.
pub fn init_cpu() {
    gdt::init();
    idt::init();
    user_entry::init();
    pic::disable();
    // No floating point anywhere: the kernel is built soft-float and switches no FPU state, so
    // x87 and MMX instructions must fault (CR0.EM: #NM) rather than let tasks see each other's
    // registers; SSE stays off too (CR4.OSFXSR clear: #UD). A task that tries is killed.
    // SAFETY: the kernel itself executes no x87, MMX or SSE instruction.
    unsafe {
        x86_64::registers::control::Cr0::update(|flags| {
            flags.insert(x86_64::registers::control::Cr0Flags::EMULATE_COPROCESSOR)
        })
    };
}

/// A CPU feature the kernel cannot run without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeature {
    /// Its bit in CPUID leaf 1, EDX.
    pub bit: u32,
    /// Its name in Intel's manuals.
    pub name: &'static str,
    /// Its name in QEMU's `-cpu` option.
    pub qemu_flag: &'static str,
    /// What the kernel needs it for.
    pub needed_for: &'static str,
}

const REQUIRED_FEATURES: [CpuFeature; 2] = [
    CpuFeature {
        bit: 5,
        name: "MSR",
        qemu_flag: "msr",
        needed_for: "model-specific registers (the APIC base, SYSCALL, PAT)",
    },
    CpuFeature {
        bit: 9,
        name: "APIC",
        qemu_flag: "apic",
        needed_for: "its timer and every interrupt (the local APIC)",
    },
];

/// The first feature the kernel needs that this CPU lacks (CPUID leaf 1), if any. Without a
/// local APIC the timer calibration would wait forever.
pub fn missing_cpu_feature() -> Option<CpuFeature> {
    let leaf = core::arch::x86_64::__cpuid(1);
    missing_feature_in(leaf.edx)
}

/// [`missing_cpu_feature`] for a given CPUID.1:EDX value.
pub fn missing_feature_in(edx: u32) -> Option<CpuFeature> {
    REQUIRED_FEATURES
        .into_iter()
        .find(|feature| edx & (1 << feature.bit) == 0)
}

/// Halts this CPU for good with interrupts off.
pub fn halt_forever() -> ! {
    interrupts::disable();
    loop {
        hlt();
    }
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether the CPU can map 1 GiB pages.
pub fn has_1gib_pages() -> bool {
    // CPUID leaf 0x8000_0001, EDX bit 26 (Page1GB). Every x86_64 CPU has the extended leaves.
    let leaf = core::arch::x86_64::__cpuid(0x8000_0001);
    leaf.edx & (1 << 26) != 0
}

/// Drops the TLB entry of `address` on this CPU (with one CPU, the only one that could hold
/// it; shootdowns for more CPUs belong here).
pub fn flush_tlb_page(address: u64) {
    x86_64::instructions::tlb::flush(x86_64::VirtAddr::new_truncate(address));
}

/// Drops every non-global TLB entry and the paging-structure caches on this CPU (after page
/// tables were freed, or many entries changed at once).
pub fn flush_tlb_all() {
    x86_64::instructions::tlb::flush_all();
}
