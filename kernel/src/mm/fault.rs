//! The page-fault policy: the one function every page fault reaches, decoded by
//! [`crate::arch::idt`]. It decides whether the fault is resolved (demand paging and
//! copy-on-write will live here), fixed up (a probing access listed in the exception table), or
//! fatal.

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
        return FaultResolution::Fatal("user-mode fault, and no user address space exists yet");
    }
    if fault.protection_violation() {
        FaultResolution::Fatal("kernel access violates the page's protection")
    } else {
        FaultResolution::Fatal("kernel access to an unmapped address")
    }
}
