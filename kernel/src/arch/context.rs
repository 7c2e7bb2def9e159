//! The context switch between kernel threads, and the initial stack frame of a new thread.
//!
//! A switched-out thread's state is its stack: callee-saved registers and RFLAGS pushed by
//! [`switch`], its stack pointer stored in its thread record. Caller-saved registers were saved
//! by the compiler (or by the `x86-interrupt` prologue when a timer tick preempts).

core::arch::global_asm!(
    r#"
    .text
    .global context_switch_asm
context_switch_asm:
    pushfq
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, (%rdi)
    mov %rsi, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    popfq
    ret

    .global thread_entry_trampoline
thread_entry_trampoline:
    xor %ebp, %ebp
    call *%r12
    ud2
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    fn context_switch_asm(save_rsp: *mut u64, load_rsp: u64);
    fn thread_entry_trampoline();
}

/// Saves the current context, storing its stack pointer in `*save_rsp`, and resumes the context
/// whose stack pointer is `load_rsp`. Returns when something switches back to the saved context.
///
/// # Safety
/// Interrupts must be off. `load_rsp` must be a stack pointer saved by `switch` or prepared by
/// [`prepare_stack`] for a stack that stays allocated while that context can run, and
/// `save_rsp` must stay valid until the saved context is resumed.
pub unsafe fn switch(save_rsp: *mut u64, load_rsp: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { context_switch_asm(save_rsp, load_rsp) }
}

/// Writes the first frame of a new thread at the top of `stack` and returns the stack pointer to
/// hand to [`switch`]: the thread starts in `entry` with interrupts off, on a 16-byte aligned
/// stack. `entry` must never return.
pub fn prepare_stack(stack: &mut [u64], entry: extern "C" fn() -> !) -> u64 {
    let base = stack.as_ptr() as u64;
    let top = (base + stack.len() as u64 * 8) & !0xf;
    assert!(top - base >= 96, "thread stack too small");
    let mut put = |address: u64, value: u64| stack[((address - base) / 8) as usize] = value;
    // From the top: two words of padding, the return address `switch` will `ret` to, RFLAGS
    // (reserved bit 1 only: interrupts off), then rbp, rbx, r12, r13, r14, r15 as `switch` pops
    // them in reverse. The trampoline calls r12, so r12 holds `entry`.
    put(top - 8, 0);
    put(top - 16, 0);
    put(top - 24, thread_entry_trampoline as *const () as u64);
    put(top - 32, 0x2);
    for (slot, value) in [0, 0, entry as *const () as u64, 0, 0, 0]
        .into_iter()
        .enumerate()
    {
        // rbp at top-40, rbx at top-48, r12 at top-56, r13, r14, r15 at top-80.
        put(top - 40 - slot as u64 * 8, value);
    }
    top - 80
}
