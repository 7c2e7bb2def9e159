//! The user programs the kernel can run in ring 3: small position-independent x86-64 routines
//! assembled into the kernel image's read-only data (never executable there) and copied into a
//! task's code region at [`super::CODE_BASE`] by [`super::spawn`].
//!
//! Each takes one argument in `rdi` and talks to the kernel only through `syscall` (see
//! [`super::syscall`]; `rcx` and `r11` do not survive one, as on Linux). Exit statuses of 100 and up mean the program itself found something
//! wrong; the list below says what each one checks.

/// A program: its name and machine code.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub name: &'static str,
    pub code: &'static [u8],
}

core::arch::global_asm!(
    r#"
    .pushsection .rodata.user_programs, "a"
    .macro sys number
        mov eax, \number
        syscall
    .endm
    .macro exit_with status
        mov edi, \status
        sys 0
    .endm
    // Runs check_memory if r15 is not zero; jumps to `fail` if it does not pass.
    .macro check_memory_if_asked fail
        test r15, r15
        jz 1f
        sys 11
        test rax, rax
        jnz \fail
    1:
    .endm

    // memory_walk(pages): maps `pages` pages, checks that every word reads zero on first touch,
    // writes a pattern, reads it all back, says so on the console, unmaps, exits with `pages`.
    // 100 mmap failed, 101 a fresh page was not zero, 102 read-back mismatch, 103 munmap failed.
    .global user_program_memory_walk_start
user_program_memory_walk_start:
    mov r12, rdi
    mov rdi, r12
    shl rdi, 12
    mov esi, 3
    sys 2
    test rax, rax
    js .Lmw_fail_mmap
    mov r13, rax
    mov rcx, r12
    shl rcx, 9
    movabs r14, 0x5a17c0de5a17c0de
    xor ebx, ebx
.Lmw_fill:
    cmp qword ptr [r13 + rbx*8], 0
    jne .Lmw_not_zero
    lea rax, [r13 + rbx*8]
    xor rax, r14
    mov [r13 + rbx*8], rax
    inc rbx
    cmp rbx, rcx
    jb .Lmw_fill
    xor ebx, ebx
.Lmw_verify:
    lea rax, [r13 + rbx*8]
    xor rax, r14
    cmp [r13 + rbx*8], rax
    jne .Lmw_mismatch
    inc rbx
    cmp rbx, rcx
    jb .Lmw_verify
    lea rdi, [rip + .Lmw_message]
    lea rsi, [rip + .Lmw_message_end]
    sub rsi, rdi
    sys 1
    mov rdi, r13
    mov rsi, r12
    shl rsi, 12
    sys 3
    test rax, rax
    jnz .Lmw_fail_munmap
    mov rdi, r12
    sys 0
.Lmw_fail_mmap:
    exit_with 100
.Lmw_not_zero:
    exit_with 101
.Lmw_mismatch:
    exit_with 102
.Lmw_fail_munmap:
    exit_with 103
.Lmw_message:
    .ascii "memory walk: every page read zero on first touch, every word read back\n"
.Lmw_message_end:
    .global user_program_memory_walk_end
user_program_memory_walk_end:

    // fresh_pages(marker): maps 64 pages, counts the words that are not zero, fills every word
    // with `marker`, and exits with the count without unmapping (teardown frees the pages).
    .global user_program_fresh_pages_start
user_program_fresh_pages_start:
    mov r12, rdi
    mov edi, 64 * 4096
    mov esi, 3
    sys 2
    test rax, rax
    js .Lfp_fail_mmap
    mov r13, rax
    xor ebx, ebx
    xor r14d, r14d
    mov ecx, 64 * 512
.Lfp_loop:
    cmp qword ptr [r13 + rbx*8], 0
    je .Lfp_zero
    inc r14
.Lfp_zero:
    mov [r13 + rbx*8], r12
    inc rbx
    cmp rbx, rcx
    jb .Lfp_loop
    mov rdi, r14
    sys 0
.Lfp_fail_mmap:
    exit_with 100
    .global user_program_fresh_pages_end
user_program_fresh_pages_end:

    // read_address(address): loads a word from `address` and exits with it.
    .global user_program_read_address_start
user_program_read_address_start:
    mov rdi, [rdi]
    sys 0
    .global user_program_read_address_end
user_program_read_address_end:

    // write_address(address): stores a word at `address`, exits with 0.
    .global user_program_write_address_start
user_program_write_address_start:
    mov qword ptr [rdi], 0x1234
    exit_with 0
    .global user_program_write_address_end
user_program_write_address_end:

    // jump_to(address): continues execution at `address`.
    .global user_program_jump_to_start
user_program_jump_to_start:
    jmp rdi
    .global user_program_jump_to_end
user_program_jump_to_end:

    // privileged: runs HLT, which ring 3 may not; exits with 0 if it ever gets past it.
    .global user_program_privileged_start
user_program_privileged_start:
    hlt
    exit_with 0
    .global user_program_privileged_end
user_program_privileged_end:

    // spin(ticks): a busy loop on the time-stamp counter (RDTSC works in ring 3) for `ticks`
    // TSC ticks, with no system call at all: only the timer can take the CPU from it. Exits 0.
    .global user_program_spin_start
user_program_spin_start:
    mov r12, rdi
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r13, rax
.Lsp_loop:
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r13
    cmp rax, r12
    jb .Lsp_loop
    exit_with 0
    .global user_program_spin_end
user_program_spin_end:

    // sleeper(ms): sleeps `ms` milliseconds and yields; exits 0 if the clock advanced at least
    // that much, 1 if not.
    .global user_program_sleeper_start
user_program_sleeper_start:
    imul r12, rdi, 1000000
    sys 7
    mov r13, rax
    mov rdi, r12
    sys 6
    sys 5
    sys 7
    sub rax, r13
    cmp rax, r12
    jb .Lsl_short
    exit_with 0
.Lsl_short:
    exit_with 1
    .global user_program_sleeper_end
user_program_sleeper_end:

    // cow_clone: maps pages A and B, writes A = 0x1111 and B = 0x4444, clones. The parent at once
    // writes B = 0x5555 (a stale writable TLB entry would let it write the shared page). The
    // child checks it sees A = 0x1111 in a page shared twice and B = 0x4444, writes A = 0x2222
    // (its private copy, mapped once), exits 2. The parent waits for the child, checks it still
    // sees A = 0x1111 in a page mapped once, writes 0x3333 and exits 0. With a non-zero argument
    // the memory checkers run at each step (check_memory: the task needs the diagnostics
    // capability). Statuses: 10.. the child, 20.. the parent, 30.. set-up.
    .global user_program_cow_clone_start
user_program_cow_clone_start:
    mov r15, rdi
    mov edi, 2 * 4096
    mov esi, 3
    sys 2
    test rax, rax
    js .Lcc_fail_mmap
    mov r13, rax
    mov qword ptr [r13], 0x1111
    mov qword ptr [r13 + 4096], 0x4444
    mov rdi, r13
    sys 10
    cmp rax, 1
    jne .Lcc_not_private
    sys 8
    test rax, rax
    js .Lcc_fail_clone
    jz .Lcc_child
    mov r12, rax
    mov qword ptr [r13 + 4096], 0x5555
    cmp qword ptr [r13 + 4096], 0x5555
    jne .Lcc_parent_lost_b
    mov rdi, r12
    lea rsi, [r13 + 4096 + 8]
    sys 9
    test rax, rax
    jnz .Lcc_child_failed
    cmp qword ptr [r13 + 4096 + 8], 2
    jne .Lcc_child_failed
    cmp qword ptr [r13], 0x1111
    jne .Lcc_parent_saw_child_write
    mov rdi, r13
    sys 10
    cmp rax, 1
    jne .Lcc_parent_still_shared
    mov qword ptr [r13], 0x3333
    cmp qword ptr [r13], 0x3333
    jne .Lcc_parent_lost_write
    check_memory_if_asked .Lcc_parent_check
    exit_with 0
.Lcc_child:
    cmp qword ptr [r13], 0x1111
    jne .Lcc_child_wrong_data
    cmp qword ptr [r13 + 4096], 0x4444
    jne .Lcc_child_saw_parent_write
    mov rdi, r13
    sys 10
    cmp rax, 2
    jne .Lcc_child_not_shared
    check_memory_if_asked .Lcc_child_check_shared
    mov qword ptr [r13], 0x2222
    cmp qword ptr [r13], 0x2222
    jne .Lcc_child_lost_write
    mov rdi, r13
    sys 10
    cmp rax, 1
    jne .Lcc_child_still_shared
    check_memory_if_asked .Lcc_child_check_private
    exit_with 2
.Lcc_child_wrong_data:
    exit_with 10
.Lcc_child_lost_write:
    exit_with 11
.Lcc_child_not_shared:
    exit_with 12
.Lcc_child_check_shared:
    exit_with 13
.Lcc_child_still_shared:
    exit_with 14
.Lcc_child_check_private:
    exit_with 15
.Lcc_child_saw_parent_write:
    exit_with 16
.Lcc_child_failed:
    exit_with 20
.Lcc_parent_saw_child_write:
    exit_with 21
.Lcc_parent_still_shared:
    exit_with 22
.Lcc_parent_lost_write:
    exit_with 23
.Lcc_parent_check:
    exit_with 24
.Lcc_parent_lost_b:
    exit_with 25
.Lcc_fail_mmap:
    exit_with 30
.Lcc_not_private:
    exit_with 31
.Lcc_fail_clone:
    exit_with 32
    .global user_program_cow_clone_end
user_program_cow_clone_end:

    // advise: maps 8 pages, advises pages 0..4 mergeable then page 1 unmergeable (3 pages stay
    // mergeable), checks that a misaligned range and an unknown advice are refused, touches all
    // 8 pages, exits 0. 100.. a step failed.
    .global user_program_advise_start
user_program_advise_start:
    mov edi, 8 * 4096
    mov esi, 3
    sys 2
    test rax, rax
    js .Lad_fail_100
    mov r13, rax
    mov rdi, r13
    mov esi, 4 * 4096
    mov edx, 12
    sys 4
    test rax, rax
    jnz .Lad_fail_101
    lea rdi, [r13 + 4096]
    mov esi, 4096
    mov edx, 13
    sys 4
    test rax, rax
    jnz .Lad_fail_102
    lea rdi, [r13 + 1]
    mov esi, 4096
    mov edx, 12
    sys 4
    cmp rax, -22
    jne .Lad_fail_103
    mov rdi, r13
    mov esi, 4096
    mov edx, 99
    sys 4
    cmp rax, -22
    jne .Lad_fail_104
    xor ebx, ebx
.Lad_touch:
    mov [r13 + rbx], rbx
    add rbx, 4096
    cmp rbx, 8 * 4096
    jb .Lad_touch
    exit_with 0
.Lad_fail_100:
    exit_with 100
.Lad_fail_101:
    exit_with 101
.Lad_fail_102:
    exit_with 102
.Lad_fail_103:
    exit_with 103
.Lad_fail_104:
    exit_with 104
    .global user_program_advise_end
user_program_advise_end:

    // bad_calls: system calls with bad arguments must fail with the right error and nothing
    // else: a kernel buffer and an unmapped buffer for write (-EFAULT), an unknown call
    // (-ENOSYS), a region larger than the user half (-EINVAL), unmapping a hole (-ENOMEM),
    // waiting for a task that is not a child (-ECHILD), an over-long write (-EINVAL),
    // page_map_count of a kernel and of a non-canonical address (-EFAULT); then a 96 TiB region,
    // touched once and unmapped whole (which must cost what it holds, not its size).
    // Exits 0, or 100 + the step that went wrong.
    .global user_program_bad_calls_start
user_program_bad_calls_start:
    movabs rdi, 0xffff800000000000
    mov esi, 16
    sys 1
    cmp rax, -14
    jne .Lbc_fail_101
    mov edi, 0x1000
    mov esi, 16
    sys 1
    cmp rax, -14
    jne .Lbc_fail_102
    sys 99
    cmp rax, -38
    jne .Lbc_fail_103
    movabs rdi, 0x700000000000
    mov esi, 3
    sys 2
    cmp rax, -22
    jne .Lbc_fail_104
    mov edi, 0x10000000
    mov esi, 4096
    sys 3
    cmp rax, -12
    jne .Lbc_fail_105
    mov edi, 12345
    xor esi, esi
    sys 9
    cmp rax, -10
    jne .Lbc_fail_106
    mov edi, 0x400000
    mov esi, 5000
    sys 1
    cmp rax, -22
    jne .Lbc_fail_107
    movabs rdi, 0xffff800000000000
    sys 10
    cmp rax, -14
    jne .Lbc_fail_108
    movabs rdi, 0x800000000000
    sys 10
    cmp rax, -14
    jne .Lbc_fail_109
    movabs rdi, 0x600000000000
    mov esi, 3
    sys 2
    test rax, rax
    js .Lbc_fail_110
    mov r13, rax
    mov qword ptr [r13], 1
    mov rdi, r13
    movabs rsi, 0x600000000000
    sys 3
    test rax, rax
    jnz .Lbc_fail_111
    exit_with 0
.Lbc_fail_101:
    exit_with 101
.Lbc_fail_102:
    exit_with 102
.Lbc_fail_103:
    exit_with 103
.Lbc_fail_104:
    exit_with 104
.Lbc_fail_105:
    exit_with 105
.Lbc_fail_106:
    exit_with 106
.Lbc_fail_107:
    exit_with 107
.Lbc_fail_108:
    exit_with 108
.Lbc_fail_109:
    exit_with 109
.Lbc_fail_110:
    exit_with 110
.Lbc_fail_111:
    exit_with 111
    .global user_program_bad_calls_end
user_program_bad_calls_end:

    // flags(bits): sets `bits` in RFLAGS with POPF (ring 3 may set some, the CPU ignores the
    // others), makes two system calls (clock; write, which copies user memory), reads RFLAGS
    // back, clears what it set and exits with the RFLAGS it read. 100: write did not write it all.
    .global user_program_flags_start
user_program_flags_start:
    pushfq
    or [rsp], rdi
    popfq
    sys 7
    lea rdi, [rip + .Lfl_message]
    lea rsi, [rip + .Lfl_message_end]
    sub rsi, rdi
    mov r12, rsi
    sys 1
    cmp rax, r12
    jne .Lfl_fail_write
    pushfq
    pop r13
    push 0x202
    popfq
    mov rdi, r13
    sys 0
.Lfl_fail_write:
    push 0x202
    popfq
    exit_with 100
.Lfl_message:
    .ascii "flags: system calls with my flags set\n"
.Lfl_message_end:
    .global user_program_flags_end
user_program_flags_end:
    // wait_status(status): clones; the child exits with `status` (or, for status 0x4b11, reads
    // address 0x10 and is killed). The parent first waits with a kernel status address (must
    // fail with -EFAULT and leave the child waitable), then with one on its stack, and exits
    // with the status it got; 0x4b11 if wait said killed; 5000 + errno if wait failed; 6000 if
    // the first wait did not fail with -EFAULT.
    .global user_program_wait_status_start
user_program_wait_status_start:
    mov r12, rdi
    sys 8
    test rax, rax
    js .Lws_fail
    jz .Lws_child
    mov r13, rax
    mov rdi, r13
    movabs rsi, 0xffff800000000000
    sys 9
    cmp rax, -14
    jne .Lws_no_efault
    push -1
    mov rdi, r13
    mov rsi, rsp
    sys 9
    test rax, rax
    js .Lws_fail
    jnz .Lws_killed
    pop rdi
    sys 0
.Lws_killed:
    exit_with 0x4b11
.Lws_no_efault:
    exit_with 6000
.Lws_fail:
    neg rax
    lea rdi, [rax + 5000]
    sys 0
.Lws_child:
    cmp r12, 0x4b11
    je .Lws_child_dies
    mov rdi, r12
    sys 0
.Lws_child_dies:
    mov rax, [0x10]
    exit_with 1
    .global user_program_wait_status_end
user_program_wait_status_end:
    // fill_clone(pages): maps `pages` pages and writes each one's index into it, clones. The
    // child checks every page and writes each (a copy-on-write copy apiece), exits 0. The parent
    // waits with the status address in its first page (a copy while the child still maps it),
    // rewrites every page and exits with the child's status. 100.. a step failed: 100 mmap,
    // 101 clone, 102 wait (the child killed, or wait failed); 10 the child saw wrong data.
    .global user_program_fill_clone_start
user_program_fill_clone_start:
    mov r12, rdi
    mov rdi, r12
    shl rdi, 12
    mov esi, 3
    sys 2
    test rax, rax
    js .Lfc_fail_100
    mov r13, rax
    xor ebx, ebx
.Lfc_fill:
    mov rax, rbx
    shl rax, 12
    mov [r13 + rax], rbx
    inc rbx
    cmp rbx, r12
    jb .Lfc_fill
    sys 8
    test rax, rax
    js .Lfc_fail_101
    jz .Lfc_child
    mov rdi, rax
    mov rsi, r13
    sys 9
    test rax, rax
    jnz .Lfc_fail_102
    mov r14, [r13]
    xor ebx, ebx
.Lfc_rewrite:
    mov rax, rbx
    shl rax, 12
    mov [r13 + rax + 8], rbx
    inc rbx
    cmp rbx, r12
    jb .Lfc_rewrite
    mov rdi, r14
    sys 0
.Lfc_child:
    xor ebx, ebx
.Lfc_child_loop:
    mov rax, rbx
    shl rax, 12
    cmp [r13 + rax], rbx
    jne .Lfc_child_wrong
    mov [r13 + rax + 8], rbx
    inc rbx
    cmp rbx, r12
    jb .Lfc_child_loop
    exit_with 0
.Lfc_child_wrong:
    exit_with 10
.Lfc_fail_100:
    exit_with 100
.Lfc_fail_101:
    exit_with 101
.Lfc_fail_102:
    exit_with 102
    .global user_program_fill_clone_end
user_program_fill_clone_end:
    // ksm_twins(pages): maps `pages` pages, writes page i's index into its first word, marks
    // the range mergeable and clones. Both sides write 0x77 into the second word of every page
    // (each gets its own pages, identical to the other's). The child polls (sleeping 2 ms,
    // at most 5000 rounds) until page_map_count says every page is mapped twice (KSM merged
    // them across the two tasks), then writes index + 0x1000 into the third word of every page
    // (copy-on-write of merged pages) and checks all three words; exits 0. The parent waits for
    // it, checks its own pages still read (index, 0x77, 0), unmerges the range (madvise
    // UNMERGEABLE), checks that and every page's map count of 1, and exits with the child's
    // status. 100 mmap, 101 madvise, 102 clone, 103 wait, 105 parent's data wrong, 106 unmerge
    // failed, 107 a page still shared; child: 10 never merged, 11 its data wrong.
    .global user_program_ksm_twins_start
user_program_ksm_twins_start:
    mov r12, rdi
    mov rdi, r12
    shl rdi, 12
    mov esi, 3
    sys 2
    test rax, rax
    js .Lkt_fail_100
    mov r13, rax
    xor ebx, ebx
.Lkt_fill:
    mov rax, rbx
    shl rax, 12
    mov [r13 + rax], rbx
    inc rbx
    cmp rbx, r12
    jb .Lkt_fill
    mov rdi, r13
    mov rsi, r12
    shl rsi, 12
    mov edx, 12
    sys 4
    test rax, rax
    jnz .Lkt_fail_101
    sys 8
    test rax, rax
    js .Lkt_fail_102
    mov r14, rax
    xor ebx, ebx
.Lkt_own:
    mov rax, rbx
    shl rax, 12
    mov qword ptr [r13 + rax + 8], 0x77
    inc rbx
    cmp rbx, r12
    jb .Lkt_own
    test r14, r14
    jnz .Lkt_parent
    mov r15d, 5000
.Lkt_poll:
    xor ebx, ebx
.Lkt_poll_page:
    mov rdi, rbx
    shl rdi, 12
    add rdi, r13
    sys 10
    cmp rax, 2
    jne .Lkt_wait_more
    inc rbx
    cmp rbx, r12
    jb .Lkt_poll_page
    jmp .Lkt_child_merged
.Lkt_wait_more:
    dec r15
    jz .Lkt_child_never
    mov edi, 2000000
    sys 6
    jmp .Lkt_poll
.Lkt_child_merged:
    xor ebx, ebx
.Lkt_child_write:
    mov rax, rbx
    shl rax, 12
    lea rdx, [rbx + 0x1000]
    mov [r13 + rax + 16], rdx
    inc rbx
    cmp rbx, r12
    jb .Lkt_child_write
    xor ebx, ebx
.Lkt_child_check:
    mov rax, rbx
    shl rax, 12
    cmp [r13 + rax], rbx
    jne .Lkt_child_wrong
    cmp qword ptr [r13 + rax + 8], 0x77
    jne .Lkt_child_wrong
    lea rdx, [rbx + 0x1000]
    cmp [r13 + rax + 16], rdx
    jne .Lkt_child_wrong
    inc rbx
    cmp rbx, r12
    jb .Lkt_child_check
    exit_with 0
.Lkt_child_wrong:
    exit_with 11
.Lkt_child_never:
    exit_with 10
.Lkt_parent:
    sub rsp, 16
    mov rdi, r14
    mov rsi, rsp
    sys 9
    test rax, rax
    jnz .Lkt_fail_103
    mov r14, [rsp]
    xor ebx, ebx
.Lkt_parent_check:
    mov rax, rbx
    shl rax, 12
    cmp [r13 + rax], rbx
    jne .Lkt_fail_105
    cmp qword ptr [r13 + rax + 8], 0x77
    jne .Lkt_fail_105
    cmp qword ptr [r13 + rax + 16], 0
    jne .Lkt_fail_105
    inc rbx
    cmp rbx, r12
    jb .Lkt_parent_check
    mov rdi, r13
    mov rsi, r12
    shl rsi, 12
    mov edx, 13
    sys 4
    test rax, rax
    jnz .Lkt_fail_106
    xor ebx, ebx
.Lkt_parent_count:
    mov rdi, rbx
    shl rdi, 12
    add rdi, r13
    sys 10
    cmp rax, 1
    jne .Lkt_fail_107
    mov rax, rbx
    shl rax, 12
    cmp [r13 + rax], rbx
    jne .Lkt_fail_105
    inc rbx
    cmp rbx, r12
    jb .Lkt_parent_count
    mov rdi, r14
    sys 0
.Lkt_fail_100:
    exit_with 100
.Lkt_fail_101:
    exit_with 101
.Lkt_fail_102:
    exit_with 102
.Lkt_fail_103:
    exit_with 103
.Lkt_fail_105:
    exit_with 105
.Lkt_fail_106:
    exit_with 106
.Lkt_fail_107:
    exit_with 107
    .global user_program_ksm_twins_end
user_program_ksm_twins_end:

    // ksm_fill(pages): maps `pages` pages, writes page i's index into its first word, marks the
    // range mergeable and sleeps for good (the kernel looks at what KSM did, then kills it).
    // 100 mmap, 101 madvise.
    .global user_program_ksm_fill_start
user_program_ksm_fill_start:
    mov r12, rdi
    shl rdi, 12
    mov esi, 3
    sys 2
    test rax, rax
    js .Lkf_fail_100
    mov r13, rax
    xor ebx, ebx
.Lkf_fill:
    mov rax, rbx
    shl rax, 12
    mov [r13 + rax], rbx
    inc rbx
    cmp rbx, r12
    jb .Lkf_fill
    mov rdi, r13
    mov rsi, r12
    shl rsi, 12
    mov edx, 12
    sys 4
    test rax, rax
    jnz .Lkf_fail_101
    mov rdi, -1
    sys 6
    exit_with 0
.Lkf_fail_100:
    exit_with 100
.Lkf_fail_101:
    exit_with 101
    .global user_program_ksm_fill_end
user_program_ksm_fill_end:

    // clone_bomb(rounds): clones `rounds` times; every child goes on with the rounds left (2^rounds
    // tasks if nothing stops them). Exits 0, or with the error number of the first clone the
    // kernel refused.
    .global user_program_clone_bomb_start
user_program_clone_bomb_start:
    mov r12, rdi
.Lcb_loop:
    test r12, r12
    jz .Lcb_done
    dec r12
    sys 8
    test rax, rax
    jns .Lcb_loop
    neg rax
    mov rdi, rax
    sys 0
.Lcb_done:
    exit_with 0
    .global user_program_clone_bomb_end
user_program_clone_bomb_end:
    // sleep_forever: sleeps u64::MAX nanoseconds; exits 0 if it ever wakes.
    .global user_program_sleep_forever_start
user_program_sleep_forever_start:
    mov rdi, -1
    sys 6
    exit_with 0
    .global user_program_sleep_forever_end
user_program_sleep_forever_end:

    // wait_forever: clones a child that sleeps u64::MAX nanoseconds and waits for it; exits with
    // wait's result if it ever returns.
    .global user_program_wait_forever_start
user_program_wait_forever_start:
    sys 8
    test rax, rax
    js .Lwf_fail
    jz .Lwf_child
    mov rdi, rax
    xor esi, esi
    sys 9
    mov rdi, rax
    sys 0
.Lwf_child:
    mov rdi, -1
    sys 6
    exit_with 0
.Lwf_fail:
    exit_with 100
    .global user_program_wait_forever_end
user_program_wait_forever_end:
    // hog(pages): maps `pages` pages, writes each, says so, then sleeps 20 s holding them and
    // exits 0. 100: mmap failed.
    .global user_program_hog_start
user_program_hog_start:
    mov r12, rdi
    mov rdi, r12
    shl rdi, 12
    mov esi, 3
    sys 2
    test rax, rax
    js .Lhg_fail
    mov r13, rax
    xor ebx, ebx
.Lhg_touch:
    mov rax, rbx
    shl rax, 12
    mov [r13 + rax], rbx
    inc rbx
    cmp rbx, r12
    jb .Lhg_touch
    lea rdi, [rip + .Lhg_message]
    lea rsi, [rip + .Lhg_message_end]
    sub rsi, rdi
    sys 1
    mov rdi, 20000000000
    sys 6
    exit_with 0
.Lhg_fail:
    exit_with 100
.Lhg_message:
    .ascii "hog: all my pages are resident\n"
.Lhg_message_end:
    .global user_program_hog_end
user_program_hog_end:
    // odd_stack(rsp): makes a system call (clock) with its stack pointer set to `rsp` (a
    // non-canonical or kernel address: the kernel must neither use nor trip over it), restores
    // it and exits 0.
    .global user_program_odd_stack_start
user_program_odd_stack_start:
    mov r12, rsp
    mov rsp, rdi
    sys 7
    mov rsp, r12
    exit_with 0
    .global user_program_odd_stack_end
user_program_odd_stack_end:
    // trap_syscall: sets TF by a POPF right before SYSCALL, so the single-step trap is due just
    // as SYSCALL enters the kernel, still on this task's stack pointer, placed at the bottom of
    // its top stack page (the page below is not mapped yet): had the kernel taken that trap on
    // it, it would fault in ring 0. Killed by the trap after the SYSCALL, back in ring 3.
    .global user_program_trap_syscall_start
user_program_trap_syscall_start:
    pushfq
    pop rax
    or rax, 0x100
    movabs rsp, 0x7ffffefff000
    mov [rsp], rax
    mov eax, 7
    popfq
    syscall
    exit_with 0
    .global user_program_trap_syscall_end
user_program_trap_syscall_end:
    // frame_probe(address): exits with what frame_of(address) returned (a frame number, 0 for
    // nothing mapped there yet, or a negative error number).
    .global user_program_frame_probe_start
user_program_frame_probe_start:
    sys 12
    mov rdi, rax
    sys 0
    .global user_program_frame_probe_end
user_program_frame_probe_end:

    // fragmenter(control): the task of the fragmenting workload (scenario=fragment,
    // bench=fragmentation; kernel::fragment drives it). `control` is a block of words in the
    // task's own memory that the kernel reads and writes: [0] command (1 fill, 2 fragment,
    // 3 verify, 4 exit), [1] pages, [2] seed, [3] the last phase done (1, 2, 3), [4] pages kept,
    // [5] pages freed, [6] pages verified, [7] pages whose signature was wrong, [8] the data
    // region's address. It waits (10 ms sleeps) for each command. Fill: maps `pages` pages and
    // signs each (first word: address ^ seed; last word: its complement). Fragment: asks the
    // frame of every page (frame_of, a diagnostic: the task needs the capability) and drops
    // with madvise(DONTNEED) the pages whose frame number is not a multiple of 4, in runs: 3 of
    // every 4 pages of each 2 MiB block the task filled. Verify: every page still mapped must
    // carry its signature, and as many as it kept. Exit (after the kernel read the figures):
    // 0 if all was well; 100 mmap failed, 101 frame_of
    // failed (or a filled page had no frame), 102 madvise failed, 103 a signature was wrong or
    // a kept page went missing.
    .global user_program_fragmenter_start
user_program_fragmenter_start:
    mov r15, rdi
.Lfg_wait_fill:
    cmp qword ptr [r15], 1
    jae .Lfg_fill
    mov edi, 10000000
    sys 6
    jmp .Lfg_wait_fill
.Lfg_fill:
    mov r12, [r15 + 8]
    mov r13, [r15 + 16]
    mov rdi, r12
    shl rdi, 12
    mov esi, 3
    sys 2
    test rax, rax
    js .Lfg_fail_mmap
    mov r14, rax
    mov [r15 + 64], r14
    mov rbp, r12
    shl rbp, 12
    add rbp, r14
    mov rbx, r14
.Lfg_fill_loop:
    mov rax, rbx
    xor rax, r13
    mov [rbx], rax
    not rax
    mov [rbx + 4088], rax
    add rbx, 4096
    cmp rbx, rbp
    jb .Lfg_fill_loop
    mov qword ptr [r15 + 24], 1
.Lfg_wait_fragment:
    cmp qword ptr [r15], 2
    jae .Lfg_fragment
    mov edi, 10000000
    sys 6
    jmp .Lfg_wait_fragment
.Lfg_fragment:
    // r8: start of the run of pages to drop (0: none), r9: kept, r10: bytes dropped.
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    mov rbx, r14
.Lfg_fragment_loop:
    mov rdi, rbx
    sys 12
    test rax, rax
    jle .Lfg_fail_frame
    test al, 3
    jz .Lfg_keep
    test r8, r8
    jnz .Lfg_next
    mov r8, rbx
    jmp .Lfg_next
.Lfg_keep:
    inc r9
    test r8, r8
    jz .Lfg_next
    mov rdi, r8
    mov rsi, rbx
    sub rsi, r8
    add r10, rsi
    mov edx, 4
    sys 4
    test rax, rax
    jnz .Lfg_fail_madvise
    xor r8d, r8d
.Lfg_next:
    add rbx, 4096
    cmp rbx, rbp
    jb .Lfg_fragment_loop
    test r8, r8
    jz .Lfg_fragmented
    mov rdi, r8
    mov rsi, rbp
    sub rsi, r8
    add r10, rsi
    mov edx, 4
    sys 4
    test rax, rax
    jnz .Lfg_fail_madvise
.Lfg_fragmented:
    shr r10, 12
    mov [r15 + 32], r9
    mov [r15 + 40], r10
    mov qword ptr [r15 + 24], 2
.Lfg_wait_verify:
    cmp qword ptr [r15], 3
    jae .Lfg_verify
    mov edi, 10000000
    sys 6
    jmp .Lfg_wait_verify
.Lfg_verify:
    // r9: pages verified, r10: pages with a wrong signature.
    xor r9d, r9d
    xor r10d, r10d
    mov rbx, r14
.Lfg_verify_loop:
    mov rdi, rbx
    sys 12
    test rax, rax
    js .Lfg_fail_frame
    jz .Lfg_verify_next
    inc r9
    mov rax, rbx
    xor rax, r13
    cmp [rbx], rax
    jne .Lfg_bad
    not rax
    cmp [rbx + 4088], rax
    je .Lfg_verify_next
.Lfg_bad:
    inc r10
.Lfg_verify_next:
    add rbx, 4096
    cmp rbx, rbp
    jb .Lfg_verify_loop
    mov [r15 + 48], r9
    mov [r15 + 56], r10
    mov qword ptr [r15 + 24], 3
.Lfg_wait_exit:
    cmp qword ptr [r15], 4
    jae .Lfg_exit
    mov edi, 10000000
    sys 6
    jmp .Lfg_wait_exit
.Lfg_exit:
    test r10, r10
    jnz .Lfg_fail_signature
    cmp r9, [r15 + 32]
    jne .Lfg_fail_signature
    exit_with 0
.Lfg_fail_mmap:
    exit_with 100
.Lfg_fail_frame:
    exit_with 101
.Lfg_fail_madvise:
    exit_with 102
.Lfg_fail_signature:
    exit_with 103
    .global user_program_fragmenter_end
user_program_fragmenter_end:
    // churn(packed): the soak's worker (kernel::scenarios::soak). `packed`: bits 0..31 a seed,
    // 32..47 the most pages of one region, 48..55 rounds, 56..59 clone depth. Each round, chosen
    // by a xorshift generator: map a region of 1..max pages into one of 8 slots (the slot's old
    // region verified and unmapped first) and write every page (its first word tag + index, its
    // last word the complement); verify a slot; unmap a slot; clone (the child goes on with
    // half the rounds left, one level less, a seed of its own and no children); wait for the
    // youngest child; rewrite a slot with a new tag (copy-on-write copies after a clone); yield
    // or sleep up to 2 ms. The slots and children live in a control page (itself copied on
    // write by a clone). At the end it verifies every slot, waits for every child and unmaps
    // every other slot (teardown frees the rest). Exits 0; a child killed (OOM killer, the
    // soak) is fine; a child's failure is passed on as its status. 100 control page mmap
    // failed, 101 a page's first word wrong, 102 its last word wrong, 103 munmap failed, 104
    // clone failed other than -EAGAIN/-ENOMEM, 105 wait failed, 106 mmap failed other than
    // -ENOMEM.
    .global user_program_churn_start
user_program_churn_start:
    mov r12d, edi
    movabs rax, 0x9e3779b97f4a7c15
    xor r12, rax
    or r12, 1
    mov r15, rdi
    shr r15, 32
    and r15d, 0xffff
    jnz .Lch_max_set
    mov r15d, 1
.Lch_max_set:
    mov r14, rdi
    shr r14, 48
    and r14d, 0xff
    mov rbx, rdi
    shr rbx, 56
    and ebx, 0xf
    mov edi, 4096
    mov esi, 3
    sys 2
    test rax, rax
    js .Lch_fail_100
    mov r13, rax
.Lch_loop:
    test r14, r14
    jz .Lch_finish
    dec r14
    call .Lch_rand
    xor edx, edx
    mov ecx, 10
    div rcx
    cmp edx, 3
    jb .Lch_op_map
    cmp edx, 4
    jb .Lch_op_verify
    cmp edx, 5
    jb .Lch_op_unmap
    cmp edx, 6
    jb .Lch_op_clone
    cmp edx, 7
    jb .Lch_op_wait
    cmp edx, 9
    jb .Lch_op_rewrite
    // yield or sleep up to 2 ms
    call .Lch_rand
    test eax, 1
    jz 2f
    xor edx, edx
    mov ecx, 2000000
    div rcx
    mov rdi, rdx
    sys 6
    jmp .Lch_loop
2:
    sys 5
    jmp .Lch_loop

.Lch_op_map:
    call .Lch_pick
    call .Lch_unmap_slot
    call .Lch_rand
    xor edx, edx
    div r15
    lea rbp, [rdx + 1]
    mov rdi, rbp
    shl rdi, 12
    mov esi, 3
    sys 2
    cmp rax, -12
    je .Lch_loop_pop
    test rax, rax
    js .Lch_fail_106
    mov r8, [rsp]
    mov [r8], rax
    mov [r8 + 8], rbp
    call .Lch_fill_slot
    jmp .Lch_loop_pop

.Lch_op_verify:
    call .Lch_pick
    call .Lch_verify_slot
    jmp .Lch_loop_pop

.Lch_op_unmap:
    call .Lch_pick
    call .Lch_unmap_slot
    jmp .Lch_loop_pop

.Lch_op_rewrite:
    call .Lch_pick
    call .Lch_verify_slot
    mov r8, [rsp]
    cmp qword ptr [r8], 0
    je .Lch_loop_pop
    call .Lch_fill_slot
    jmp .Lch_loop_pop

.Lch_op_clone:
    test rbx, rbx
    jz .Lch_loop
    cmp qword ptr [r13 + 256], 6
    jae .Lch_loop
    sys 8
    test rax, rax
    jz .Lch_child
    jns 3f
    cmp rax, -11
    je .Lch_loop
    cmp rax, -12
    je .Lch_loop
    jmp .Lch_fail_104
3:
    mov rcx, [r13 + 256]
    mov [r13 + 264 + rcx*8], rax
    inc rcx
    mov [r13 + 256], rcx
    jmp .Lch_loop
.Lch_child:
    dec rbx
    mov qword ptr [r13 + 256], 0
    shr r14, 1
    movabs rax, 0xd1b54a32d192ed03
    xor r12, rax
    rol r12, 23
    or r12, 1
    jmp .Lch_loop

.Lch_op_wait:
    cmp qword ptr [r13 + 256], 0
    je .Lch_loop
    call .Lch_wait_youngest
    jmp .Lch_loop

.Lch_finish:
    xor ebp, ebp
4:
    lea r8, [rbp + rbp*2]
    lea r8, [r13 + r8*8]
    push r8
    call .Lch_verify_slot
    test ebp, 1
    jz 5f
    call .Lch_unmap_slot
5:
    add rsp, 8
    inc ebp
    cmp ebp, 8
    jb 4b
6:
    cmp qword ptr [r13 + 256], 0
    je 7f
    call .Lch_wait_youngest
    jmp 6b
7:
    exit_with 0

.Lch_loop_pop:
    add rsp, 8
    jmp .Lch_loop

    // Waits for the youngest child and forgets it; a failed child's status is ours.
.Lch_wait_youngest:
    mov rcx, [r13 + 256]
    dec rcx
    mov [r13 + 256], rcx
    mov rdi, [r13 + 264 + rcx*8]
    lea rsi, [r13 + 512]
    sys 9
    test rax, rax
    js .Lch_fail_105
    jnz 8f
    mov rdi, [r13 + 512]
    test rdi, rdi
    jz 8f
    sys 0
8:
    ret

    // rax = the next random number (xorshift64 in r12).
.Lch_rand:
    mov rax, r12
    shl rax, 13
    xor r12, rax
    mov rax, r12
    shr rax, 7
    xor r12, rax
    mov rax, r12
    shl rax, 17
    xor r12, rax
    mov rax, r12
    ret

    // Pushes the address of a random slot (under the return address, so the caller pops it).
.Lch_pick:
    call .Lch_rand
    and eax, 7
    lea rax, [rax + rax*2]
    lea rax, [r13 + rax*8]
    pop rcx
    push rax
    jmp rcx

    // The slot at [rsp + 8]: its pages hold tag + index (first word), the complement (last).
.Lch_verify_slot:
    mov r8, [rsp + 8]
    mov r9, [r8]
    test r9, r9
    jz .Lch_verify_done
    mov r10, [r8 + 16]
    mov rcx, [r8 + 8]
.Lch_verify_page:
    dec rcx
    mov rax, rcx
    shl rax, 12
    lea rdx, [r10 + rcx]
    cmp [r9 + rax], rdx
    jne .Lch_fail_101
    not rdx
    cmp [r9 + rax + 4088], rdx
    jne .Lch_fail_102
    test rcx, rcx
    jnz .Lch_verify_page
.Lch_verify_done:
    ret

    // Writes a new tag into every page of the slot at [rsp + 8].
.Lch_fill_slot:
    call .Lch_rand
    mov r8, [rsp + 8]
    mov [r8 + 16], rax
    mov r10, rax
    mov r9, [r8]
    mov rcx, [r8 + 8]
.Lch_fill_page:
    dec rcx
    mov rax, rcx
    shl rax, 12
    lea rdx, [r10 + rcx]
    mov [r9 + rax], rdx
    not rdx
    mov [r9 + rax + 4088], rdx
    test rcx, rcx
    jnz .Lch_fill_page
    ret

    // Verifies and unmaps the slot at [rsp + 8], if used.
.Lch_unmap_slot:
    mov r8, [rsp + 8]
    cmp qword ptr [r8], 0
    je .Lch_unmap_done
    push r8
    call .Lch_verify_slot
    pop r8
    mov rdi, [r8]
    mov rsi, [r8 + 8]
    shl rsi, 12
    mov qword ptr [r8], 0
    sys 3
    test rax, rax
    jnz .Lch_fail_103
.Lch_unmap_done:
    ret

.Lch_fail_100:
    exit_with 100
.Lch_fail_101:
    exit_with 101
.Lch_fail_102:
    exit_with 102
.Lch_fail_103:
    exit_with 103
.Lch_fail_104:
    exit_with 104
.Lch_fail_105:
    exit_with 105
.Lch_fail_106:
    exit_with 106
    .global user_program_churn_end
user_program_churn_end:

    // phased(grow_pages | unit_ms << 32): the footprint benchmark's phases (scenario=phased),
    // each begun with an `event` mark; a hold of k units sleeps k * unit_ms. Every touched
    // page gets a signature (its address xor a constant) so no two pages are alike.
    // 1 grow: map and touch G pages, hold 5. 2 fragment: give back (madvise don't-need) every
    // page whose frame number is not a multiple of 4 (3 of every 4 pages of each 2 MiB block:
    // page_frame says where each lies), hold 20. 3 regrow: map and touch G/2 more, hold 5.
    // 4 shrink: unmap everything, hold 20. 5 churn: 10 rounds of mapping and touching G/3
    // pages, giving them back one by one in a pseudo-random order (a full-period LCG over the
    // next power of two, values past the end skipped), unmapping, hold 2. 6 idle: hold 20;
    // mark done, exit 0.
    // 100 mmap failed, 101 page_frame failed, 102 madvise failed, 103 munmap failed,
    // 104 event failed.
    .macro ph_mark name, len
        lea rdi, [rip + .Lph_name_\name]
        mov esi, \len
        sys 14
        test rax, rax
        jnz .Lph_fail_event
    .endm
    .macro ph_hold units
        mov rdi, r13
        imul rdi, rdi, \units
        sys 6
    .endm
    .global user_program_phased_start
user_program_phased_start:
    mov r12d, edi
    mov r13, rdi
    shr r13, 32
    imul r13, r13, 1000000
    // 1 grow
    ph_mark grow, 4
    mov rdi, r12
    shl rdi, 12
    mov esi, 3
    sys 2
    test rax, rax
    js .Lph_fail_mmap
    mov r14, rax
    mov rdi, r14
    mov rsi, r12
    call .Lph_touch
    ph_hold 5
    // 2 fragmenting shrink
    ph_mark fragment, 8
    xor ebx, ebx
.Lph_fragment:
    mov rdi, rbx
    shl rdi, 12
    add rdi, r14
    sys 12
    test rax, rax
    js .Lph_fail_frame
    test al, 3
    jz .Lph_fragment_keep
    mov rdi, rbx
    shl rdi, 12
    add rdi, r14
    mov esi, 4096
    mov edx, 4
    sys 4
    test rax, rax
    jnz .Lph_fail_madvise
.Lph_fragment_keep:
    inc rbx
    cmp rbx, r12
    jb .Lph_fragment
    ph_hold 20
    // 3 regrow
    ph_mark regrow, 6
    mov rdi, r12
    shr rdi, 1
    shl rdi, 12
    mov esi, 3
    sys 2
    test rax, rax
    js .Lph_fail_mmap
    mov r15, rax
    mov rdi, r15
    mov rsi, r12
    shr rsi, 1
    call .Lph_touch
    ph_hold 5
    // 4 full shrink
    ph_mark shrink, 6
    mov rdi, r14
    mov rsi, r12
    shl rsi, 12
    sys 3
    test rax, rax
    jnz .Lph_fail_munmap
    mov rdi, r15
    mov rsi, r12
    shr rsi, 1
    shl rsi, 12
    sys 3
    test rax, rax
    jnz .Lph_fail_munmap
    ph_hold 20
    // 5 churn
    ph_mark churn, 5
    mov rax, r12
    xor edx, edx
    mov ecx, 3
    div rcx
    mov rbp, rax
    mov r14d, 10
.Lph_churn:
    mov rdi, rbp
    shl rdi, 12
    mov esi, 3
    sys 2
    test rax, rax
    js .Lph_fail_mmap
    mov r15, rax
    mov rdi, r15
    mov rsi, rbp
    call .Lph_touch
    bsr rcx, rbp
    inc ecx
    mov r9d, 1
    shl r9, cl
    dec r9
    xor r8d, r8d
    xor ebx, ebx
.Lph_permute:
    imul r8, r8, 1103515245
    add r8, 12345
    and r8, r9
    cmp r8, rbp
    jae .Lph_permute_skip
    mov rdi, r8
    shl rdi, 12
    add rdi, r15
    mov esi, 4096
    mov edx, 4
    sys 4
    test rax, rax
    jnz .Lph_fail_madvise
.Lph_permute_skip:
    inc rbx
    cmp rbx, r9
    jbe .Lph_permute
    mov rdi, r15
    mov rsi, rbp
    shl rsi, 12
    sys 3
    test rax, rax
    jnz .Lph_fail_munmap
    ph_hold 2
    dec r14
    jnz .Lph_churn
    // 6 idle
    ph_mark idle, 4
    ph_hold 20
    ph_mark done, 4
    exit_with 0
    // touch(rdi base, rsi pages): writes each page's signature in its first word.
.Lph_touch:
    xor ecx, ecx
    movabs rdx, 0x5167ae5167ae5167
.Lph_touch_page:
    mov rax, rcx
    shl rax, 12
    add rax, rdi
    mov r8, rax
    xor r8, rdx
    mov [rax], r8
    inc rcx
    cmp rcx, rsi
    jb .Lph_touch_page
    ret
.Lph_fail_mmap:
    exit_with 100
.Lph_fail_frame:
    exit_with 101
.Lph_fail_madvise:
    exit_with 102
.Lph_fail_munmap:
    exit_with 103
.Lph_fail_event:
    exit_with 104
.Lph_name_grow:
    .ascii "grow"
.Lph_name_fragment:
    .ascii "fragment"
.Lph_name_regrow:
    .ascii "regrow"
.Lph_name_shrink:
    .ascii "shrink"
.Lph_name_churn:
    .ascii "churn"
.Lph_name_idle:
    .ascii "idle"
.Lph_name_done:
    .ascii "done"
    .global user_program_phased_end
user_program_phased_end:
    .popsection
    "#
);

