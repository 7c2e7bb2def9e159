//! Device drivers: the serial console (and, later, PCI and virtio-balloon).
pub mod serial;
