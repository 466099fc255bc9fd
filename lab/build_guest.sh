#!/usr/bin/env bash
# build_guest.sh - build the lab's victim guest from Debian packages only (no host install).
#
#   LAB_DIR=/var/tmp/vmcollect-lab lab/build_guest.sh     (up.sh calls it)
#   REBUILD=1   rebuild even if the inputs did not change
#   KPKG=linux-image-<ver>-amd64   kernel package (default: the one cached, else what
#                                  linux-image-amd64 depends on)
#
# Inputs: kernel + busybox-static .debs (apt-get download, cached in $LAB_DIR/cache), this
# script, guest-init.sh, labtool.py, lib.sh and the parameters below. When their hash equals
# $LAB_DIR/guest/build/build.stamp the build is skipped.
#
# Outputs ($LAB_DIR/guest/build, pristine; up.sh copies them to $LAB_DIR/guest/images):
#   vmlinuz, initrd.gz   direct kernel boot; deterministic initramfs (fixed mtime/uid/inodes)
#   vda.qcow2            64 MiB thin qcow2: MBR, partition 1 = ext4 "LABDATA" (fixed UUID) with
#                        known files, last 15 MiB unpartitioned (guest writes DISKMARK there)
#   vdb.raw              32 MiB sparse raw (guest writes DISKMARK2 at 8 MiB)
#   vmc-victim.xml       libvirt domain XML (TCG, 256 MiB, serial -> file, vmcoreinfo)
#   guest.env            facts for up.sh / lab.json (offsets, sizes, kernel)
# and $LAB_DIR/guest/known-files.sha256 (sha256sum format, paths relative to the fs root).
set -eEuo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'lab_log "build_guest.sh failed (rc=$?) at line $LINENO: $BASH_COMMAND"' ERR

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export SOURCE_DATE_EPOCH
# libblkid (mkfs.ext4, sfdisk) would otherwise create /run/blkid/blkid.tab on the machine
export BLKID_FILE=$LAB_GUEST/build/blkid.tab
# ---- parameters (part of the build stamp) --------------------------------------------------
VDA_MIB=64
PART_START_SECTOR=2048            # 1 MiB
PART_MIB=48                       # partition 1: 1 MiB .. 49 MiB; 49..64 MiB unpartitioned
VDA_MARK_OFFSET=$((60 * 1024 * 1024))
VDB_MIB=32
VDB_MARK_OFFSET=$((8 * 1024 * 1024))
FS_UUID=766d6363-6f6c-4c61-8264-617461303031
FS_HASH_SEED=766d6363-6f6c-4c61-8268-617368736565
FS_LABEL=LABDATA
DISK_LABEL_ID=0x766d6331
HEARTBEAT_SECONDS=2
MODULES_WANTED=(virtio_pci virtio_blk qemu_fw_cfg)
PARAMS="$VDA_MIB $PART_START_SECTOR $PART_MIB $VDA_MARK_OFFSET $VDB_MIB $VDB_MARK_OFFSET $FS_UUID \
$FS_HASH_SEED $FS_LABEL $DISK_LABEL_ID $HEARTBEAT_SECONDS ${MODULES_WANTED[*]} $SOURCE_DATE_EPOCH \
$GUEST_NAME $GUEST_UUID $GUEST_MEM_MIB $LAB_DIR"

B=$LAB_GUEST/build
mkdir -p "$LAB_CACHE" "$B" "$LAB_GUEST"
chmod 0755 "$LAB_DIR" "$LAB_GUEST"

