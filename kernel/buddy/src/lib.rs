//! The buddy allocator's core, for the kernel and for the host: the page-frame records
//! ([`frame`]), one zone's free lists ([`buddy`]), a per-CPU cache list ([`pcp`]), the
//! seeded model test that the guest and the host both run ([`model`]), and a host-side
//! stand-in for the kernel's page allocator built from these parts ([`sim`], for the host tests
//! and the native benchmark).
//!
//! It owns no memory of its own beyond the pageblock table: the caller hands it the frame
//! records and locks it. `no_std` with `alloc`; it builds for `x86_64-unknown-none` (the kernel)
//! and for the host (`forced-target` in its manifest), where its unit tests run, also under
//! Miri.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod buddy;
pub mod check;
pub mod frame;
pub mod model;
pub mod pcp;
pub mod sim;
pub mod workload;

#[cfg(test)]
mod tests;
