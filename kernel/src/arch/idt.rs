//! The IDT: a handler for every exception the CPU can raise, the timer and spurious vectors.
//!
//! Exceptions in kernel code are fatal (a panic that names the exception and the saved state)
//! except where the kernel expects them: `int3` returns, and page faults go to the single
//! memory-management entry [`crate::mm::fault::handle_page_fault`], which decides whether the
//! fault is resolved, fixed up through the exception table, or fatal.

use super::{apic, gdt, vectors};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};
use x86_64::{PrivilegeLevel, VirtAddr};

static IDT: Once<InterruptDescriptorTable> = Once::new();

/// Breakpoints (`int3`) taken since boot.
pub static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
/// Page faults taken since boot, all kinds.
pub static PAGE_FAULTS: AtomicU64 = AtomicU64::new(0);

/// A decoded page fault, as handed to the memory manager.
#[derive(Clone, Copy, Debug)]
pub struct PageFault {
    /// The faulting linear address (CR2).
    pub address: VirtAddr,
    /// The instruction that faulted.
    pub instruction: VirtAddr,
    pub error: PageFaultErrorCode,
}

impl PageFault {
    /// The page was present: this is a protection violation, not a missing mapping.
    pub fn protection_violation(&self) -> bool {
        self.error
            .contains(PageFaultErrorCode::PROTECTION_VIOLATION)
    }
    pub fn write(&self) -> bool {
        self.error.contains(PageFaultErrorCode::CAUSED_BY_WRITE)
    }
    pub fn user_mode(&self) -> bool {
        self.error.contains(PageFaultErrorCode::USER_MODE)
    }
    pub fn instruction_fetch(&self) -> bool {
        self.error.contains(PageFaultErrorCode::INSTRUCTION_FETCH)
    }
}

impl core::fmt::Display for PageFault {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let access = if self.instruction_fetch() {
            "instruction fetch"
        } else if self.write() {
            "write"
        } else {
            "read"
        };
        let cause = if self.protection_violation() {
            "protection violation"
        } else {
            "not present"
        };
        let mode = if self.user_mode() { "user" } else { "kernel" };
        write!(
            f,
            "{mode} {access} at {:#x} ({cause}, error {:#x}) by instruction {:#x}",
            self.address.as_u64(),
            self.error.bits(),
            self.instruction.as_u64()
        )
    }
}

/// What the memory manager decided about a page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultResolution {
    /// The mapping is fixed: retry the instruction.
    Retry,
    /// Continue at this address (an exception-table fixup).
    ContinueAt(VirtAddr),
    /// Nothing can fix it: the kernel panics with this reason.
    Fatal(&'static str),
}

pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        idt.divide_error.set_handler_fn(divide_error);
        idt.debug.set_handler_fn(debug);
        idt.breakpoint.set_handler_fn(breakpoint);
        idt.overflow.set_handler_fn(overflow);
        idt.bound_range_exceeded
            .set_handler_fn(bound_range_exceeded);
        idt.invalid_opcode.set_handler_fn(invalid_opcode);
        idt.device_not_available
            .set_handler_fn(device_not_available);
        idt.invalid_tss.set_handler_fn(invalid_tss);
        idt.segment_not_present.set_handler_fn(segment_not_present);
        idt.stack_segment_fault.set_handler_fn(stack_segment_fault);
        idt.general_protection_fault
            .set_handler_fn(general_protection_fault);
        idt.page_fault.set_handler_fn(page_fault);
        idt.x87_floating_point.set_handler_fn(x87_floating_point);
        idt.alignment_check.set_handler_fn(alignment_check);
        idt.simd_floating_point.set_handler_fn(simd_floating_point);
        idt.virtualization.set_handler_fn(virtualization);
        idt.cp_protection_exception
            .set_handler_fn(control_protection);
        idt.hv_injection_exception
            .set_handler_fn(hypervisor_injection);
        idt.vmm_communication_exception
            .set_handler_fn(vmm_communication);
        idt.security_exception.set_handler_fn(security_exception);
        // SAFETY: the IST indices name stacks that gdt::init installed in the TSS; they are used
        // by nothing else.
        unsafe {
            idt.double_fault
                .set_handler_fn(double_fault)
                .set_stack_index(gdt::DOUBLE_FAULT_IST);
            idt.non_maskable_interrupt
                .set_handler_fn(non_maskable_interrupt)
                .set_stack_index(gdt::NMI_IST);
            idt.machine_check
                .set_handler_fn(machine_check)
                .set_stack_index(gdt::MACHINE_CHECK_IST);
        }
        idt[vectors::TIMER].set_handler_fn(timer_interrupt);
        idt[vectors::BALLOON_CONFIG].set_handler_fn(balloon_config_interrupt);
        idt[vectors::BALLOON_QUEUES].set_handler_fn(balloon_queue_interrupt);
        idt[vectors::SPURIOUS].set_handler_fn(spurious_interrupt);
        idt
    });
    idt.load();
}

/// Whether the exception interrupted ring 3 (a task), not the kernel.
fn from_user_mode(frame: &InterruptStackFrame) -> bool {
    frame.code_segment.rpl() == PrivilegeLevel::Ring3
}

