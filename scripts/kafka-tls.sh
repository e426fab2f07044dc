#!/usr/bin/env bash
# Kafka over TLS against a real Kafka-protocol broker (README.md, "Security"): builds the tansu
# broker 0.6.0 into target/tools/ (once; about 15-18 minutes on 2 cores) and runs the ignored test
# `tests/tls.rs::kafka_over_tls_to_a_real_broker_*` with it. Run on purpose; `scripts/test.sh`
# does not (the build would more than double CI's time).
#
#   scripts/kafka-tls.sh
#
# tansu 0.6.0 takes `--cert` and `--key` but serves plaintext whatever they say: its broker
# builds a TLS acceptor and never uses it (`let _acceptor` in tansu-broker's src/broker.rs), and
# clap refuses the two arguments together. So the test runs tansu in plaintext, advertising a
# second port where socat (OpenSSL) terminates TLS with the test's certificates and forwards the
# bytes to it: the gateway's librdkafka does the whole handshake and verification against a
# real TLS server, then speaks Kafka to a real broker. tansu is built as released, from its own
# Cargo.lock, with the features its in-memory storage needs.
# Needs Rust, gcc, openssl and socat (scripts/test.sh installs the rest of what tests/tls.rs
# needs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin"

version=0.6.0
tools=$PWD/target/tools
tansu=$tools/bin/tansu
src=$tools/src

# Written after a complete build (an interrupted one leaves no binary to trust).
built=$tools/tansu-$version.built
if [[ ! -x $tansu || ! -e $built ]]; then
    echo "==> building tansu $version (target/tools/)"
    mkdir -p "$src/fetch/src"
    cat >"$src/fetch/Cargo.toml" <<MANIFEST
[package]
name = "fetch-tansu"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tansu = "=$version"

[workspace]
MANIFEST
    echo 'fn main() {}' >"$src/fetch/src/main.rs"
    # Downloads tansu and its dependencies into cargo's registry cache.
    cargo fetch --manifest-path "$src/fetch/Cargo.toml"
    cache=$(dirname "$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "tansu-$version.crate" | head -1)")
    rm -rf "$src/tansu-$version"
    tar -xzf "$cache/tansu-$version.crate" -C "$src"
    # A workspace of its own, so that cargo does not take it for a member of ours.
    printf '\n[workspace]\n' >>"$src/tansu-$version/Cargo.toml"
    # cargo build, not install: it keeps the crate's own Cargo.lock (the versions tansu was
    # released with).
    cargo build --release --locked --manifest-path "$src/tansu-$version/Cargo.toml" \
        --features dynostore,libsql --target-dir "$tools/build"
    mkdir -p "$tools/bin"
    cp "$tools/build/release/tansu" "$tansu"
    rm -rf "$tools/build"
    touch "$built"
fi

echo "==> cargo test --test tls -- --ignored kafka_over_tls_to_a_real_broker"
SENSORGATE_TANSU=$tansu cargo test --test tls -- --ignored --nocapture kafka_over_tls_to_a_real_broker
