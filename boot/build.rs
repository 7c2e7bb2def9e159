//! Puts this folder on the link search path so that `-Tkernel.ld` (set in `.cargo/config.toml`)
//! finds the kernel's linker script from every binary that links the boot crate.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rerun-if-changed=kernel.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