/// An exception nothing handles: a task that raised it is killed; in the kernel it panics.
fn fatal(name: &str, frame: &InterruptStackFrame, error: Option<u64>) -> ! {
    if from_user_mode(frame) {
        crate::user::kill_current(alloc::format!(
            "{name} at {:#x}",
            frame.instruction_pointer.as_u64()
        ));
    }
    match error {
        Some(code) => panic!("exception: {name} (error code {code:#x})\n{frame:#?}"),
        None => panic!("exception: {name}\n{frame:#?}"),
    }
}

macro_rules! fatal_handler {
    ($name:ident, $text:literal) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            fatal($text, &frame, None)
        }
    };
    ($name:ident, $text:literal, error) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame, code: u64) {
            fatal($text, &frame, Some(code))
        }
    };
}

fatal_handler!(divide_error, "divide error (#DE)");
fatal_handler!(overflow, "overflow (#OF)");
fatal_handler!(bound_range_exceeded, "bound range exceeded (#BR)");
fatal_handler!(invalid_opcode, "invalid opcode (#UD)");
fatal_handler!(device_not_available, "device not available (#NM)");
fatal_handler!(x87_floating_point, "x87 floating point (#MF)");
fatal_handler!(simd_floating_point, "SIMD floating point (#XM)");
fatal_handler!(virtualization, "virtualization exception (#VE)");
fatal_handler!(hypervisor_injection, "hypervisor injection (#HV)");
fatal_handler!(invalid_tss, "invalid TSS (#TS)", error);
fatal_handler!(segment_not_present, "segment not present (#NP)", error);
fatal_handler!(stack_segment_fault, "stack-segment fault (#SS)", error);
fatal_handler!(alignment_check, "alignment check (#AC)", error);
fatal_handler!(control_protection, "control protection (#CP)", error);
fatal_handler!(vmm_communication, "VMM communication (#VC)", error);
fatal_handler!(security_exception, "security exception (#SX)", error);

extern "x86-interrupt" fn general_protection_fault(frame: InterruptStackFrame, code: u64) {
    fatal("general protection fault (#GP)", &frame, Some(code))
}

extern "x86-interrupt" fn debug(frame: InterruptStackFrame) {
    if from_user_mode(&frame) {
        fatal("debug exception (#DB)", &frame, None);
    }
    log::warn!(
        "debug exception (#DB) at {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn non_maskable_interrupt(frame: InterruptStackFrame) {
    log::warn!(
        "non-maskable interrupt at {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    if from_user_mode(&frame) {
        fatal("breakpoint (#BP)", &frame, None);
    }
    BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
    log::debug!("breakpoint at {:#x}", frame.instruction_pointer.as_u64());
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    let address = Cr2::read_raw();
    if crate::mm::stack::is_guard_page(address) {
        let thread = crate::task::scheduler::current_name().unwrap_or_default();
        panic!(
            "double fault (#DF): kernel stack overflow in thread '{thread}' (guard page hit at {address:#x})\n{frame:#?}"
        )
    }
    fatal("double fault (#DF)", &frame, Some(code))
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal("machine check (#MC)", &frame, None)
}

extern "x86-interrupt" fn page_fault(mut frame: InterruptStackFrame, error: PageFaultErrorCode) {
    PAGE_FAULTS.fetch_add(1, Ordering::Relaxed);
    let fault = PageFault {
        address: VirtAddr::new_truncate(Cr2::read_raw()),
        instruction: frame.instruction_pointer,
        error,
    };
    match crate::mm::fault::handle_page_fault(&fault) {
        FaultResolution::Retry if from_user_mode(&frame) => crate::user::on_return_to_user(),
        FaultResolution::Retry => {}
        FaultResolution::ContinueAt(target) => {
            // SAFETY: `target` is an exception-table fixup for the faulting instruction, code
            // written to be resumed at with the interrupted context's stack and registers.
            unsafe {
                frame
                    .as_mut()
                    .update(|value| value.instruction_pointer = target)
            };
        }
        FaultResolution::Fatal(reason) if from_user_mode(&frame) => {
            crate::user::kill_current(alloc::format!("page fault: {reason}: {fault}"))
        }
        FaultResolution::Fatal(reason) => panic!("page fault: {reason}: {fault}\n{frame:#?}"),
    }
}

extern "x86-interrupt" fn timer_interrupt(frame: InterruptStackFrame) {
    // Acknowledge first: the scheduler may switch to another thread before this handler
    // returns, and the APIC must be free to deliver the next tick meanwhile.
    apic::end_of_interrupt();
    crate::task::scheduler::timer_tick();
    if from_user_mode(&frame) {
        // A task that never makes a system call still dies when it is asked to.
        crate::user::on_return_to_user();
    }
}

extern "x86-interrupt" fn balloon_config_interrupt(_frame: InterruptStackFrame) {
    crate::drivers::balloon::on_config_interrupt();
    apic::end_of_interrupt();
}

extern "x86-interrupt" fn balloon_queue_interrupt(_frame: InterruptStackFrame) {
    // End of interrupt after the handler: on a level-triggered INTx line the handler's ISR
    // read lowers the line, and an earlier EOI would have the I/O APIC deliver it again.
    crate::drivers::balloon::on_queue_interrupt();
    apic::end_of_interrupt();
}

extern "x86-interrupt" fn spurious_interrupt(_frame: InterruptStackFrame) {
    // Spurious APIC interrupts need no EOI.
}
