#!/usr/bin/env bash
# The power-cut test bed (README.md, "Power-cut test"): the gateway in a qemu virtual machine,
# killed without warning CUTS times while a sensor streams QoS 1 readings through mosquitto,
# then a final boot drains everything, and every reading mosquitto acknowledged must be in Kafka.
#
#   scripts/powercut.sh [--no-fsync] [--debug] [--seed N] [--rate R] [--strace] [--broker-debug] [CUTS]
#
#   CUTS         power cuts (default 100)
#   --no-fsync   the control run: the gateway with queue.fsync = false, which should lose readings
#                (then exit code 0 means it did)
#   --debug      test the debug build (target/debug/sensorgate, as `cargo test` leaves it) instead
#                of building and testing the release binary
#   --seed N     the random schedule of a previous run
#   --rate R     sensor readings per second (default 200)
#   --strace     run the gateway under strace in the guest (trace per boot in the work directory)
#   --broker-debug  mosquitto logs every packet it sends and receives
#
# Works on a plain Debian 12 machine with Rust: installs what it needs with apt-get (qemu, busybox,
# e2fsprogs, mosquitto, socat; sudo when not root) and downloads Debian 12's kernel package
# (apt-get download) for its vmlinuz and virtio/ext4 modules. Everything it builds or downloads
# stays in target/powercut/. Runs on qemu's TCG (no KVM needed); one guest CPU keeps one host core
# busy.
#
# Exit codes: 0 the run met its expectation, 1 it did not (readings lost, or a start of the gateway
# failed; with --no-fsync: nothing was lost), 2 the test bed failed, 77 qemu cannot be used here
# (skipped; the message says why).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin:/sbin"

cuts=100
profile=release
harness_args=()
strace=0
while (($# > 0)); do
    case "$1" in
    --no-fsync) harness_args+=(--no-fsync --expect-loss) ;;
    --debug) profile=debug ;;
    --seed | --rate)
        harness_args+=("$1" "$2")
        shift
        ;;
    --broker-debug) harness_args+=(--broker-debug) ;;
    --strace)
        harness_args+=(--strace)
        strace=1
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    [0-9]*) cuts=$1 ;;
    *)
        echo "powercut.sh: unknown argument $1 (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

step() { printf '\n==> %s\n' "$*"; }
skip() {
    printf '\n%s\n!!! SKIPPED: the power-cut test cannot run here: %s\n%s\n' \
        '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!' "$*" \
        '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!' >&2
    exit 77
}
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi

# --- System packages -----------------------------------------------------------------------
packages=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || packages+=(qemu-system-x86)
[[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || packages+=(busybox-static)
command -v mkfs.ext4 >/dev/null 2>&1 || packages+=(e2fsprogs)
command -v mosquitto >/dev/null 2>&1 || packages+=(mosquitto)
command -v socat >/dev/null 2>&1 || packages+=(socat)
command -v strip >/dev/null 2>&1 || packages+=(binutils)
((strace == 0)) || command -v strace >/dev/null 2>&1 || packages+=(strace)
if ((${#packages[@]} > 0)); then
    step "Installing ${packages[*]}"
    if ((${#sudo[@]} > 0)) && ! command -v sudo >/dev/null 2>&1; then
        skip "need root or sudo to install ${packages[*]}"
    fi
    "${sudo[@]}" apt-get update || true
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" ||
        skip "apt-get could not install ${packages[*]}"
fi
qemu-system-x86_64 -accel help 2>/dev/null | grep -qx tcg || skip "qemu-system-x86_64 has no TCG accelerator"

# --- The kernel: Debian 12's linux-image-6.1.0-*-amd64 --------------------------------------
out=target/powercut
mkdir -p "$out/kernel"
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-amd64\)$/\1/p' | head -n 1
}
pkg=$(kernel_package)
if [[ -z $pkg ]]; then
    "${sudo[@]}" apt-get update || true
    pkg=$(kernel_package)
fi
[[ -n $pkg ]] || skip "apt knows no linux-image-6.1.0-*-amd64 package (this is not Debian 12?)"
kdir="$out/kernel/$pkg"
if [[ ! -f $kdir/done ]]; then
    step "Downloading $pkg"
    rm -rf "$kdir"
    mkdir -p "$kdir"
    # apt-get download writes into the current directory (as root it warns that the _apt user
    # cannot write there; harmless).
    if ! (cd "$kdir" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed'); then
        "${sudo[@]}" apt-get update || true
        (cd "$kdir" && apt-get download "$pkg") || skip "apt-get download $pkg failed"
    fi
    dpkg-deb -x "$kdir"/*.deb "$kdir/x"
    rm -f "$kdir"/*.deb
    touch "$kdir/done"
fi
vmlinuz=$(ls "$kdir"/x/boot/vmlinuz-*)
modules=$(ls -d "$kdir"/x/lib/modules/*)

# --- The binaries --------------------------------------------------------------------------
if [[ $profile == release ]]; then
    step "cargo build --release --workspace --bins"
    cargo build --release --workspace --bins
else
    step "cargo build --workspace --bins"
    cargo build --workspace --bins
fi
bin=target/$profile

# --- The image: busybox, kernel modules, the gateway, socat and their libraries -------------
step "Building the guest image in $out/root"
root="$out/root"
rm -rf "$root"
mkdir -p "$root"/{bin,usr/bin,lib/modules,etc/sensorgate/schemas,proc,sys,dev,tmp,run,var/lib/sensorgate}
cp /bin/busybox "$root/bin/busybox"
install -m 0755 scripts/powercut-init.sh "$root/init"
cp schemas/reading.v1.json "$root/etc/sensorgate/schemas/"
# The gateway without its debug information (a debug build is mostly that).
strip -o "$root/usr/bin/sensorgate" "$bin/sensorgate"
cp "$(command -v socat)" "$root/usr/bin/socat"
binaries=("$root/usr/bin/sensorgate" "$root/usr/bin/socat")
if ((strace == 1)); then
    cp "$(command -v strace)" "$root/usr/bin/strace"
    binaries+=("$root/usr/bin/strace")
fi
# Every library ldd names, at the same path, and the dynamic loader.
for b in "${binaries[@]}"; do
    ldd "$b" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
# Kernel modules, dependencies first (from each module's .modinfo "depends=").
declare -A loaded=()
order=()
module_path() { find "$modules/kernel" -name "$1.ko" | head -n 1; }
add_module() {
    local name=$1 path dep
    [[ -z ${loaded[$name]:-} ]] || return 0
    loaded[$name]=1
    path=$(module_path "$name")
    [[ -n $path ]] || {
        echo "powercut.sh: kernel module $name not found in $pkg" >&2
        exit 2
    }
    for dep in $(tr '\0' '\n' <"$path" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '); do
        add_module "$dep"
    done
    cp "$path" "$root/lib/modules/$name.ko"
    order+=("$name")
}
# crc32c_generic: ext4 and jbd2 checksum metadata with crc32c through the crypto API.
for m in crc32c_generic virtio_pci virtio_blk virtio_net ext4; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$root/lib/modules/load-order"
du -sh "$root" | awk '{print "image size " $1}'

# --- The run -------------------------------------------------------------------------------
work="$out/run-fsync-on"
[[ " ${harness_args[*]} " != *" --no-fsync "* ]] || work="$out/run-fsync-off"
step "sensorgate-powercut --cuts $cuts ${harness_args[*]}"
status=0
SENSORGATE_MOCK_KAFKA="$bin/sensorgate-mock-kafka" "$bin/sensorgate-powercut" \
    --cuts "$cuts" --image "$root" --kernel "$vmlinuz" --work "$work" "${harness_args[@]}" || status=$?
if [[ -f $work/report.txt ]]; then
    echo "(report: $work/report.txt)"
fi
exit "$status"
