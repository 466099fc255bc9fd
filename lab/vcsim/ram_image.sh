#!/usr/bin/env bash
# Build (once) and cache the RAM image that the lab's vSphere simulator serves as the
# .vmem of a memory snapshot: the real RAM of the lab's Linux guest.
#
#   LAB_DIR=/var/tmp/vmcollect-lab lab/vcsim/ram_image.sh [--force]
#
# Boots the lab's KVM victim guest (kernel + initramfs from lab/build_guest.sh, built into
# $LAB_DIR/guest/build if needed) with qemu-system-x86_64 -accel tcg -m 256 directly (no
# libvirt), waits for LAB-INIT-DONE on the serial console, saves all guest RAM with the QMP
# command pmemsave, then powers the guest off. The guest's /init puts a random
# FORENSIC-MARKER-<hex> in RAM (given here on the kernel command line, lab.marker=).
#
# Outputs in $LAB_DIR/vcsim-ram/ (reused while the kernel, initramfs and this script are
# unchanged; --force rebuilds):
#   ram-256m.raw    raw guest-physical RAM, 256 MiB, stored sparse (zero pages are holes)
#   ram-256m.json   {"path", "size", "memory_mb", "marker", "banner", "stamp", "created", ...}
# The path of ram-256m.raw is printed on the last line of stdout (give it to vcsim -ram-image).
#
# Needs: qemu-system-x86 (Debian), python3; build_guest.sh needs apt-get download the first time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lab_src="$(cd "$here/.." && pwd)"
LAB_DIR="${LAB_DIR:-/var/tmp/vmcollect-lab}"
export LAB_DIR
MEM_MIB=256
out="$LAB_DIR/vcsim-ram"
img="$out/ram-${MEM_MIB}m.raw"
meta="$out/ram-${MEM_MIB}m.json"
py=/usr/bin/python3
boot_timeout="${RAM_IMAGE_BOOT_TIMEOUT:-180}"

force=0
case "${1:-}" in
  --force|-f) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

say() { echo "ram_image.sh: $*" >&2; }
die() { echo "ram_image.sh: error: $*" >&2; exit 1; }

command -v qemu-system-x86_64 >/dev/null 2>&1 || die "qemu-system-x86_64 not found: apt-get install qemu-system-x86"
[ -x "$py" ] || die "$py not found"

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9   # one builder at a time; a second caller waits and then reuses the image

# 1. the guest's kernel + initramfs (cached by build_guest.sh itself)
bash "$lab_src/build_guest.sh" >&2 || die "lab/build_guest.sh failed"
kernel="$LAB_DIR/guest/build/vmlinuz"
initrd="$LAB_DIR/guest/build/initrd.gz"
if [ ! -s "$kernel" ] || [ ! -s "$initrd" ]; then die "build_guest.sh left no $kernel / $initrd"; fi

stamp="$( { sha256sum "$kernel" "$initrd" "$0" | awk '{print $1}'; echo "$MEM_MIB"; } | sha256sum | cut -c1-64)"
if [ "$force" = 0 ] && [ -s "$img" ] && [ -s "$meta" ] && grep -q "\"stamp\": \"$stamp\"" "$meta"; then
  say "cached image up to date: $img"
  echo "$img"
  exit 0
fi

