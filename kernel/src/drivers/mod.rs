//! Device drivers: the serial console, PCI, and the virtio-balloon device (on `virtio-drivers`).
pub mod balloon;
pub mod pci;
pub mod serial;
pub mod virtio_hal;
