//! The I/O APIC: routes a device's interrupt line (a GSI) to a vector of this CPU's local APIC.
//!
//! Owns the I/O APIC's registers (at the PC-standard 0xFEC0_0000, which QEMU's q35 uses), mapped
//! uncached on first use. Every pin starts masked (the firmware leaves them so); a driver
//! unmasks the one it routes.

use crate::sync::IrqMutex;

/// Physical address of the I/O APIC on PC platforms.
pub const IOAPIC_PHYS: u64 = 0xfec0_0000;
const REGISTER_SELECT: u64 = 0x00;
const REGISTER_WINDOW: u64 = 0x10;
const REDIRECTION_TABLE: u32 = 0x10;
const VERSION: u32 = 0x01;

/// The mapped register base (0 until first use), under the lock: a register access is a select
/// then a window access.
static REGISTERS: IrqMutex<u64> = IrqMutex::new(0);

fn access<R>(f: impl FnOnce(&dyn Fn(u32) -> u32, &dyn Fn(u32, u32)) -> R) -> Option<R> {
    let mut base = REGISTERS.lock();
    if *base == 0 {
        *base = crate::mm::paging::map_mmio(IOAPIC_PHYS, 0x20).ok()?;
    }
    let base = *base;
    let read = |register: u32| {
        // SAFETY: the I/O APIC's select and window registers, mapped uncached, used under the
        // lock so no other select intervenes; 32-bit aligned volatile accesses as required.
        unsafe {
            ((base + REGISTER_SELECT) as *mut u32).write_volatile(register);
            ((base + REGISTER_WINDOW) as *const u32).read_volatile()
        }
    };
    let write = |register: u32, value: u32| {
        // SAFETY: as for `read`; the callers write only redirection entries they own.
        unsafe {
            ((base + REGISTER_SELECT) as *mut u32).write_volatile(register);
            ((base + REGISTER_WINDOW) as *mut u32).write_volatile(value);
        }
    };
    Some(f(&read, &write))
}

/// Why a route could not be set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    Unmapped,
    NoSuchPin { pins: u32 },
}

/// Delivers GSI `pin` as `vector` to this CPU, level-triggered (PCI INTx lines are shared and
/// level-triggered), active high for the ISA range (0..16), active low above (PCI).
pub fn route_level(pin: u32, vector: u8) -> Result<(), RouteError> {
    let apic_id = super::apic::id();
    access(|read, write| {
        let pins = ((read(VERSION) >> 16) & 0xff) + 1;
        if pin >= pins {
            return Err(RouteError::NoSuchPin { pins });
        }
        let active_low = if pin >= 16 { 1 << 13 } else { 0 };
        let low = u32::from(vector) | (1 << 15) | active_low;
        let entry = REDIRECTION_TABLE + 2 * pin;
        write(entry + 1, apic_id << 24);
        write(entry, low);
        Ok(())
    })
    .ok_or(RouteError::Unmapped)?
}
