#!/usr/bin/env bash
# Measures what sensorgate costs a small board, per architecture: the stripped daemon binary, the
# .deb and its Depends; the idle daemon's RSS and thread count 10 s after start; and the time
# from start to READY=1 (sd_notify) with an empty outbox. Run on purpose, not by scripts/test.sh:
#
#     packaging/build-debs.sh amd64 arm64 armhf     # the packages first
#     bench/footprint.sh                            # every package in target/debian/
#     bench/footprint.sh amd64 arm64                # some of them
#     bench/footprint.sh --bin target/release/sensorgate   # a binary, not a package (amd64)
#
# The idle daemon has one MQTT source connected to a mosquitto on this machine, Kafka
# unreachable (a closed port of 127.0.0.1), the metrics listener on, a fresh state directory, and
# MALLOC_ARENA_MAX=2 as the systemd unit sets it.
# amd64 runs natively; arm64 and armhf run under qemu-aarch64-static / qemu-arm-static (with the
# multiarch libc6 and libssl3 of the target that packaging/build-debs.sh installs), so their
# RSS is qemu's (it includes qemu's translation cache) and their times are qemu's: indicative
# only. Figures taken while other builds run are noisy; run it on a quiet machine.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin:/sbin"

IDLE_SECS=${IDLE_SECS:-10}
# As the systemd unit runs the daemon (Environment=MALLOC_ARENA_MAX=2), unless set otherwise.
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}

fail() {
    echo "footprint: $*" >&2
    exit 1
}
command -v mosquitto >/dev/null || fail "needs mosquitto (apt-get install mosquitto)"
command -v socat >/dev/null || fail "needs socat (apt-get install socat)"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }

free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if [[ -z $(ss -Htan "( sport = :$port )" 2>/dev/null) ]]; then
            echo "$port"
            return
        fi
    done
}

# The emulator for a Debian architecture (empty for this machine's).
runner_for() {
    case $1 in
    amd64) echo "" ;;
    arm64) echo "qemu-aarch64-static" ;;
    armhf) echo "qemu-arm-static" ;;
    *) fail "unknown architecture $1" ;;
    esac
}

# One MQTT broker for every run.
mqtt_port=$(free_port)
cat >"$work/mosquitto.conf" <<EOF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
EOF
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break
    sleep 0.05
done

# idle BINARY SCHEMAS_DIR ARCH: prints "ready_ms rss_kib threads thread-names".
idle() {
    local bin=$1 schemas=$2 arch=$3 dir
    dir=$(mktemp -d "$work/run.XXXX")
    local kafka_port metrics_port
    kafka_port=$(free_port) # nothing listens there: Kafka is unreachable
    metrics_port=$(free_port)
    cat >"$dir/sensorgate.toml" <<EOF
[gateway]
id = "footprint"
state_dir = "state"
schemas_dir = "$schemas"
log_level = "info"

[kafka]
brokers = "127.0.0.1:$kafka_port"

[[mqtt]]
name = "local"
url = "mqtt://127.0.0.1:$mqtt_port"
client_id = "footprint-$arch-$RANDOM"
topics = ["sensors/+/reading"]

[[route]]
source = "local"
topic_filter = "sensors/+/reading"
schema = "reading.v1.json"
kafka_topic = "sensors.readings"

[metrics]
listen = "127.0.0.1:$metrics_port"
EOF
    # Each datagram on the notify socket, stamped with its arrival time.
    socat -u "UNIX-RECV:$dir/notify" - 2>/dev/null | while IFS= read -r line; do
        echo "$(date +%s%N) $line"
    done >"$dir/notify.log" &
    local reader=$!
    for _ in $(seq 100); do
        [[ -S $dir/notify ]] && break
        sleep 0.01
    done
    local runner
    runner=$(runner_for "$arch")
    local t0
    t0=$(date +%s%N)
    # shellcheck disable=SC2086 # the runner is a command and its options
    NOTIFY_SOCKET="$dir/notify" $runner "$bin" run --config "$dir/sensorgate.toml" 2>"$dir/stderr" &
    local pid=$!
    local start=$SECONDS ready=""
    while ((SECONDS - start < 60)); do
        ready=$(awk '$2 == "READY=1" { print $1; exit }' "$dir/notify.log")
        [[ -n $ready ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.01
    done
    if [[ -z $ready ]]; then
        kill "$pid" 2>/dev/null || true
        kill "$reader" 2>/dev/null || true
        cat "$dir/stderr" >&2
        fail "$bin did not send READY=1"
    fi
    local until=$((t0 + IDLE_SECS * 1000000000))
    while (($(date +%s%N) < until)); do sleep 0.2; done
    local rss threads names
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
    names=$(cat /proc/"$pid"/task/*/comm | tr " " "_" | sort | uniq -c | awk '{ printf "%s%s×%s", sep, $2, $1; sep=", " }')
    if [[ -n ${FOOTPRINT_KEEP:-} ]]; then
        cp "/proc/$pid/smaps" "$FOOTPRINT_KEEP.smaps"
        cp "/proc/$pid/status" "$FOOTPRINT_KEEP.status"
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    kill "$reader" 2>/dev/null || true
    echo "$(((ready - t0) / 1000000)) $rss $threads $names"
}

rows=()
details=()
measure() {
    local arch=$1 bin=$2 schemas=$3 deb=${4:-}
    local bin_bytes deb_cell="-" depends="-"
    bin_bytes=$(stat -c %s "$bin")
    if [[ -n $deb ]]; then
        deb_cell=$(mib "$(stat -c %s "$deb")")
        depends=$(dpkg-deb -f "$deb" Depends)
    fi
    echo "$arch: idle run of $bin (${IDLE_SECS} s)…" >&2
    local ready rss threads names
    read -r ready rss threads names < <(idle "$bin" "$schemas" "$arch")
    rows+=("| $arch | $(mib "$bin_bytes") | $deb_cell | $(awk -v k="$rss" 'BEGIN { printf "%.1f MiB", k / 1024 }') | $threads | $ready ms | \`$depends\` |")
    details+=("$arch threads: $names")
}

if [[ ${1:-} == --bin ]]; then
    [[ -n ${2:-} ]] || fail "--bin needs a path"
    measure "${3:-amd64}" "$2" "$PWD/schemas"
else
    if (($# == 0)); then
        set -- amd64 arm64 armhf
        missing_ok=1
    fi
    for arch in "$@"; do
        deb=$(ls -t target/debian/sensorgate_*_"$arch".deb 2>/dev/null | head -n 1 || true)
        if [[ -z $deb ]]; then
            [[ -n ${missing_ok:-} ]] && continue
            fail "no target/debian/sensorgate_*_$arch.deb (packaging/build-debs.sh $arch)"
        fi
        x="$work/x-$arch"
        dpkg-deb -x "$deb" "$x"
        measure "$arch" "$x/usr/bin/sensorgate" "$x/etc/sensorgate/schemas" "$deb"
    done
fi

echo
echo "| Arch | Daemon (stripped) | .deb | Idle RSS | Threads | READY=1 | Depends |"
echo "|------|-------------------|------|----------|---------|---------|---------|"
printf '%s\n' "${rows[@]}"
echo
printf '%s\n' "${details[@]}"
