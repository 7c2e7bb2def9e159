//! Ring 3 and back: entering user mode, the system-call entry (the `syscall` instruction), and
//! leaving user mode for good when a task exits or is killed.
//!
//! Owns the register image of a task ([`UserRegisters`]) and the three pieces of assembly that
//! move between rings. Knows nothing of tasks: [`run_in_user_mode`] returns when something calls
//! [`leave_user_mode`] on the same thread, and system calls go to `crate::user::syscall`.
//!
//! How leaving works: `run_in_user_mode` saves the callee-saved registers on the thread's kernel
//! stack and makes the stack pointer at that point the thread's ring-3 entry stack (TSS.RSP0), so
//! every interrupt, exception and system call from ring 3 runs on the stack *below* that frame.
//! `leave_user_mode` drops whatever is below (frames that own nothing: see its contract) and
//! returns from `run_in_user_mode` as if it had been an ordinary call.
//!
//! The system-call entry builds on that stack the [`UserRegisters`] image an interrupt from ring 3
//! would have pushed, and returns with IRETQ. (Not an `int 0x80` gate: from ring 3 that is an
//! invalid opcode under the kvm_pvm hypervisor of our machines.) SYSCALL does not switch stacks:
//! the entry keeps the task's stack pointer in a scratch word and loads TSS.RSP0 itself, which is
//! sound with one CPU because SFMASK clears IF on entry (with several CPUs: per-CPU data and
//! SWAPGS).

use super::gdt;

/// The general registers of a task and its interrupt-return frame, in the order the entry code
/// pushes them (lowest address first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegisters {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// RFLAGS of a task: interrupts on (bit 9), reserved bit 1; nothing else (no IOPL, no AC).
const USER_RFLAGS: u64 = 0x202;
/// The RFLAGS bits a task may change for itself (POPF in ring 3 changes exactly these): the
/// arithmetic flags, TF, DF, NT, AC and ID. Never IF, IOPL, RF, VM, VIF or VIP.
const USER_CHANGEABLE_RFLAGS: u64 = 0x0001 // CF
    | 0x0004 // PF
    | 0x0010 // AF
    | 0x0040 // ZF
    | 0x0080 // SF
    | 0x0100 // TF
    | 0x0400 // DF
    | 0x0800 // OF
    | 0x4000 // NT
    | 0x4_0000 // AC
    | 0x20_0000; // ID

impl UserRegisters {
    /// A task's first state: all registers zero but the entry point, the stack pointer and the
    /// first argument (`rdi`).
    pub fn at_entry(rip: u64, rsp: u64, argument: u64) -> UserRegisters {
        let selectors = gdt::selectors();
        UserRegisters {
            rip,
            rsp,
            rdi: argument,
            cs: u64::from(selectors.user_code.0),
            ss: u64::from(selectors.user_data.0),
            rflags: USER_RFLAGS,
            ..Default::default()
        }
    }

    /// Makes the saved RFLAGS safe to return to ring 3 with: only the bits a task may set for
    /// itself survive; interrupts are on and nothing privileged (IOPL, VM, RF, VIF, VIP) is set.
    pub fn sanitize_rflags(&mut self) {
        self.rflags = (self.rflags & USER_CHANGEABLE_RFLAGS) | USER_RFLAGS;
    }

    /// Whether this frame returns to ring 3 with interrupts on and nothing more privileged:
    /// the only frames [`run_in_user_mode`] accepts.
    pub fn is_user_frame(&self) -> bool {
        let selectors = gdt::selectors();
        self.cs == u64::from(selectors.user_code.0)
            && self.ss == u64::from(selectors.user_data.0)
            && self.rflags & USER_RFLAGS == USER_RFLAGS
            && self.rflags & !(USER_CHANGEABLE_RFLAGS | USER_RFLAGS) == 0
            && self.rip < 0x0000_8000_0000_0000
    }
}

core::arch::global_asm!(
    r#"
    .text
    .global user_mode_run_asm
    // rdi: the register image to load; rsi: the TSS.RSP0 slot.
user_mode_run_asm:
    cli
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    sub rsp, 8
    mov [rsi], rsp
    mov rsp, rdi
    // Loads the register image at rsp and returns to ring 3 (the system-call exit too).
user_registers_restore:
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    iretq

    .global user_mode_leave_asm
    // rdi: the ring-3 entry stack (where user_mode_run_asm left its saved registers).
user_mode_leave_asm:
    cli
    mov rsp, rdi
    add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    .global user_syscall_instruction_entry
    // SYSCALL from ring 3: rcx holds the return address, r11 the flags, rsp is still the
    // task's. Interrupts are off (SFMASK). Build the frame an interrupt would have pushed.
user_syscall_instruction_entry:
    mov [rip + {scratch}], rsp
    mov rsp, [rip + {tss} + {rsp0_offset}]
    push {user_ss}
    push [rip + {scratch}]
    push r11
    push {user_cs}
    push rcx
    // TSS.RSP0 is 16-byte aligned, so the 20-word image below leaves rsp 16-byte aligned.
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rdi, rsp
    call user_syscall_dispatch
    jmp user_registers_restore
    "#,
    scratch = sym SYSCALL_USER_RSP,
    tss = sym super::gdt::TSS,
    rsp0_offset = const super::gdt::TSS_RSP0_OFFSET,
    user_ss = const USER_DATA_SELECTOR,
    user_cs = const USER_CODE_SELECTOR,
);

