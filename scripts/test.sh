#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, every test target, doc tests.
#
# Works on a fresh Debian 12 machine that has Rust (rustup) and gcc: it installs what is missing
# with apt-get (mosquitto, socat, strace, openssl, prometheus and tmux for the end-to-end tests; g++ and
# make, which librdkafka's build needs; scripts/powercut.sh installs qemu and the rest of what the
# power-cut test needs) and the rustfmt and clippy components with rustup.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH.
export PATH="$PATH:/usr/sbin"

step() { printf '\n==> %s\n' "$*"; }

# --- System packages -----------------------------------------------------------------------
packages=()
if ! command -v mosquitto >/dev/null 2>&1 && [[ ! -x /usr/sbin/mosquitto ]]; then
    packages+=(mosquitto mosquitto-clients socat)
elif ! command -v socat >/dev/null 2>&1; then
    packages+=(socat)
fi
# rdkafka builds librdkafka from source: its configure script fails without a C++ compiler,
# and the build runs make.
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    packages+=(g++)
fi
if ! command -v make >/dev/null 2>&1; then
    packages+=(make)
fi
# tests/durability.rs traces the gateway's system calls.
if ! command -v strace >/dev/null 2>&1; then
    packages+=(strace)
fi
# Kafka and MQTT TLS link the system's OpenSSL, found with pkg-config.
if ! dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q 'install ok installed'; then
    packages+=(libssl-dev pkg-config)
fi
# tests/tls.rs makes its certificates and a TLS endpoint with the openssl command.
if ! command -v openssl >/dev/null 2>&1; then
    packages+=(openssl)
fi
# tests/monitoring.rs runs Prometheus and promtool; tests/top.rs runs `sensorgate top` in tmux.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    packages+=(prometheus)
fi
if ! command -v tmux >/dev/null 2>&1; then
    packages+=(tmux)
fi
# The unit file is checked with systemd-analyze.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    packages+=(systemd)
fi
if ((${#packages[@]} > 0)); then
    step "Installing ${packages[*]}"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "test.sh: need root or sudo to install: ${packages[*]}" >&2
            exit 1
        fi
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update \
        || echo "apt-get update reported errors (above); installing from the package lists it has" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
fi

# --- Rust components -----------------------------------------------------------------------
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        step "Installing the $component component"
        rustup component add "$component"
    fi
done

# --- Checks and tests ----------------------------------------------------------------------
# A CI checkout builds once: incremental compilation state would only take disk space.
if [[ ${CI:-} == true ]]; then
    export CARGO_INCREMENTAL=0
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo clippy --no-default-features --lib --bins -- -D warnings (the packaged daemon)"
cargo clippy --no-default-features --lib --bins -- -D warnings

# Advisories (from the RustSec snapshot in ../shared/advisory-db, not fetched), licenses, bans
# and sources; deny.toml says what is allowed and why.
step "scripts/deny.sh (cargo deny check)"
deny=0
scripts/deny.sh || deny=$?
case $deny in
0) deny_result="cargo deny: advisories, bans, licenses, sources passed" ;;
77) deny_result="!!! cargo deny: advisories SKIPPED, no advisory database snapshot (see above)" ;;
*)
    echo "test.sh: cargo deny failed (exit code $deny)" >&2
    exit 1
    ;;
esac

# The output is kept in target/test-logs/ and the per-binary result lines are repeated at the end.
logs=target/test-logs
mkdir -p "$logs"

step "cargo test --workspace --all-targets"
cargo test --workspace --all-targets 2>&1 | tee "$logs/all-targets.log"

step "cargo test --workspace --doc"
cargo test --workspace --doc 2>&1 | tee "$logs/doc.log"

# The vendored sled's I/O pool (vendor/sled/PATCHES.md, item 3): its tests need sled's own
# dev-dependencies, which cargo resolves only for a workspace's own members, so they run from a
# scratch manifest over vendor/sled/src (built in target/sled-tests).
step "sled's I/O pool tests (vendor/sled/PATCHES.md, item 3)"
# The workspace's Cargo.lock pins the versions the two share.
sled_dir=$(mktemp -d)
trap 'rm -rf "$sled_dir"' EXIT
cp vendor/sled/Cargo.toml Cargo.lock "$sled_dir/"
printf '\n[workspace]\n' >>"$sled_dir/Cargo.toml"
ln -s "$PWD/vendor/sled/src" "$sled_dir/src"
CARGO_TARGET_DIR=$PWD/target/sled-tests cargo test --manifest-path "$sled_dir/Cargo.toml" --lib threadpool 2>&1 | tee "$logs/sled.log"
rm -rf "$sled_dir"

step "systemd-analyze verify systemd/sensorgate.service"
# Verify a copy whose ExecStart points at the binary just built (the packaged path does not
# exist on a build machine), and report the hardening exposure score.
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
sed "s#/usr/bin/sensorgate#$PWD/target/debug/sensorgate#g" systemd/sensorgate.service >"$unit_dir/sensorgate.service"
systemd-analyze verify "$unit_dir/sensorgate.service"
systemd-analyze security --offline=yes "$unit_dir/sensorgate.service" | tail -n 1

# A short power-cut run (README.md, "Power-cut test") on the debug build that `cargo test` just
# made, so CI does not wait for a release build (the debug build is slower in the emulated guest,
# hence half the full run's rate); the full run (100 cuts) is run on purpose.
step "scripts/powercut.sh --debug --rate 100 5"
powercut=0
scripts/powercut.sh --debug --rate 100 5 2>&1 | tee "$logs/powercut.log" || powercut=$?
case $powercut in
0) powercut_result="power-cut test: 5 cuts, passed" ;;
77) powercut_result="!!! power-cut test: SKIPPED, qemu cannot be used here (see the message above)" ;;
*)
    echo "test.sh: the power-cut test failed (exit code $powercut); see $logs/powercut.log" >&2
    exit 1
    ;;
esac

step "Summary"
grep -h -E '^(\s+Running|\s+Doc-tests|test result:)' "$logs/all-targets.log" "$logs/doc.log" "$logs/sled.log" \
    | sed -E 's/^\s+//' || true
# One closing line over every test binary, so the total is not hidden behind the last one
# (the doc-test run, which has no tests).
passed=$(grep -h -oE '^test result: [a-z]+\. [0-9]+ passed' "$logs/all-targets.log" "$logs/doc.log" "$logs/sled.log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -h -oE '[0-9]+ failed' "$logs/all-targets.log" "$logs/doc.log" "$logs/sled.log" | awk '{s += $1} END {print s + 0}')
echo
echo "All checks and tests passed."
echo "$passed passed, $failed failed"
echo "$powercut_result"
echo "$deny_result"
