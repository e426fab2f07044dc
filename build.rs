//! Link options for the binaries.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |name| std::env::var(name).unwrap_or_default();
    let gnu_linux = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if gnu_linux && var("CARGO_CFG_TARGET_ARCH") == "x86_64" {
        // Relative relocations packed (DT_RELR; glibc 2.36 runs them: Debian 12): the
        // position-independent daemon's relocation table shrinks from 0.42 MiB to 7 KiB. Only on
        // x86-64, where rustc links with its own lld: Debian 12's GNU ld for arm64 and armhf
        // (binutils 2.40) ignores the option, with a warning.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
