//! The GDT and TSS: kernel and user segments, and separate known-good stacks (IST) for the
//! exceptions that must work even when the current stack is broken (double fault, NMI, machine
//! check).

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

pub const DOUBLE_FAULT_IST: u16 = 0;
pub const NMI_IST: u16 = 1;
pub const MACHINE_CHECK_IST: u16 = 2;
const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(align(16))]
struct IstStack {
    _bytes: [u8; IST_STACK_SIZE],
}

static mut IST_STACKS: [IstStack; 3] = [const {
    IstStack {
        _bytes: [0; IST_STACK_SIZE],
    }
}; 3];

/// Segment selectors, in the order SYSRET needs (user data right before user code).
#[derive(Debug, Clone, Copy)]
pub struct Selectors {
    pub kernel_code: SegmentSelector,
    pub kernel_data: SegmentSelector,
    pub user_data: SegmentSelector,
    pub user_code: SegmentSelector,
    pub tss: SegmentSelector,
}

/// The TSS. The CPU reads it (RSP0 on every entry from ring 3, the IST on listed exceptions);
/// the kernel writes only RSP0, through [`set_kernel_entry_stack`].
pub(super) static mut TSS: TaskStateSegment = TaskStateSegment::new();
/// Offset of RSP0 in the TSS (for the SYSCALL entry code, which reads it directly).
pub(super) const TSS_RSP0_OFFSET: usize = 4;
static TSS_BUILT: Once<()> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

/// The stack the CPU switches to when an interrupt, exception or system call arrives from ring
/// 3 (TSS.RSP0). Part of each thread's context: the scheduler saves and restores it.
pub fn kernel_entry_stack() -> u64 {
    // SAFETY: a plain read of a field only this CPU's kernel code writes, with no reference
    // kept; the CPU itself only reads it.
    unsafe { TSS.privilege_stack_table[0].as_u64() }
}

/// Sets TSS.RSP0 (see [`kernel_entry_stack`]). Interrupts must be off: an entry from ring 3
/// must never see a half-switched thread.
pub fn set_kernel_entry_stack(top: u64) {
    debug_assert!(!x86_64::instructions::interrupts::are_enabled());
    // SAFETY: one CPU, interrupts off: nothing else writes the TSS now, and no reference to it
    // is held (the GDT descriptor holds only its address). A 64-bit aligned store is atomic
    // for the CPU reading it on a later ring change.
    unsafe { TSS.privilege_stack_table[0] = VirtAddr::new(top) };
}

/// Address of the RSP0 field, for the ring-3 entry code that sets it to its own stack pointer.
pub fn kernel_entry_stack_slot() -> *mut u64 {
    // SAFETY: only an address is formed; `privilege_stack_table` is an array of `VirtAddr`,
    // a transparent u64.
    unsafe { (&raw mut TSS.privilege_stack_table[0]).cast::<u64>() }
}

/// Installs the IST stacks. Runs once, before the TSS is loaded.
fn build_tss() {
    for (slot, index) in [DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST]
        .into_iter()
        .enumerate()
    {
        // Only the address is taken; the stacks are used by the CPU, never by Rust code.
        let stack = (&raw const IST_STACKS)
            .cast::<IstStack>()
            .wrapping_add(slot);
        let top = VirtAddr::from_ptr(stack) + IST_STACK_SIZE as u64;
        // SAFETY: runs once, before the TSS is loaded; nothing else refers to it yet.
        unsafe { TSS.interrupt_stack_table[index as usize] = top };
    }
}

/// Loads the kernel's GDT and TSS on this CPU.
pub fn init() {
    TSS_BUILT.call_once(build_tss);
    let (gdt, selectors) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let kernel_code = gdt.append(Descriptor::kernel_code_segment());
        let kernel_data = gdt.append(Descriptor::kernel_data_segment());
        let user_data = gdt.append(Descriptor::user_data_segment());
        let user_code = gdt.append(Descriptor::user_code_segment());
        // SAFETY: the TSS is a static that lives forever, built above; the descriptor records
        // its address (no reference is kept, so RSP0 may be written later).
        let tss = gdt.append(unsafe { Descriptor::tss_segment_unchecked(&raw const TSS) });

        (
            gdt,
            Selectors {
                kernel_code,
                kernel_data,
                user_data,
                user_code,
                tss,
            },
        )
    });
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, whose descriptors are valid kernel code
    // and data segments and an available TSS that lives forever (in a static).
    unsafe {
        CS::set_reg(selectors.kernel_code);
        SS::set_reg(selectors.kernel_data);
        DS::set_reg(selectors.kernel_data);
        ES::set_reg(selectors.kernel_data);
        load_tss(selectors.tss);
    }
}

pub fn selectors() -> Selectors {
    GDT.get().expect("gdt::init ran").1
}
