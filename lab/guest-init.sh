# shellcheck shell=sh
# /init of the lab's victim guest (busybox-static, runs as PID 1 from the initramfs).
# build_guest.sh copies this file into the initramfs as /init (adding "#!/bin/busybox sh") and
# writes /etc/lab.conf next to it.
#
# Puts a random FORENSIC-MARKER-<hex> into:
#   RAM   a tmpfs file (/mnt/secret/marker.txt) + env and argv of a long-running process
#   vda   "DISKMARK:<marker>\n"  at byte VDA_MARK_OFFSET (unpartitioned tail), fsync'ed
#   vdb   "DISKMARK2:<marker>\n" at byte VDB_MARK_OFFSET, fsync'ed
# and prints LAB-MARKER=<marker>, LAB-INIT-DONE, then "LAB-HEARTBEAT <n> <uptime>" every
# HEARTBEAT_SECONDS on the serial console (ttyS0 -> console log file on the host).
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# shellcheck disable=SC1091
. /etc/lab.conf
echo "LAB-INIT-START $(cat /proc/uptime)"

for m in $MODULES; do
  insmod "/lib/modules/$m.ko" || echo "LAB-WARN insmod $m failed"
done

MARKER=""
read -r CMDLINE < /proc/cmdline
for a in $CMDLINE; do
  case "$a" in lab.marker=*) MARKER="${a#lab.marker=}" ;; esac
done
[ -n "$MARKER" ] || MARKER="FORENSIC-MARKER-$(tr -d '-' < /proc/sys/kernel/random/uuid)"

# RAM: tmpfs file
mkdir -p /mnt/secret
mount -t tmpfs -o size=4m tmpfs /mnt/secret
echo "$MARKER" > /mnt/secret/marker.txt
# RAM: environment + argv of a long-running process
LAB_SECRET="$MARKER" sh -c 'while :; do sleep 3600; done' "$MARKER" &
echo "LAB-MARKER-PID $!"

wait_blk() {
  i=0
  while [ ! -b "$1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  [ -b "$1" ]
}

# Disk: raw fsync'ed writes at fixed offsets (dd bs=1 seek is slow: use a block-aligned seek)
write_mark() {  # dev offset text
  if wait_blk "$1"; then
    if printf '%s\n' "$3" | dd of="$1" bs=512 seek=$(($2 / 512)) conv=notrunc,fsync 2>/dev/null; then
      echo "LAB-DISK-WRITTEN $1 offset=$2"
    else
      echo "LAB-WARN disk write failed on $1"
    fi
  else
    echo "LAB-WARN no $1"
  fi
}
write_mark /dev/vda "$VDA_MARK_OFFSET" "DISKMARK:$MARKER"
write_mark /dev/vdb "$VDB_MARK_OFFSET" "DISKMARK2:$MARKER"
sync
[ -b /dev/vda1 ] && echo "LAB-DISK-PARTITION /dev/vda1 $(cat /sys/class/block/vda1/size 2>/dev/null) sectors"

echo "LAB-MARKER=$MARKER"
echo "LAB-INIT-DONE $(cat /proc/uptime)"
n=0
while :; do
  n=$((n + 1))
  echo "LAB-HEARTBEAT $n $(cut -d' ' -f1 /proc/uptime)"
  sleep "$HEARTBEAT_SECONDS"
done
