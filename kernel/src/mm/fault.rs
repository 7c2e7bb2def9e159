//! The page-fault policy: the one function every page fault reaches, decoded by
//! [`crate::arch::idt`]. It decides whether the fault is resolved (a task's fault goes to its
//! address space: demand paging and copy-on-write), fixed up (a probing access listed in the
//! exception table), or fatal (for a task: it is killed; for the kernel: a panic).

use crate::arch::extable;
use crate::arch::idt::{FaultResolution, PageFault};

pub fn handle_page_fault(fault: &PageFault) -> FaultResolution {
    if !fault.user_mode()
        && let Some(fixup) = extable::fixup_for(fault.instruction)
    {
        extable::record_probe_fault(fault.address, fault.error.bits());
        return FaultResolution::ContinueAt(fixup);
    }
    if fault.user_mode() {
        return crate::user::handle_page_fault(fault);
    }

    if fault.protection_violation() {
        FaultResolution::Fatal("kernel access violates the page's protection")
    } else {
        FaultResolution::Fatal("kernel access to an unmapped address")
    }
}
