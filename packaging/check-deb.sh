#!/usr/bin/env bash
# Builds the amd64 Debian package with cargo-deb and checks it, without Docker:
#
#   - lintian: no errors (warnings are printed; overrides are in packaging/lintian-overrides);
#   - dpkg-deb -I / -c: the expected files, conffiles and dependencies;
#   - an install into a scratch root with `dpkg --root=DIR --force-script-chrootless` (the
#     maintainer scripts run on this machine with DPKG_ROOT=DIR and only touch DIR): the
#     sensorgate user in group dialout, /var/lib/sensorgate (sensorgate, 0750), the unit enabled;
#     then a reinstall (the upgrade path), a removal (state kept) and a purge (state removed);
#   - systemd-analyze verify on the installed unit, `sensorgate check-config` on the installed
#     default configuration, and a short `sensorgate demo` of the installed binary (which runs
#     the installed /usr/lib/sensorgate/sensorgate-demo-broker);
#   - the sizes of the .deb and of the stripped binary.
#
# Installs what is missing: lintian, systemd (systemd-analyze), g++ and make (librdkafka's build)
# with apt-get, cargo-deb with cargo. Not part of scripts/test.sh: the release build takes several
# minutes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin:/sbin"

step() { printf '\n==> %s\n' "$*"; }
fail() {
    echo "check-deb: FAIL: $*" >&2
    exit 1
}