# ---- 1. packages (cached) --------------------------------------------------------------------
apt_fetch() {  # package -> downloads into $LAB_CACHE
  local dl=$LAB_CACHE/dl
  rm -rf "$dl"; mkdir -p "$dl"
  id _apt >/dev/null 2>&1 && chown _apt "$dl"
  (cd "$dl" && apt-get download "$1") || return 1
  mv "$dl"/*.deb "$LAB_CACHE/"
  rm -rf "$dl"
}
newest() { local f; for f in "$@"; do if [ -f "$f" ]; then echo "$f"; fi; done | sort -V | tail -1; }

if [ -n "${KPKG:-}" ]; then
  KDEB=$(newest "$LAB_CACHE/${KPKG}"_*_amd64.deb)
else
  KDEB=$(newest "$LAB_CACHE"/linux-image-[0-9]*-amd64_*_amd64.deb)
fi
if [ -z "$KDEB" ]; then
  if [ -z "${KPKG:-}" ]; then
    KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [ -z "$KPKG" ]; then
      lab_log "apt-cache knows no linux-image-amd64: running apt-get update"
      apt-get update -q >/dev/null
      KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    [ -n "$KPKG" ] || lab_die "cannot resolve the kernel package (apt-cache depends linux-image-amd64)"
  fi
  lab_log "downloading $KPKG"
  apt_fetch "$KPKG" || lab_die "apt-get download $KPKG failed"
  KDEB=$(newest "$LAB_CACHE/${KPKG}"_*_amd64.deb)
fi
BDEB=$(newest "$LAB_CACHE"/busybox-static_*_amd64.deb)
if [ -z "$BDEB" ]; then
  lab_log "downloading busybox-static"
  apt_fetch busybox-static || lab_die "apt-get download busybox-static failed"
  BDEB=$(newest "$LAB_CACHE"/busybox-static_*_amd64.deb)
fi
if [ ! -f "$KDEB" ] || [ ! -f "$BDEB" ]; then lab_die "packages missing in $LAB_CACHE"; fi
KPKG=$(dpkg-deb -f "$KDEB" Package)
KREL=${KPKG#linux-image-}
echo "kernel: $(basename "$KDEB")"
echo "busybox: $(basename "$BDEB")"

# ---- 2. up to date? ------------------------------------------------------------------------
# sha256 of a cached .deb, remembered per (name, size, mtime): hashing 70 MB costs ~2 s
deb_sha() {
  local key sum
  key="$(basename "$1") $(stat -c '%s %Y' "$1")"
  sum=$(awk -v k="$key" '{s=$1; $1=""; sub(/^ /, ""); if ($0 == k) print s}' "$LAB_CACHE/sha256.cache" 2>/dev/null | tail -1)
  if [ -z "$sum" ]; then
    sum=$(sha256sum "$1" | cut -d' ' -f1)
    echo "$sum $key" >> "$LAB_CACHE/sha256.cache"
  fi
  echo "$sum"
}
KDEB_SHA=$(deb_sha "$KDEB")
STAMP=$( { echo "$KDEB_SHA"; deb_sha "$BDEB"
           sha256sum "$LAB_SRC/build_guest.sh" "$LAB_SRC/guest-init.sh" "$LAB_SRC/labtool.py" \
             "$LAB_SRC/lib.sh" | awk '{print $1}'; echo "$PARAMS"; } | sha256sum | cut -c1-64)
OUTS="$B/vmlinuz $B/initrd.gz $B/vda.qcow2 $B/vdb.raw $B/$GUEST_NAME.xml $B/guest.env $LAB_GUEST/known-files.sha256"
if [ "${REBUILD:-0}" != 1 ] && [ "$(cat "$B/build.stamp" 2>/dev/null)" = "$STAMP" ]; then
  missing=0
  for f in $OUTS; do [ -s "$f" ] || { [ "$f" = "$B/vdb.raw" ] && [ -f "$f" ]; } || missing=1; done
  if [ $missing = 0 ]; then echo "guest build up to date (stamp ${STAMP:0:12})"; exit 0; fi
fi
rm -f "$B/build.stamp"

# ---- 3. kernel + modules (extracted once per .deb into the cache) ----------------------------
KX=$LAB_CACHE/kernel-${KDEB_SHA:0:12}
if [ ! -f "$KX/.done" ]; then
  rm -rf "$KX"; mkdir -p "$KX"
  dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$KX" --wildcards \
    './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/virtio/*' \
    './lib/modules/*/kernel/drivers/block/virtio_blk.ko*' \
    './lib/modules/*/kernel/drivers/firmware/qemu_fw_cfg.ko*' './lib/modules/*/modules.builtin'
  touch "$KX/.done"
fi
BX=$B/busybox
rm -rf "$BX"; mkdir -p "$BX"
dpkg-deb -x "$BDEB" "$BX"

# ---- 4. initramfs ----------------------------------------------------------------------------
R=$B/rootfs
rm -rf "$R"; mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,mnt,tmp,etc,lib/modules}
install -m 0755 "$BX/bin/busybox" "$R/bin/busybox"
MODLIST=""
while read -r name path; do
  case $path in
    *.ko.xz) xz -dc "$path" > "$R/lib/modules/$name.ko" ;;
    *) cp "$path" "$R/lib/modules/$name.ko" ;;
  esac
  chmod 0644 "$R/lib/modules/$name.ko"
  MODLIST="$MODLIST $name"
done < <("$SYS_PY" "$LAB_SRC/labtool.py" modorder "$KX/lib/modules/$KREL" "${MODULES_WANTED[@]}")
echo "modules:$MODLIST"
{ echo '#!/bin/busybox sh'; cat "$LAB_SRC/guest-init.sh"; } > "$R/init"   # no shebang in the repo copy
chmod 0755 "$R/init"
cat > "$R/etc/lab.conf" <<EOF
MODULES="${MODLIST# }"
VDA_MARK_OFFSET=$VDA_MARK_OFFSET
VDB_MARK_OFFSET=$VDB_MARK_OFFSET
HEARTBEAT_SECONDS=$HEARTBEAT_SECONDS
EOF
chmod 0644 "$R/etc/lab.conf"
"$SYS_PY" "$LAB_SRC/labtool.py" cpio "$R" "$B/initrd.cpio"
gzip -n -9 -c "$B/initrd.cpio" > "$B/initrd.gz.tmp" && mv "$B/initrd.gz.tmp" "$B/initrd.gz"
install -m 0644 "$KX/boot/vmlinuz-$KREL" "$B/vmlinuz"
rm -rf "$R" "$BX" "$B/initrd.cpio"

