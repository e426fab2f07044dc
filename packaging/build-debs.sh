#!/usr/bin/env bash
# Builds the Debian packages for the given architectures on a plain Debian 12 machine, without
# Docker (cross.toml is the Docker route):
#
#     packaging/build-debs.sh               # arm64 and armhf
#     packaging/build-debs.sh amd64 arm64 armhf
#
# ARCH is a Debian architecture (amd64, arm64, armhf) or a Rust target triple (armhf is built
# for thumbv7neon-unknown-linux-gnueabihf; armv7-unknown-linux-gnueabihf, named, builds A32
# code for an ARMv7 board without NEON, packaged as armhf too). For each one it
# adds the Rust target with rustup, installs Debian's cross compiler and the target's OpenSSL
# headers (libssl-dev:ARCH, through Debian multiarch) with apt-get, points Cargo, the cc crate,
# pkg-config and librdkafka's configure script at them, builds the demo's broker helper (with the
# `demo` feature) and the daemon (without it), and runs `cargo deb --target TRIPLE --no-build`. The
# packages land in target/debian/ (cargo-deb 3), named sensorgate_<version>-<revision>_<arch>.deb.
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
        "${sudo[@]}" apt-get update \
            || echo "apt-get update reported errors (above); installing from the package lists it has" >&2
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

# librdkafka's build needs make and a C++ compiler for its configure script; Kafka and MQTT TLS
# link the system's OpenSSL.
apt_install make g++ pkg-config libssl-dev
if ! cargo deb --version >/dev/null 2>&1; then
    step "Installing cargo-deb"
    cargo install cargo-deb --locked
fi

if (($# == 0)); then
    set -- arm64 armhf
fi

# armhf and armv7-unknown-linux-gnueabihf both make sensorgate_<version>_armhf.deb.
if [[ " $* " == *" armv7-unknown-linux-gnueabihf "* && " $* " =~ " "(armhf|thumbv7neon-unknown-linux-gnueabihf)" " ]]; then
    fail "armhf (Thumb-2) and armv7-unknown-linux-gnueabihf both make the armhf package: build one"
fi

built=()
for arch in "$@"; do
    case $arch in
    amd64 | x86_64-unknown-linux-gnu)
        step "amd64: the demo's broker helper, the daemon without it, cargo deb --no-build"
        cargo build --release --bin sensorgate-demo-broker
        cargo build --release --no-default-features --bin sensorgate
        built+=("$(cargo deb --no-build | tail -n 1)")
        continue
        ;;
    arm64 | aarch64-unknown-linux-gnu)
        triple=aarch64-unknown-linux-gnu
        gnu=aarch64-linux-gnu
        debarch=arm64
        ;;
    armhf | thumbv7neon-unknown-linux-gnueabihf)
        # Thumb-2 code (as Debian's own armhf C compiler emits) with NEON: a daemon of 7.1 MiB
        # instead of the armv7 target's 8.6 MiB of A32 code. Every ARMv7 and ARMv8 Raspberry Pi
        # has NEON (Pi 2 and later, Zero 2 W); for an ARMv7 board without it, build
        # armv7-unknown-linux-gnueabihf.
        triple=thumbv7neon-unknown-linux-gnueabihf
        gnu=arm-linux-gnueabihf
        debarch=armhf
        ;;
    armv7-unknown-linux-gnueabihf)
        triple=armv7-unknown-linux-gnueabihf
        gnu=arm-linux-gnueabihf
        debarch=armhf
        ;;
    *) fail "unknown architecture: $arch (amd64, arm64, armhf)" ;;
    esac

    step "$triple: toolchain"
    rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
    # The target's OpenSSL comes from Debian's $debarch archive (multiarch); the host's
    # libssl-dev must be of the same version, so both are brought up to date together.
    if ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
        step "dpkg --add-architecture $debarch"
        "${sudo[@]}" dpkg --add-architecture "$debarch"
        "${sudo[@]}" apt-get update \
            || echo "apt-get update reported errors (above); installing from the package lists it has" >&2
    fi
    # The C library comes with the compiler only as a Recommends.
    apt_install "gcc-$gnu" "g++-$gnu" "libc6-dev-$debarch-cross" "libssl-dev:$debarch"
    host_ssl=$(dpkg-query -W -f='${Version}' "libssl-dev:$(dpkg --print-architecture)")
    if [[ $(dpkg-query -W -f='${Version}' "libssl-dev:$debarch") != "$host_ssl" ]]; then
        step "libssl-dev: the same version for the host and $debarch"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl-dev "libssl-dev:$debarch"
    fi

    step "$triple: the demo's broker helper, the daemon without it, cargo deb --no-build"
    upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
    lower=${triple//-/_}
    env_vars=(
        # Rust's linker, and the C compilers the cc crate uses (zstd, zlib).
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
        # pkg-config sees the target's libraries only (OpenSSL from libssl-dev:$debarch), never
        # this machine's amd64 ones; openssl-sys asks pkg-config only when told it may cross.
        "PKG_CONFIG_LIBDIR=/usr/lib/$gnu/pkgconfig"
        "PKG_CONFIG_ALLOW_CROSS=1"
    )
    if [[ $debarch == armhf ]]; then
        # librdkafka uses 64-bit atomics, which 32-bit ARM gets from libatomic.
        env_vars+=("CARGO_TARGET_${upper}_RUSTFLAGS=-C link-arg=-latomic")
    fi
    # The release profile already strips symbols (strip = "symbols"); cargo-deb would need the
    # target's strip otherwise. Two builds: the feature differs between the two binaries.
    env "${env_vars[@]}" cargo build --release --target "$triple" --bin sensorgate-demo-broker
    env "${env_vars[@]}" cargo build --release --target "$triple" --no-default-features --bin sensorgate
    deb_triple=$triple
    if [[ $triple == thumbv7neon-* ]]; then
        # cargo-deb names a thumbv7neon package armel; the binaries are armhf's (hard-float
        # EABI), so they are packaged from the armv7 triple's directory.
        deb_triple=armv7-unknown-linux-gnueabihf
        mkdir -p "target/$deb_triple/release"
        # --remove-destination: cargo's files there are hard links to its own build of that
        # triple, which a copy through them would overwrite.
        cp --remove-destination "target/$triple/release/sensorgate" \
            "target/$triple/release/sensorgate-demo-broker" "target/$deb_triple/release/"
    fi
    built+=("$(env "${env_vars[@]}" cargo deb --target "$deb_triple" --no-build --no-strip | tail -n 1)")
done

step "Packages"
for deb in "${built[@]}"; do
    printf '%s  %s bytes  Architecture: %s  Depends: %s\n' "$deb" "$(stat -c %s "$deb")" \
        "$(dpkg-deb -f "$deb" Architecture)" "$(dpkg-deb -f "$deb" Depends)"
done