/// The task's stack pointer between SYSCALL and the push that saves it (one CPU, interrupts
/// off in between: see the module's documentation).
static mut SYSCALL_USER_RSP: u64 = 0;
/// The user selectors as the GDT lays them out (checked against it in [`init`]).
const USER_DATA_SELECTOR: u16 = 0x1b;
const USER_CODE_SELECTOR: u16 = 0x23;

unsafe extern "C" {
    fn user_mode_run_asm(registers: *const UserRegisters, entry_stack_slot: *mut u64);
    fn user_mode_leave_asm(entry_stack: u64) -> !;
    fn user_syscall_instruction_entry();
}

/// Enables the SYSCALL instruction: EFER.SCE, the segments (STAR), the entry (LSTAR), and the
/// flags cleared on entry (SFMASK). The kernel must not inherit any flag a task can set: IF
/// (the entry runs with interrupts off until it is on its own stack), DF (Rust assumes it
/// clear), TF (no single-stepping the kernel), AC (no alignment checks, and no SMAP bypass
/// once SMAP is on), NT (IRETQ with NT set raises #GP in long mode: the kernel's own return to
/// ring 3 would fault), and IOPL (as Linux; ring 3 cannot raise it, but nothing relies on that).
/// Linux masks the same set. RF is cleared by SYSCALL itself; VM cannot be set in long mode.
pub fn init() {
    use x86_64::registers::model_specific::{Efer, EferFlags, LStar, SFMask, Star};
    use x86_64::registers::rflags::RFlags;
    let selectors = gdt::selectors();
    assert_eq!(
        selectors.user_data.0, USER_DATA_SELECTOR,
        "GDT layout changed"
    );
    assert_eq!(
        selectors.user_code.0, USER_CODE_SELECTOR,
        "GDT layout changed"
    );
    Star::write(
        selectors.user_code,
        selectors.user_data,
        selectors.kernel_code,
        selectors.kernel_data,
    )
    .expect("GDT laid out for SYSCALL/SYSRET");
    LStar::write(x86_64::VirtAddr::new(
        user_syscall_instruction_entry as *const () as u64,
    ));
    SFMask::write(
        RFlags::INTERRUPT_FLAG
            | RFlags::DIRECTION_FLAG
            | RFlags::TRAP_FLAG
            | RFlags::ALIGNMENT_CHECK
            | RFlags::NESTED_TASK
            | RFlags::IOPL_HIGH
            | RFlags::IOPL_LOW,
    );
    // SAFETY: SCE only makes SYSCALL/SYSRET valid; the MSRs above point them at the entry
    // code and the kernel's segments.
    unsafe { Efer::update(|flags| flags.insert(EferFlags::SYSTEM_CALL_EXTENSIONS)) };
}

/// Runs the current thread in ring 3 from `registers` (whose page tables must be loaded) until
/// something on this thread calls [`leave_user_mode`]. Returns with interrupts off.
///
/// # Panics
/// If `registers` is not a ring-3 frame (see [`UserRegisters::is_user_frame`]).
pub fn run_in_user_mode(registers: &UserRegisters) {
    assert!(registers.is_user_frame(), "not a user frame: {registers:?}");
    // SAFETY: the image is a ring-3 frame (checked): IRETQ cannot enter the kernel with it.
    // The assembly saves the callee-saved registers below this frame and records that point as
    // the ring-3 entry stack, so nothing from ring 3 overwrites this frame or `registers` (which
    // lives above it); `user_mode_leave_asm` returns here with those registers restored.
    // Interrupts are off from its first instruction until IRETQ loads the task's RFLAGS.
    unsafe { user_mode_run_asm(registers, gdt::kernel_entry_stack_slot()) }
}

/// Ends ring-3 execution of the current thread: returns from its [`run_in_user_mode`].
///
/// Contract: call it from a system call or a ring-3 exception of that thread, with no lock held
/// and nothing owned on the stack between here and the entry from ring 3 (those frames are
/// discarded, never unwound).
pub fn leave_user_mode() -> ! {
    let entry_stack = gdt::kernel_entry_stack();
    // SAFETY: a ring-3 entry happened on this thread (the caller is in one), so the entry stack
    // is where `user_mode_run_asm` saved the registers of the still-live `run_in_user_mode`
    // frame above it; the frames in between own nothing (the contract).
    unsafe { user_mode_leave_asm(entry_stack) }
}

/// Called by the entry code for every system call, on the task's kernel stack, interrupts off.
#[unsafe(no_mangle)]
extern "C" fn user_syscall_dispatch(registers: &mut UserRegisters) {
    crate::user::syscall::dispatch(registers);
}
