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

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

fn build_tss() -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    for (slot, index) in [DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST]
        .into_iter()
        .enumerate()
    {
        // Only the address is taken; the stacks are used by the CPU, never by Rust code.
        let stack = (&raw const IST_STACKS)
            .cast::<IstStack>()
            .wrapping_add(slot);
        let top = VirtAddr::from_ptr(stack) + IST_STACK_SIZE as u64;
        tss.interrupt_stack_table[index as usize] = top;
    }
    tss
}

/// Loads the kernel's GDT and TSS on this CPU.
pub fn init() {
    let tss = TSS.call_once(build_tss);
    let (gdt, selectors) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let kernel_code = gdt.append(Descriptor::kernel_code_segment());
        let kernel_data = gdt.append(Descriptor::kernel_data_segment());
        let user_data = gdt.append(Descriptor::user_data_segment());
        let user_code = gdt.append(Descriptor::user_code_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
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
