#!/usr/bin/env bash
# Runs `sensorgate demo` from the arm packages under qemu-user, the way a new user without a Pi
# would try them: run on purpose, after packaging/build-debs.sh, not by scripts/test.sh.
#
#     packaging/build-debs.sh arm64 armhf
#     packaging/qemu-demo.sh              # arm64 and armhf
#     packaging/qemu-demo.sh arm64
#
# For each architecture it unpacks target/debian/sensorgate_*_<arch>.deb into a scratch
# directory and runs the packaged /usr/bin/sensorgate demo under qemu-aarch64-static or
# qemu-arm-static (package qemu-user-static), with the target's libraries from Debian multiarch
# (libssl3:<arch> and libc6:<arch>, which packaging/build-debs.sh installs). The demo starts the packaged /usr/lib/sensorgate/sensorgate-demo-broker as a child;
# without binfmt_misc the kernel cannot run an arm program directly, so SENSORGATE_DEMO_BROKER
# names a small wrapper that runs it under the same qemu. qemu-user lacks the TCGETS2 ioctl, so
# the demo's serial sensor cannot open its pseudo-terminal there: the demo must say so and pass
# without it. Exit 0 when every demo passed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
    echo "qemu-demo: FAIL: $*" >&2
    exit 1
}
step() { printf '\n==> %s\n' "$*"; }

if (($# == 0)); then
    set -- arm64 armhf
fi
for arch in "$@"; do
    case $arch in
    arm64) ;;
    armhf) ;;
    *) fail "unknown architecture $arch (arm64, armhf)" ;;
    esac
done
command -v qemu-aarch64-static >/dev/null && command -v qemu-arm-static >/dev/null || {
    step "Installing qemu-user-static"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-user-static
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for arch in "$@"; do
    case $arch in
    arm64) qemu=qemu-aarch64-static ;;
    armhf) qemu=qemu-arm-static ;;
    esac
    deb=$(ls -t target/debian/sensorgate_*_"$arch".deb 2>/dev/null | head -n 1 || true)
    [[ -n $deb ]] || fail "no target/debian/sensorgate_*_$arch.deb: run packaging/build-debs.sh $arch"
    # The target's C library through multiarch (libc6:<arch>, which libssl3:<arch> brings), not
    # the cross sysroot: with -L /usr/<gnu triple>, its loader met multiarch's libc and hung.
    dpkg-query -W -f='${Status}' "libssl3:$arch" 2>/dev/null | grep -q 'install ok installed' ||
        fail "libssl3:$arch is missing: run packaging/build-debs.sh $arch (it installs it)"

    step "$arch: $(basename "$deb") under $qemu ($($qemu --version | head -n 1))"
    x="$work/$arch"
    dpkg-deb -x "$deb" "$x"
    file -b "$x/usr/bin/sensorgate" "$x/usr/lib/sensorgate/sensorgate-demo-broker"
    cat >"$work/$arch-broker" <<EOF
#!/bin/sh
exec $qemu "$x/usr/lib/sensorgate/sensorgate-demo-broker" "\$@"
EOF
    chmod +x "$work/$arch-broker"
    $qemu "$x/usr/bin/sensorgate" --version
    started=$SECONDS
    status=0
    SENSORGATE_DEMO_BROKER="$work/$arch-broker" \
        timeout -s KILL 300 $qemu "$x/usr/bin/sensorgate" demo | tee "$work/$arch.out" || status=$?
    echo "exit status $status after $((SECONDS - started)) s"
    ((status == 0)) || fail "$arch: the demo failed (exit $status)"
    grep -q "consistent: yes" "$work/$arch.out" || fail "$arch: the demo was not consistent"
done

step "Every demo passed: $*"