work="$(mktemp -d "$out/work.XXXXXX")"
qpid=""
cleanup() {
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
    kill "$qpid" 2>/dev/null || true
    sleep 0.5
    kill -9 "$qpid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

marker="FORENSIC-MARKER-$(tr -d '-' </proc/sys/kernel/random/uuid)"
# scratch disks: the guest writes its disk markers there (it waits up to 10 s per missing disk)
truncate -s 64M "$work/vda.raw"
truncate -s 32M "$work/vdb.raw"

t0=$(date +%s.%N)
qemu-system-x86_64 -accel tcg -machine pc -m "$MEM_MIB" -smp 1 \
  -nodefaults -no-user-config -display none -no-reboot \
  -kernel "$kernel" -initrd "$initrd" \
  -append "console=ttyS0 rdinit=/init panic=-1 lab.marker=$marker" \
  -serial "file:$work/console.log" \
  -device vmcoreinfo \
  -drive "file=$work/vda.raw,format=raw,if=virtio" \
  -drive "file=$work/vdb.raw,format=raw,if=virtio" \
  -qmp "unix:$work/qmp.sock,server=on,wait=off" \
  </dev/null >"$work/qemu.log" 2>&1 &
qpid=$!

deadline=$(($(date +%s) + boot_timeout))
until grep -q -a 'LAB-INIT-DONE' "$work/console.log" 2>/dev/null; do
  if ! kill -0 "$qpid" 2>/dev/null; then
    cat "$work/qemu.log" >&2 || true
    die "qemu exited before the guest printed LAB-INIT-DONE"
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    tail -n 20 "$work/console.log" >&2 || true
    die "no LAB-INIT-DONE on the guest's serial console within ${boot_timeout} s"
  fi
  sleep 0.2
done
grep -q -a "LAB-MARKER=$marker" "$work/console.log" || die "the guest did not report marker $marker"
t1=$(date +%s.%N)

# 2. pmemsave of all RAM over QMP, then quit
"$py" - "$work/qmp.sock" "$work/ram.raw" "$((MEM_MIB * 1024 * 1024))" <<'EOF'
import json, socket, sys, time
sock_path, dest, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(60)
s.connect(sock_path)
f = s.makefile("rwb", buffering=0)

def reply():
    while True:
        msg = json.loads(f.readline())
        if "return" in msg or "error" in msg:
            return msg

json.loads(f.readline())  # greeting
for cmd in ({"execute": "qmp_capabilities"},
            {"execute": "stop"},
            {"execute": "pmemsave", "arguments": {"val": 0, "size": size, "filename": dest}},
            {"execute": "quit"}):
    f.write(json.dumps(cmd).encode() + b"\n")
    r = reply()
    if "error" in r:
        sys.exit("QMP %s failed: %s" % (cmd["execute"], r["error"]))
EOF
for _ in $(seq 1 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
kill "$qpid" 2>/dev/null || true   # normally gone already (QMP quit)
wait "$qpid" 2>/dev/null || true
qpid=""

[ "$(stat -c %s "$work/ram.raw")" = "$((MEM_MIB * 1024 * 1024))" ] || die "pmemsave wrote $(stat -c %s "$work/ram.raw") bytes, want $((MEM_MIB * 1024 * 1024))"
grep -q -a "$marker" "$work/ram.raw" || die "marker $marker not found in the saved RAM"
cp --sparse=always "$work/ram.raw" "$work/ram.sparse"

banner="$("$py" - "$work/ram.sparse" <<'EOF'
import re, sys
data = open(sys.argv[1], "rb").read()
m = re.search(rb"Linux version [\x20-\x7e]+", data)
print(m.group(0).decode() if m else "")
EOF
)"
[ -n "$banner" ] || die "no 'Linux version' banner in the saved RAM"

mv -f "$work/ram.sparse" "$img"
"$py" - "$meta" <<EOF
import json, os, time
json.dump({
    "path": "$img",
    "size": os.path.getsize("$img"),
    "memory_mb": $MEM_MIB,
    "marker": "$marker",
    "banner": """$banner""",
    "kernel": "$kernel",
    "initrd": "$initrd",
    "stamp": "$stamp",
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
}, open("$meta.tmp", "w"), indent=2)
os.replace("$meta.tmp", "$meta")
EOF
t2=$(date +%s.%N)
say "$(awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN{printf "guest booted in %.1f s, RAM saved in %.1f s", b-a, c-b}'); $(du -h "$img" | cut -f1) allocated; marker $marker"
say "banner: $banner"
echo "$img"
