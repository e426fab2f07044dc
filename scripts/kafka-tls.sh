#!/usr/bin/env bash
# Kafka over TLS against a real Kafka-protocol broker (README.md, "Security"): builds the tansu
# broker into target/tools/ (once; about 14 minutes on 2 cores) and runs the ignored test
# `tests/tls.rs::kafka_over_tls_to_a_real_broker_*` with it. Run on purpose; `scripts/test.sh`
# does not (the build would more than double CI's time).
#
#   scripts/kafka-tls.sh
#
# tansu 0.6.0 cannot serve TLS as published: its `broker` refuses `--cert` together with `--key`
# (both are in one clap group, which allows one of its arguments), and its TLS setup panics
# ("Could not automatically determine the process-level CryptoProvider": its dependencies turn on
# both of rustls' providers). This script builds it with two changes in tansu-cli's
# `src/cli/broker.rs`: each of the two arguments requires the other, and the server
# configuration names rustls' aws-lc-rs provider. Nothing else is patched.
# Needs Rust, gcc and openssl (scripts/test.sh installs the rest of what tests/tls.rs needs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin"

version=0.6.0
tools=$PWD/target/tools
tansu=$tools/bin/tansu
src=$tools/src

# Written after the patched build (a tansu installed otherwise cannot serve TLS).
built=$tools/tansu-$version-tls.built
if [[ ! -x $tansu || ! -e $built ]]; then
    echo "==> building tansu $version with TLS arguments that work (target/tools/)"
    mkdir -p "$src/fetch/src"
    cat >"$src/fetch/Cargo.toml" <<EOF
[package]
name = "fetch-tansu"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tansu = "=$version"

[workspace]
EOF
    echo 'fn main() {}' >"$src/fetch/src/main.rs"
    # Downloads tansu and its dependencies into cargo's registry cache.
    cargo fetch --manifest-path "$src/fetch/Cargo.toml"
    cache=$(dirname "$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "tansu-$version.crate" | head -1)")
    rm -rf "$src/tansu-$version" "$src/tansu-cli-$version"
    tar -xzf "$cache/tansu-$version.crate" -C "$src"
    tar -xzf "$cache/tansu-cli-$version.crate" -C "$src"
    broker=$src/tansu-cli-$version/src/cli/broker.rs
    python3 - "$broker" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
old_cert = '    #[arg(group = "tls", long)]\n    cert: Option<PathBuf>,'
old_key = '    #[arg(group = "tls", long)]\n    key: Option<PathBuf>,'
assert old_cert in text and old_key in text, "tansu-cli's broker.rs is not as expected"
text = text.replace(old_cert, '    #[arg(long, requires = "key")]\n    cert: Option<PathBuf>,')
text = text.replace(old_key, '    #[arg(long, requires = "cert")]\n    key: Option<PathBuf>,')
old_builder = "    ServerConfig::builder()\n        .with_no_client_auth()"
assert old_builder in text, "tansu-cli's server_config is not as expected"
text = text.replace(
    old_builder,
    "    ServerConfig::builder_with_provider(std::sync::Arc::new(\n"
    "        rustls::crypto::aws_lc_rs::default_provider(),\n"
    "    ))\n"
    "    .with_safe_default_protocol_versions()?\n"
    "        .with_no_client_auth()",
)
open(path, "w").write(text)
EOF
    cat >>"$src/tansu-$version/Cargo.toml" <<EOF

[patch.crates-io]
tansu-cli = { path = "../tansu-cli-$version" }

[workspace]
EOF
    # cargo build, not install: it keeps the crate's own Cargo.lock (the versions tansu was
    # released with) and changes only the patched entry.
    cargo build --release --manifest-path "$src/tansu-$version/Cargo.toml" \
        --features dynostore,libsql --target-dir "$tools/build"
    mkdir -p "$tools/bin"
    cp "$tools/build/release/tansu" "$tansu"
    rm -rf "$tools/build"
    touch "$built"
fi

echo "==> cargo test --test tls -- --ignored kafka_over_tls_to_a_real_broker"
SENSORGATE_TANSU=$tansu cargo test --test tls -- --ignored --nocapture kafka_over_tls_to_a_real_broker
