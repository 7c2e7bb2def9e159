//! The buddy allocator's core, for the kernel and for the host: the page-frame records
//! ([`frame`]) and one zone's free lists ([`buddy`]). It owns no memory of its own beyond the
//! pageblock table: the caller hands it the frame records and locks it.
//!
//! `no_std` with `alloc`; it builds for `x86_64-unknown-none` (the kernel) and for the host,
//! where its unit tests run (also under Miri).
#![no_std]

extern crate alloc;

pub mod buddy;
pub mod frame;
