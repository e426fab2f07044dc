#!/bin/busybox sh
# /init of the power-cut test bed's virtual machine (scripts/powercut.sh puts it into the image).
#
# It mounts the gateway's state disk as a Raspberry Pi OS image mounts its root (ext4,
# `defaults,noatime`), brings up the network without a default route (the only address the guest
# can reach is 10.0.2.2, qemu's alias for the host's 127.0.0.1), forwards each Kafka broker's
# port from the guest's loopback to the host (the mock cluster advertises its brokers as
# 127.0.0.1:<port>), and runs the gateway, starting it again a second after it exits, as systemd
# would (Restart=on-failure). It never shuts down: the harness ends every boot with SIGKILL.
#
# Lines starting with "powercut:" are read by the harness (testkit/src/bin/sensorgate-powercut).

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /var/lib/sensorgate
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /etc/powercut.env

say() { echo "powercut: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

say "init at $(uptime_s)s"
while read -r module; do
    insmod "/lib/modules/$module.ko" || say "insmod $module failed"
done </lib/modules/load-order

i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if mount -t ext4 -o defaults,noatime /dev/vda /var/lib/sensorgate; then
    say "state disk mounted: $(grep ' /var/lib/sensorgate ' /proc/mounts)"
else
    say "MOUNT FAILED"
fi
dmesg | grep -i 'ext4\|jbd2' | sed 's/^/powercut: kernel: /'
# The state directory and one level below, as the power cut left it.
ls -la /var/lib/sensorgate /var/lib/sensorgate/*/ | sed 's/^/powercut: state: /'

ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
for port in $KAFKA_PORTS; do
    socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" "TCP:10.0.2.2:$port" &
done

# Plain log lines on the console: no colours.
export NO_COLOR=1
trace=""
if [ "$STRACE" = 1 ]; then
    # The trace leaves through the second serial port, which qemu writes to a host file as it
    # comes: a power cut does not take it with it.
    trace="strace -f -tt -e trace=%file,pwrite64,pwritev,pwritev2,ftruncate,fallocate,fsync,fdatasync,sync_file_range,syncfs,msync -o /dev/ttyS1"
fi
while :; do
    say "gateway starting at $(uptime_s)s"
    $trace /usr/bin/sensorgate run --config /etc/sensorgate/sensorgate.toml
    say "gateway exited with status $? at $(uptime_s)s"
    sleep 1
done
