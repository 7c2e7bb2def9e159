//! PCI: configuration space through the legacy I/O ports (0xCF8/0xCFC), enumeration of bus 0 and
//! every bus behind a bridge, and MSI-X set-up. Enumeration and BARs come from `virtio-drivers`'
//! `PciRoot`; this module adds the port-based access it lacks and the MSI-X table.
//!
//! Owns the configuration-address port pair (under a lock: a read is two port accesses).

use crate::sync::IrqMutex;
use alloc::vec::Vec;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, HeaderType, PciRoot,
};
use x86_64::instructions::port::Port;

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
const CAPABILITY_MSIX: u8 = 0x11;

/// The two ports, taken together.
static PORTS: IrqMutex<()> = IrqMutex::new(());

/// Configuration space through the I/O ports (configuration mechanism #1), for every bus.
pub struct PortCam;

impl PortCam {
    fn address(function: DeviceFunction, offset: u8) -> u32 {
        0x8000_0000
            | (u32::from(function.bus) << 16)
            | (u32::from(function.device) << 11)
            | (u32::from(function.function) << 8)
            | u32::from(offset & 0xfc)
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, function: DeviceFunction, offset: u8) -> u32 {
        let _ports = PORTS.lock();
        // SAFETY: 0xCF8/0xCFC are the PCI configuration ports of every PC platform; the pair is
        // used under PORTS' lock, and a configuration read has no side effect on memory.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS).write(Self::address(function, offset));
            Port::<u32>::new(CONFIG_DATA).read()
        }
    }

    fn write_word(&mut self, function: DeviceFunction, offset: u8, data: u32) {
        let _ports = PORTS.lock();
        // SAFETY: as in `read_word`; the callers write only registers they own (a device's
        // command register, BARs, capabilities), never memory.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS).write(Self::address(function, offset));
            Port::<u32>::new(CONFIG_DATA).write(data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// The PCI root through the I/O ports.
pub fn root() -> PciRoot<PortCam> {
    PciRoot::new(PortCam)
}

/// Every function on bus 0 and on the buses behind its bridges.
pub fn enumerate(root: &PciRoot<PortCam>) -> Vec<(DeviceFunction, DeviceFunctionInfo)> {
    let mut found = Vec::new();
    let mut buses = alloc::vec![0u8];
    let mut visited = [false; 256];
    while let Some(bus) = buses.pop() {
        if core::mem::replace(&mut visited[bus as usize], true) {
            continue;
        }
        for (function, info) in root.enumerate_bus(bus) {
            if info.header_type == HeaderType::PciPciBridge {
                // Secondary bus number: byte 1 of the word at 0x18.
                let secondary = (PortCam.read_word(function, 0x18) >> 8) as u8;
                if secondary != 0 {
                    buses.push(secondary);
                }
            }
            found.push((function, info));
        }
    }
    found
}

/// Turns on memory decoding and bus mastering (the device reads and writes guest memory).
pub fn enable_device(root: &mut PciRoot<PortCam>, function: DeviceFunction) {
    let (_, command) = root.get_status_command(function);
    root.set_command(
        function,
        command | Command::MEMORY_SPACE | Command::BUS_MASTER,
    );
}

/// The legacy interrupt line the firmware assigned to `function` (0xFF: none).
pub fn interrupt_line(function: DeviceFunction) -> u8 {
    PortCam.read_word(function, 0x3c) as u8
}

/// Why MSI-X could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixError {
    NoCapability,
    TooFewVectors {
        table_size: u16,
    },
    BadBar,
    Map,
    /// The device did not accept a vector.
    Refused,
}

/// Enables MSI-X on `function` with table entry `i` delivering `vectors[i]` to this CPU's local
/// APIC (fixed delivery, edge). Other entries stay masked.
pub fn enable_msix(
    root: &mut PciRoot<PortCam>,
    function: DeviceFunction,
    vectors: &[u8],
) -> Result<(), MsixError> {
    let capability = root
        .capabilities(function)
        .find(|capability| capability.id == CAPABILITY_MSIX)
        .ok_or(MsixError::NoCapability)?;
    let table_size = (capability.private_header & 0x7ff) + 1;
    if usize::from(table_size) < vectors.len() {
        return Err(MsixError::TooFewVectors { table_size });
    }
    let table = PortCam.read_word(function, capability.offset + 4);
    let (bar, offset) = ((table & 0x7) as u8, u64::from(table & !0x7));
    let Ok(Some(BarInfo::Memory { address, .. })) = root.bar_info(function, bar) else {
        return Err(MsixError::BadBar);
    };
    let entries_bytes = u64::from(table_size) * 16;
    let base =
        crate::mm::paging::map_mmio(address + offset, entries_bytes).map_err(|_| MsixError::Map)?;
    let apic_id = crate::arch::apic::id();
    for entry in 0..u64::from(table_size) {
        let at = (base + entry * 16) as *mut u32;
        let vector = vectors.get(entry as usize);
        // SAFETY: `at` is entry `entry` of the device's MSI-X table, inside the BAR range just
        // mapped uncached; its four 32-bit fields are address low, address high, data and
        // control, written with aligned volatile stores as the PCI specification requires.
        unsafe {
            match vector {
                Some(&vector) => {
                    at.write_volatile(0xfee0_0000 | (apic_id << 12));
                    at.add(1).write_volatile(0);
                    at.add(2).write_volatile(u32::from(vector));
                    at.add(3).write_volatile(0);
                }
                None => at.add(3).write_volatile(1),
            }
        }
    }
    // Message control is the upper half of the capability's first word: set Enable (bit 15),
    // clear Function Mask (bit 14).
    let word = PortCam.read_word(function, capability.offset);
    let word = (word | (1 << 31)) & !(1 << 30);
    PortCam.write_word(function, capability.offset, word);
    Ok(())
}

/// Turns MSI-X off again (the device falls back to INTx).
pub fn disable_msix(root: &mut PciRoot<PortCam>, function: DeviceFunction) {
    if let Some(capability) = root
        .capabilities(function)
        .find(|capability| capability.id == CAPABILITY_MSIX)
    {
        let word = PortCam.read_word(function, capability.offset);
        PortCam.write_word(function, capability.offset, word & !(1 << 31));
    }
}

/// Vendor capability of virtio's PCI transport that locates the common configuration.
const CAPABILITY_VENDOR: u8 = 0x09;
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const COMMON_MSIX_CONFIG: u64 = 0x10;
const COMMON_QUEUE_SELECT: u64 = 0x16;
const COMMON_QUEUE_MSIX_VECTOR: u64 = 0x1a;
/// What the device reads back for a vector it could not use.
const VIRTIO_NO_VECTOR: u16 = 0xffff;

/// Points a virtio device's configuration-change notifications at MSI-X table entry
/// `config_entry` and each listed queue at its entry, through the common configuration
/// structure (virtio 1.x, 4.1.4.3); `virtio-drivers`' transport does not do this. The device
/// confirms each by reading it back.
pub fn set_virtio_msix_vectors(
    root: &mut PciRoot<PortCam>,
    function: DeviceFunction,
    config_entry: u16,
    queues: impl Iterator<Item = (u16, u16)>,
) -> Result<(), MsixError> {
    let common = root
        .capabilities(function)
        .find(|capability| {
            capability.id == CAPABILITY_VENDOR
                && (capability.private_header >> 8) as u8 == VIRTIO_PCI_CAP_COMMON_CFG
        })
        .ok_or(MsixError::NoCapability)?;
    let bar = PortCam.read_word(function, common.offset + 4) as u8;
    let offset = u64::from(PortCam.read_word(function, common.offset + 8));
    let Ok(Some(BarInfo::Memory { address, .. })) = root.bar_info(function, bar) else {
        return Err(MsixError::BadBar);
    };
    let base = crate::mm::paging::map_mmio(address + offset, 0x40).map_err(|_| MsixError::Map)?;
    let register = |at: u64| (base + at) as *mut u16;
    // SAFETY: the registers are the device's common configuration structure, in the BAR range
    // just mapped uncached; 16-bit aligned volatile accesses, as the virtio specification
    // requires. The transport is not touching them meanwhile (the driver is single-threaded
    // until it finishes initialisation).
    unsafe {
        register(COMMON_MSIX_CONFIG).write_volatile(config_entry);
        if register(COMMON_MSIX_CONFIG).read_volatile() == VIRTIO_NO_VECTOR {
            return Err(MsixError::Refused);
        }
        for (queue, entry) in queues {
            register(COMMON_QUEUE_SELECT).write_volatile(queue);
            register(COMMON_QUEUE_MSIX_VECTOR).write_volatile(entry);
            if register(COMMON_QUEUE_MSIX_VECTOR).read_volatile() == VIRTIO_NO_VECTOR {
                return Err(MsixError::Refused);
            }
        }
    }
    Ok(())
}
