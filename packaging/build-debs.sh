#!/usr/bin/env bash
# Builds the Debian packages for the given architectures on a plain Debian 12 machine, without
# Docker (cross.toml is the Docker route):
#
#     packaging/build-debs.sh               # arm64 and armhf
#     packaging/build-debs.sh amd64 arm64 armhf
#
# ARCH is a Debian architecture (amd64, arm64, armhf) or a Rust target triple. For each one it
# adds the Rust target with rustup, installs Debian's cross compiler with apt-get, points Cargo,
# the cc crate and librdkafka's configure script at it, and runs `cargo deb --target TRIPLE`.
# The packages land in target/debian/ (cargo-deb 3), named sensorgate_<version>-<revision>_<arch>.deb.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
fail() {
    echo "build-debs: $*" >&2
    exit 1
}

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]} > 0)); then
        step "Installing ${missing[*]}"
        "${sudo[@]}" apt-get update
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

# librdkafka's build needs make and a C++ compiler for its configure script.
apt_install make g++ pkg-config
if ! cargo deb --version >/dev/null 2>&1; then
    step "Installing cargo-deb"
    cargo install cargo-deb --locked
fi

if (($# == 0)); then
    set -- arm64 armhf
fi

built=()
for arch in "$@"; do
    case $arch in
    amd64 | x86_64-unknown-linux-gnu)
        step "amd64: cargo deb"
        built+=("$(cargo deb | tail -n 1)")
        continue
        ;;
    arm64 | aarch64-unknown-linux-gnu)
        triple=aarch64-unknown-linux-gnu
        gnu=aarch64-linux-gnu
        debarch=arm64
        ;;
    armhf | armv7-unknown-linux-gnueabihf)
        triple=armv7-unknown-linux-gnueabihf
        gnu=arm-linux-gnueabihf
        debarch=armhf
        ;;
    *) fail "unknown architecture: $arch (amd64, arm64, armhf)" ;;
    esac

    step "$triple: toolchain"
    rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
    # The C library comes with the compiler only as a Recommends.
    apt_install "gcc-$gnu" "g++-$gnu" "libc6-dev-$debarch-cross"

    step "$triple: cargo deb --target $triple"
    upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
    lower=${triple//-/_}
    env_vars=(
        # Rust's linker, and the C compilers the cc crate uses (zstd, zlib, OpenSSL).
        "CARGO_TARGET_${upper}_LINKER=$gnu-gcc"
        "CC_${lower}=$gnu-gcc"
        "CXX_${lower}=$gnu-g++"
        "AR_${lower}=$gnu-ar"
        # librdkafka's configure script (mklove) reads plain CC/CXX/AR; build scripts that
        # compile for this machine use HOST_CC and friends (the cc crate prefers them to CC).
        "CC=$gnu-gcc"
        "CXX=$gnu-g++"
        "AR=$gnu-ar"
        "HOST_CC=gcc"
        "HOST_CXX=g++"
        "HOST_AR=ar"
        # No target libraries through pkg-config: every C dependency is built from source, so
        # the build must not pick up this machine's amd64 libraries.
        "PKG_CONFIG_LIBDIR=/usr/lib/$gnu/pkgconfig"
    )
    if [[ $triple == armv7-* ]]; then
        # librdkafka uses 64-bit atomics, which 32-bit ARM gets from libatomic.
        env_vars+=("CARGO_TARGET_${upper}_RUSTFLAGS=-C link-arg=-latomic")
    fi
    # The release profile already strips symbols (strip = "symbols"); cargo-deb would need the
    # target's strip otherwise.
    built+=("$(env "${env_vars[@]}" cargo deb --target "$triple" --no-strip | tail -n 1)")
done

step "Packages"
for deb in "${built[@]}"; do
    printf '%s  %s bytes  Architecture: %s\n' "$deb" "$(stat -c %s "$deb")" "$(dpkg-deb -f "$deb" Architecture)"
done