# --- Tools ---------------------------------------------------------------------------------
packages=()
command -v lintian >/dev/null 2>&1 || packages+=(lintian)
command -v systemd-analyze >/dev/null 2>&1 || packages+=(systemd)
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || packages+=(g++)
command -v make >/dev/null 2>&1 || packages+=(make)
dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q 'install ok installed' || packages+=(libssl-dev)
if ((${#packages[@]} > 0)); then
    step "Installing ${packages[*]}"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || fail "need root or sudo to install: ${packages[*]}"
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update \
        || echo "apt-get update reported errors (above); installing from the package lists it has" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
fi
if ! cargo deb --version >/dev/null 2>&1; then
    step "Installing cargo-deb"
    cargo install cargo-deb --locked
fi

# --- Build ---------------------------------------------------------------------------------
step "cargo build (the demo's broker helper, the daemon without it), cargo deb --no-build"
# The package's daemon is built without the `demo` feature; its broker helper with it.
cargo build --release --bin sensorgate-demo-broker
cargo build --release --no-default-features --bin sensorgate
deb=$(cargo deb --no-build)
deb=$(echo "$deb" | tail -n 1)
[[ -f $deb ]] || fail "cargo deb did not report a package file: $deb"
echo "$deb"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- lintian -------------------------------------------------------------------------------
step "lintian"
# --fail-on error: warnings and informational tags are shown but do not fail the check.
lintian --fail-on error --info --display-info "$deb" || fail "lintian reported errors"
echo "lintian: no errors"

# --- Control data and contents -------------------------------------------------------------
step "dpkg-deb -I"
dpkg-deb -I "$deb"

step "dpkg-deb -c"
dpkg-deb -c "$deb"
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's#^\./#/#' >"$work/files"
for f in /usr/bin/sensorgate \
    /usr/lib/sensorgate/sensorgate-demo-broker \
    /usr/lib/systemd/system/sensorgate.service \
    /etc/sensorgate/sensorgate.toml \
    /etc/sensorgate/schemas/reading.v1.json \
    /usr/lib/sysusers.d/sensorgate.conf \
    /usr/share/doc/sensorgate/examples/mosquitto.conf \
    /usr/share/doc/sensorgate/examples/sensorgate.acl \
    /usr/share/sensorgate/grafana/sensorgate.json \
    /usr/share/sensorgate/prometheus/sensorgate.rules.yml \
    /usr/share/doc/sensorgate/copyright \
    /usr/share/doc/sensorgate/changelog.Debian.gz; do
    grep -qx "$f" "$work/files" || fail "$f is not in the package"
done
echo "expected files: present"

dpkg-deb -e "$deb" "$work/control"
step "conffiles"
cat "$work/control/conffiles"
for f in /etc/sensorgate/sensorgate.toml /etc/sensorgate/schemas/reading.v1.json; do
    grep -qx "$f" "$work/control/conffiles" || fail "$f is not a conffile"
done
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
[[ $depends == *libc6* ]] || fail "Depends lacks libc6"
[[ $depends == *systemd* ]] || fail "Depends lacks systemd"
[[ $depends == *libssl3* ]] || fail "Depends lacks libssl3"

# --- Install into a scratch root -----------------------------------------------------------
step "dpkg --root (scratch root, maintainer scripts chrootless)"
host_user_before=$(getent passwd sensorgate || true)
host_state_before=$([[ -e /var/lib/sensorgate ]] && echo yes || echo no)
root="$work/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
touch "$root/var/lib/dpkg/status"
# The users and groups of a fresh Debian system (dialout is gid 20).
cp /usr/share/base-passwd/passwd.master "$root/etc/passwd"
cp /usr/share/base-passwd/group.master "$root/etc/group"
# --force-depends: the scratch root has no libc6 or systemd package registered.
dpkg_root=(dpkg --root="$root" --force-script-chrootless --force-depends --log=/dev/null)
"${dpkg_root[@]}" -i "$deb"

step "Installed tree"
grep '^sensorgate:' "$root/etc/passwd" || fail "no sensorgate user"
grep '^sensorgate:' "$root/etc/group" || fail "no sensorgate group"
grep -E '^dialout:[^:]*:[0-9]+:(.*,)?sensorgate(,.*)?$' "$root/etc/group" || fail "sensorgate is not in group dialout"
uid=$(awk -F: '$1 == "sensorgate" { print $3 }' "$root/etc/passwd")
stat -c '%a %u:%g %n' "$root/var/lib/sensorgate"
[[ $(stat -c '%a %u' "$root/var/lib/sensorgate") == "750 $uid" ]] ||
    fail "/var/lib/sensorgate is not mode 0750 owned by sensorgate"
gid=$(awk -F: '$1 == "sensorgate" { print $3 }' "$root/etc/group")
stat -c '%a %u:%g %n' "$root/etc/sensorgate" "$root/etc/sensorgate/sensorgate.toml"
[[ $(stat -c '%a %u:%g' "$root/etc/sensorgate") == "750 0:$gid" ]] ||
    fail "/etc/sensorgate is not mode 0750 root:sensorgate"
[[ $(stat -c '%a %u:%g' "$root/etc/sensorgate/sensorgate.toml") == "640 0:$gid" ]] ||
    fail "/etc/sensorgate/sensorgate.toml is not mode 0640 root:sensorgate"
ls -l "$root/etc/systemd/system/multi-user.target.wants/sensorgate.service" ||
    fail "the unit was not enabled"
ls -l "$root/usr/lib/systemd/system/sensorgate.service" "$root/usr/bin/sensorgate" "$root/etc/sensorgate"

step "systemd-analyze verify (installed unit)"
# As scripts/test.sh does: a copy whose paths point at the installed binary.
sed "s#/usr/bin/sensorgate#$root/usr/bin/sensorgate#g" "$root/usr/lib/systemd/system/sensorgate.service" \
    >"$work/sensorgate.service"
systemd-analyze verify "$work/sensorgate.service"
echo "systemd-analyze verify: ok"

step "sensorgate check-config (installed default configuration)"
sed -e "s#\"/etc/sensorgate/schemas\"#\"$root/etc/sensorgate/schemas\"#" \
    -e "s#\"/var/lib/sensorgate\"#\"$work/state\"#" \
    "$root/etc/sensorgate/sensorgate.toml" >"$work/sensorgate.toml"
"$root/usr/bin/sensorgate" --version
"$root/usr/bin/sensorgate" check-config --config "$work/sensorgate.toml"

step "sensorgate demo (installed binary and broker helper)"
"$root/usr/bin/sensorgate" demo --duration 4s --devices 5 | tee "$work/demo.out"
grep -q "rumqttd in sensorgate-demo-broker" "$work/demo.out" || fail "the demo did not run the installed broker helper"
grep -q "consistent: yes" "$work/demo.out" || fail "the installed demo was not consistent"

step "Upgrade (reinstall), remove, purge"
"${dpkg_root[@]}" -i "$deb"
"${dpkg_root[@]}" --remove sensorgate
[[ -d $root/var/lib/sensorgate ]] || fail "remove deleted /var/lib/sensorgate"
[[ -f $root/etc/sensorgate/sensorgate.toml ]] || fail "remove deleted the conffile"
[[ ! -e $root/usr/bin/sensorgate ]] || fail "remove left /usr/bin/sensorgate"
echo "after remove: state and conffiles kept, binary gone"
"${dpkg_root[@]}" --purge sensorgate
[[ ! -e $root/var/lib/sensorgate ]] || fail "purge left /var/lib/sensorgate"
[[ ! -e $root/etc/sensorgate/sensorgate.toml ]] || fail "purge left the conffile"
echo "after purge: /var/lib/sensorgate and conffiles gone"

# The chrootless scripts must not have touched this machine.
[[ $(getent passwd sensorgate || true) == "$host_user_before" ]] || fail "the host's users changed"
[[ $([[ -e /var/lib/sensorgate ]] && echo yes || echo no) == "$host_state_before" ]] ||
    fail "the host's /var/lib/sensorgate changed"

# --- Figures -------------------------------------------------------------------------------
step "Sizes"
dpkg-deb -x "$deb" "$work/x"
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
deb_bytes=$(stat -c %s "$deb")
bin_bytes=$(stat -c %s "$work/x/usr/bin/sensorgate")
helper_bytes=$(stat -c %s "$work/x/usr/lib/sensorgate/sensorgate-demo-broker")
echo ".deb:            $deb_bytes bytes ($(mib "$deb_bytes")) $(basename "$deb")"
echo "stripped binary: $bin_bytes bytes ($(mib "$bin_bytes")) /usr/bin/sensorgate"
echo "demo's broker:   $helper_bytes bytes ($(mib "$helper_bytes")) /usr/lib/sensorgate/sensorgate-demo-broker"
if command -v file >/dev/null 2>&1; then
    file -b "$work/x/usr/bin/sensorgate"
fi
echo
echo "check-deb: all checks passed"
