//! PVH boot: the ELF note that makes QEMU's `-kernel` start us, the 32-bit entry that reaches
//! long mode on early page tables, and the [`BootInfo`] handed to the kernel.
//!
//! Owns: the `.boot.*` sections, the early page tables, the boot stack and the copy of the
//! firmware's `hvm_start_info` (memory map, command line, RSDP). Touches nothing else: once
//! [`BootInfo`] is built it calls `kernel_entry`, which the kernel's `entry_point!` defines.
//!
//! Address layout set up here (the kernel keeps it):
//! - all physical memory below 4 GiB is mapped at [`DIRECT_MAP_BASE`] with 2 MiB pages (the
//!   range 3..4 GiB, where the local APIC, HPET and PCI windows live, uncached);
//! - the kernel image runs at [`KERNEL_VMA`] + its physical address;
//! - the low 4 GiB are also identity-mapped, only until the kernel drops that mapping.
#![no_std]

mod start_info;

pub use start_info::{
    BootInfo, MAX_CMDLINE, MAX_MEMORY_REGIONS, MemoryKind, MemoryMapProblem, MemoryRegion,
    PHYSICAL_ADDRESS_LIMIT, check_memory_map,
};

/// Virtual address at which all physical memory is mapped.
pub const DIRECT_MAP_BASE: u64 = 0xffff_8000_0000_0000;
/// Virtual address of physical address 0 in the kernel image mapping.
pub const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;
/// How much of physical memory the early page tables map at [`DIRECT_MAP_BASE`].
pub const EARLY_DIRECT_MAP_SIZE: u64 = 4 << 30;
/// Size of the boot stack the first kernel thread runs on.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;
/// The value the boot code writes to QEMU's isa-debug-exit port when it cannot go on (the
/// kernel's `ExitCode::Failure`).
const EXIT_FAILURE: u32 = 0x11;

core::arch::global_asm!(
    r#"
    /* PVH ELF note: Xen's XEN_ELFNOTE_PHYS32_ENTRY (18) carries the 32-bit physical entry. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .boot.bss, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:      .skip 4096
boot_pdpt_low:  .skip 4096
boot_pdpt_high: .skip 4096
boot_pd:        .skip 4096 * 4
    .global boot_entry_tsc
boot_entry_tsc: .skip 8

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    .global boot_stack_guard
boot_stack_guard:
    .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip {stack_size}
    .global boot_stack_top
boot_stack_top:

    .section .boot.text, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    /* 32-bit protected mode, paging off, %ebx = physical address of hvm_start_info. */
    cli
    cld
    rdtsc
    mov %eax, boot_entry_tsc
    mov %edx, boot_entry_tsc + 4

    /* Long mode and NX (set in EFER below) are required: without them the switch would
       triple-fault in silence, so say so on COM1 and exit through isa-debug-exit. CPUID
       overwrites %ebx: keep the start_info address in %esi meanwhile. */
    mov %ebx, %esi
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb boot_cpu_unsupported
    mov $0x80000001, %eax
    cpuid
    test $(1 << 29), %edx
    jz boot_cpu_unsupported
    test $(1 << 20), %edx
    jz boot_cpu_unsupported
    mov %esi, %ebx

    /* Zero the seven early page-table pages. */
    mov $boot_pml4, %edi
    xor %eax, %eax
    mov $(7 * 4096 / 4), %ecx
    rep stosl

    /* PML4[0] (identity) and PML4[256] (direct map) share one PDPT covering 0..4 GiB. */
    mov $boot_pdpt_low, %eax
    or $0x3, %eax
    mov %eax, boot_pml4
    mov %eax, boot_pml4 + 256 * 8
    /* PML4[511] -> PDPT whose entry 510 maps -2 GiB onto physical 0..1 GiB. */
    mov $boot_pdpt_high, %eax
    or $0x3, %eax
    mov %eax, boot_pml4 + 511 * 8
    mov $boot_pd, %eax
    or $0x3, %eax
    mov %eax, boot_pdpt_high + 510 * 8
    mov %eax, boot_pdpt_low
    add $4096, %eax
    mov %eax, boot_pdpt_low + 8
    add $4096, %eax
    mov %eax, boot_pdpt_low + 16
    add $4096, %eax
    mov %eax, boot_pdpt_low + 24

    /* 2048 PDEs of 2 MiB each: present, writable, huge; 3..4 GiB also PCD|PWT (MMIO). */
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    cmp $1536, %ecx
    jb 2f
    or $0x18, %eax
2:  mov %eax, boot_pd(, %ecx, 8)
    mov %ecx, %edx
    shr $11, %edx
    mov %edx, boot_pd + 4(, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b

    lgdt boot_gdt_pointer

    /* CR4: PAE | PGE. */
    mov %cr4, %eax
    or $0xa0, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    /* EFER: LME | NXE. */
    mov $0xc0000080, %ecx
    rdmsr
    or $0x900, %eax
    wrmsr
    /* CR0: PG | WP | PE. */
    mov %cr0, %eax
    or $0x80010001, %eax
    mov %eax, %cr0
    ljmp $0x08, $boot_start64

    .code64
boot_start64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs

    /* Zero the kernel's .bss (it holds the boot stack, so before using any stack). */
    movabs $__bss_start, %rdi
    movabs $__bss_end, %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb

    movabs $boot_stack_top, %rsp
    xor %ebp, %ebp
    mov %ebx, %edi
    movabs ${boot_main}, %rax
    call *%rax
3:  hlt
    jmp 3b

    .code32
boot_cpu_unsupported:
    /* COM1: 8 data bits, no parity, 1 stop bit, divisor latch off (so 0x3f8 is the data). */
    mov $0x3fb, %dx
    mov $0x03, %al
    outb %al, %dx
    mov $boot_cpu_unsupported_message, %esi
boot_say_next:
    movb (%esi), %cl
    test %cl, %cl
    jz boot_say_done
    /* Wait for COM1's transmit holding register (LSR bit 5), then send the byte. */
    mov $0x3fd, %dx
boot_say_wait:
    inb %dx, %al
    test $0x20, %al
    jz boot_say_wait
    mov $0x3f8, %dx
    mov %cl, %al
    outb %al, %dx
    inc %esi
    jmp boot_say_next
boot_say_done:
    /* isa-debug-exit: the kernel's failure status (QEMU exits 35, run-qemu.sh 1). */
    mov $0xf4, %dx
    mov ${failure}, %eax
    outl %eax, %dx
boot_halt:
    hlt
    jmp boot_halt
boot_cpu_unsupported_message:
    .asciz "cannot boot: this CPU has no 64-bit long mode or no NX (CPUID 0x80000001 EDX bits 29 and 20), which the kernel needs; give QEMU a 64-bit CPU with nx (no '-nx' in -cpu)\r\n"

    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff /* 0x08: 64-bit code, accessed */
    .quad 0x00cf93000000ffff /* 0x10: data, accessed */
boot_gdt_end:
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    /* Back to 64-bit mode: with link-time optimisation every crate's global assembly is one
       file, and the code that follows this block is 64-bit. */
    .code64
    "#,
    stack_size = const BOOT_STACK_SIZE,
    failure = const EXIT_FAILURE,
    boot_main = sym start_info::boot_main,
    options(att_syntax)
);

unsafe extern "C" {
    static __boot_start: u8;
    static __boot_end: u8;
    static __kernel_start: u8;
    static __kernel_end: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static boot_stack_guard: u8;
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
    static boot_pml4: u8;
}

/// A half-open range of addresses `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrRange {
    pub start: u64,
    pub end: u64,
}