# ---- 5. vda: MBR + ext4 with known files + unpartitioned tail -> thin qcow2 -------------------
FSR=$B/fsroot
rm -rf "$FSR"; mkdir -p "$FSR/evidence"
cat > "$FSR/README.txt" <<'EOF'
dfir.vmcollect lab guest data disk (vda1, ext4, label LABDATA).
The sha256 of every file here is in $LAB_DIR/guest/known-files.sha256 on the lab host.
EOF
cat > "$FSR/evidence/notes.txt" <<'EOF'
case: LAB-0001
examiner: lab
note: known content for acquisition tests; do not edit.
EOF
"$SYS_PY" "$LAB_SRC/labtool.py" blob "$FSR/evidence/blob.bin" 1048576 "dfir.vmcollect-lab-blob-v1"
chmod 0644 "$FSR/README.txt" "$FSR/evidence/notes.txt" "$FSR/evidence/blob.bin"
find "$FSR" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$FSR" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum) > "$LAB_GUEST/known-files.sha256.tmp"
mv "$LAB_GUEST/known-files.sha256.tmp" "$LAB_GUEST/known-files.sha256"

FSIMG=$B/part1.img RAW=$B/vda.raw
rm -f "$FSIMG" "$RAW"
truncate -s "${PART_MIB}M" "$FSIMG"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -b 4096 -L "$FS_LABEL" -U "$FS_UUID" \
  -E "hash_seed=$FS_HASH_SEED,root_owner=0:0" -d "$FSR" "$FSIMG"
# mkfs -d copies atime/ctime of the source files: pin them so the image is reproducible
TS=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S)
(cd "$FSR" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) | while read -r p; do
  printf 'sif "/%s" atime %s\nsif "/%s" ctime %s\n' "$p" "$TS" "$p" "$TS"
done > "$B/debugfs.cmds"
debugfs -w -f "$B/debugfs.cmds" "$FSIMG" >/dev/null 2>&1 || lab_die "debugfs (timestamps) failed"
rm -f "$B/debugfs.cmds"
truncate -s "${VDA_MIB}M" "$RAW"
sfdisk -q --no-reread --no-tell-kernel "$RAW" <<EOF
label: dos
label-id: $DISK_LABEL_ID
unit: sectors

start=$PART_START_SECTOR, size=$((PART_MIB * 2048)), type=83
EOF
dd if="$FSIMG" of="$RAW" bs=1M seek=$((PART_START_SECTOR / 2048)) conv=notrunc,sparse status=none
rm -f "$B/vda.qcow2"
qemu-img convert -q -f raw -O qcow2 "$RAW" "$B/vda.qcow2"
rm -f "$FSIMG" "$RAW"
rm -rf "$FSR"

# ---- 6. vdb: sparse raw ----------------------------------------------------------------------
rm -f "$B/vdb.raw"; truncate -s "${VDB_MIB}M" "$B/vdb.raw"

# ---- 7. domain XML (files point at the per-run copies in guest/images) ------------------------
D=$LAB_GUEST/images L=$LAB_GUEST/logs
cat > "$B/$GUEST_NAME.xml" <<EOF
<domain type='qemu'>
  <name>$GUEST_NAME</name>
  <uuid>$GUEST_UUID</uuid>
  <memory unit='MiB'>$GUEST_MEM_MIB</memory>
  <currentMemory unit='MiB'>$GUEST_MEM_MIB</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$LAB_GUEST/images/vmlinuz</kernel>
    <initrd>$LAB_GUEST/images/initrd.gz</initrd>
    <cmdline>console=ttyS0 rdinit=/init panic=-1</cmdline>
  </os>
  <features><acpi/><vmcoreinfo state='on'/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$D/vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$D/vdb.raw'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$L/console.log'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='$L/console.log'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>
EOF

cat > "$B/guest.env" <<EOF
KPKG=$KPKG
KREL=$KREL
KDEB_SHA256=$KDEB_SHA
VDA_MIB=$VDA_MIB
VDA_MARK_OFFSET=$VDA_MARK_OFFSET
VDB_MIB=$VDB_MIB
VDB_MARK_OFFSET=$VDB_MARK_OFFSET
PART_START_BYTES=$((PART_START_SECTOR * 512))
PART_SIZE_BYTES=$((PART_MIB * 1024 * 1024))
FS_UUID=$FS_UUID
FS_LABEL=$FS_LABEL
HEARTBEAT_SECONDS=$HEARTBEAT_SECONDS
EOF
rm -f "$BLKID_FILE" "$BLKID_FILE.old"
echo "$STAMP" > "$B/build.stamp"
echo "vda.qcow2: $(qemu-img info "$B/vda.qcow2" | grep -E 'virtual size|disk size' | tr '\n' ' ')"
sha256sum "$B/vmlinuz" "$B/initrd.gz" "$B/vda.qcow2"
echo "guest build done (stamp ${STAMP:0:12})"