macro_rules! programs {
    ($($(#[$doc:meta])* $name:ident: $start:ident .. $end:ident;)*) => {
        unsafe extern "C" {
            $(static $start: u8; static $end: u8;)*
        }
        $(
            $(#[$doc])*
            pub fn $name() -> Program {
                let start = &raw const $start;
                let end = &raw const $end;
                // SAFETY: the two symbols bracket the program's bytes, assembled above into
                // read-only data that lives as long as the kernel image.
                let code = unsafe {
                    core::slice::from_raw_parts(start, end as usize - start as usize)
                };
                Program { name: stringify!($name), code }
            }
        )*
        /// Every program, for the console and the demo.
        pub fn all() -> alloc::vec::Vec<Program> {
            alloc::vec![$($name()),*]
        }
    };
}

programs! {
    /// Maps, checks zero-fill, writes and reads back `rdi` pages; exits with the page count.
    memory_walk: user_program_memory_walk_start .. user_program_memory_walk_end;
    /// Counts non-zero words in 64 fresh pages, fills them with `rdi`, exits with the count.
    fresh_pages: user_program_fresh_pages_start .. user_program_fresh_pages_end;
    /// Reads the word at `rdi` and exits with it.
    read_address: user_program_read_address_start .. user_program_read_address_end;
    /// Writes a word at `rdi`.
    write_address: user_program_write_address_start .. user_program_write_address_end;
    /// Jumps to `rdi`.
    jump_to: user_program_jump_to_start .. user_program_jump_to_end;
    /// Executes HLT (privileged).
    privileged: user_program_privileged_start .. user_program_privileged_end;
    /// Busy for `rdi` TSC ticks without a system call (preemptible only by the timer).
    spin: user_program_spin_start .. user_program_spin_end;
    /// Sleeps `rdi` ms and checks the clock.
    sleeper: user_program_sleeper_start .. user_program_sleeper_end;
    /// Clone with copy-on-write, checked on both sides (`rdi` != 0: with the memory checkers).
    cow_clone: user_program_cow_clone_start .. user_program_cow_clone_end;
    /// madvise MERGEABLE / UNMERGEABLE, with refused bad arguments.
    advise: user_program_advise_start .. user_program_advise_end;
    /// System calls with bad arguments.
    bad_calls: user_program_bad_calls_start .. user_program_bad_calls_end;
    /// Sets RFLAGS bits `rdi`, makes system calls, exits with the RFLAGS it sees after them.
    flags: user_program_flags_start .. user_program_flags_end;
    /// Clones a child that exits with `rdi`; exits with the status `wait` gave.
    wait_status: user_program_wait_status_start .. user_program_wait_status_end;
    /// Fills `rdi` pages, clones; both sides write every page (copy-on-write).
    fill_clone: user_program_fill_clone_start .. user_program_fill_clone_end;
    /// Two tasks with the same `rdi` pages in mergeable regions: KSM merges them, the child's
    /// writes copy, the parent unmerges.
    ksm_twins: user_program_ksm_twins_start .. user_program_ksm_twins_end;
    /// Fills `rdi` pages (page i's index in its first word) in a mergeable region and sleeps.
    ksm_fill: user_program_ksm_fill_start .. user_program_ksm_fill_end;
    /// Clones `rdi` times, and every child too: up to 2^`rdi` tasks.
    clone_bomb: user_program_clone_bomb_start .. user_program_clone_bomb_end;
    /// Sleeps for good (u64::MAX ns).
    sleep_forever: user_program_sleep_forever_start .. user_program_sleep_forever_end;
    /// Waits for a child that sleeps for good.
    wait_forever: user_program_wait_forever_start .. user_program_wait_forever_end;
    /// Touches `rdi` pages and holds them for 20 s.
    hog: user_program_hog_start .. user_program_hog_end;
    /// Makes a system call with its stack pointer set to `rdi`.
    odd_stack: user_program_odd_stack_start .. user_program_odd_stack_end;
    /// SYSCALL with the single-step trap due.
    trap_syscall: user_program_trap_syscall_start .. user_program_trap_syscall_end;
    /// Exits with frame_of(`rdi`) (a diagnostic: needs the capability).
    frame_probe: user_program_frame_probe_start .. user_program_frame_probe_end;
    /// The fragmenting workload's task: fills, frees 3 of every 4 pages of each 2 MiB block,
    /// verifies, each on the kernel's command through the control block at `rdi`.
    fragmenter: user_program_fragmenter_start .. user_program_fragmenter_end;
    /// The soak's worker: seeded random map, touch, verify, unmap, clone, wait (`rdi` packed:
    /// seed, most pages of a region, rounds, clone depth; see `kernel::scenarios::soak`).
    churn: user_program_churn_start .. user_program_churn_end;
    /// The footprint benchmark's phases: grow `rdi` & 0xffff_ffff pages, hold units of
    /// `rdi` >> 32 ms (scenario=phased).
    phased: user_program_phased_start .. user_program_phased_end;
}