impl AddrRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Where the linker put the kernel image, as virtual ranges (physical = virtual - [`KERNEL_VMA`]).
#[derive(Clone, Copy, Debug)]
pub struct KernelLayout {
    /// The identity-mapped boot code, note and early page tables (physical = virtual).
    pub boot: AddrRange,
    /// The whole higher-half image, text through bss.
    pub image: AddrRange,
    pub text: AddrRange,
    pub rodata: AddrRange,
    /// `.data` and `.bss`, including the boot stack.
    pub data: AddrRange,
    pub boot_stack: AddrRange,
    /// The page under the boot stack, left unmapped by the kernel's page tables.
    pub boot_stack_guard: u64,
    /// Physical address of the early PML4.
    pub boot_pml4_phys: u64,
}

impl KernelLayout {
    /// The physical range the higher-half image occupies.
    pub fn image_phys(&self) -> AddrRange {
        AddrRange {
            start: self.image.start - KERNEL_VMA,
            end: self.image.end - KERNEL_VMA,
        }
    }
}

fn addr(symbol: &u8) -> u64 {
    symbol as *const u8 as u64
}

/// The kernel image layout, read from the linker script's symbols.
pub fn kernel_layout() -> KernelLayout {
    // SAFETY: these are linker-defined symbols; only their addresses are taken, never their
    // contents.
    unsafe {
        let range = |start: &u8, end: &u8| AddrRange {
            start: addr(start),
            end: addr(end),
        };
        KernelLayout {
            boot: range(&__boot_start, &__boot_end),
            image: range(&__kernel_start, &__kernel_end),
            text: range(&__text_start, &__text_end),
            rodata: range(&__rodata_start, &__rodata_end),
            data: range(&__data_start, &__data_end),
            boot_stack: range(&boot_stack_bottom, &boot_stack_top),
            boot_stack_guard: addr(&boot_stack_guard),
            boot_pml4_phys: addr(&boot_pml4),
        }
    }
}
