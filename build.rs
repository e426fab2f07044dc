//! Link options for the binaries: relative relocations packed (DT_RELR).
//!
//! The daemon is position-independent; its relocation table, mostly relative relocations, is
//! 0.42 MiB on amd64 and arm64 unpacked, 7 KiB packed. glibc 2.36 or later runs packed ones
//! (Debian 12, Raspberry Pi OS 12); the binary then needs `GLIBC_ABI_DT_RELR`, so an older glibc
//! refuses it at once instead of crashing. On x86-64 the usual linker packs them. For other
//! targets Debian 12's GNU ld (binutils 2.40) ignores the option, so the binaries are linked
//! with rustc's own lld (`gcc-ld/ld.lld` of its sysroot) where the toolchain has it; without
//! it they are linked as before, unpacked. Binaries built here need glibc 2.36 on the machine
//! that runs them too (the tests run the debug build: Debian 12 has it).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |name| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    if var("CARGO_CFG_TARGET_ARCH") != "x86_64" {
        let Some(gcc_ld) = rust_lld_dir(&var("RUSTC"), &var("HOST")) else {
            println!("cargo:warning=rustc's lld not found: relocations stay unpacked");
            return;
        };
        println!("cargo:rustc-link-arg-bins=-B{}", gcc_ld.display());
        println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}

/// The directory of rustc's `ld.lld` wrapper for a C compiler's `-B`, if the toolchain has one.
fn rust_lld_dir(rustc: &str, host: &str) -> Option<PathBuf> {
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(out.stdout).ok()?;
    let dir = PathBuf::from(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/gcc-ld");
    dir.join("ld.lld").is_file().then_some(dir)
}
