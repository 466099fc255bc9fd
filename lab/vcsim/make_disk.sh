#!/usr/bin/env bash
# Make one thin ESXi-style virtual disk for the lab's vSphere simulator: a sparse
# "<NAME>-flat.vmdk" (MBR, partition 1 = ext4 populated from SRCDIR) and its descriptor
# "<NAME>.vmdk" (createType="vmfs", as ESXi writes for a thin disk on VMFS).
#
#   make_disk.sh -o DIR -n NAME -s BYTES -p PART_OFFSET -l PART_BYTES -d SRCDIR \
#                [-L FSLABEL] [-a ADAPTER] [-u "60 00 C2 ..."] [-c CID] [-h HWVERSION]
#
# vcsim embeds this script (main.go's content extension runs it at start-up); after editing
# it, rebuild with lab/vcsim/build.sh --force. No loop device, no mount: mkfs.ext4 -d writes
# the files straight into the flat file at the partition offset (-E offset=).
# Prints nothing on success; exit status non-zero with a message on failure.
set -euo pipefail

die() { echo "make_disk.sh: error: $*" >&2; exit 1; }

dir="" name="" size="" poff="" plen="" src="" label="LABDATA" adapter="lsilogic" uuid="" cid="" hw="14"
while getopts "o:n:s:p:l:d:L:a:u:c:h:" opt; do
  case "$opt" in
    o) dir=$OPTARG ;;
    n) name=$OPTARG ;;
    s) size=$OPTARG ;;
    p) poff=$OPTARG ;;
    l) plen=$OPTARG ;;
    d) src=$OPTARG ;;
    L) label=$OPTARG ;;
    a) adapter=$OPTARG ;;
    u) uuid=$OPTARG ;;
    c) cid=$OPTARG ;;
    h) hw=$OPTARG ;;
    *) die "bad option" ;;
  esac
done
if [ -z "$dir" ] || [ -z "$name" ] || [ -z "$size" ] || [ -z "$poff" ] || [ -z "$plen" ] || [ -z "$src" ]; then
  die "usage: make_disk.sh -o DIR -n NAME -s BYTES -p PART_OFFSET -l PART_BYTES -d SRCDIR [-L LABEL] [-a ADAPTER] [-u UUID] [-c CID]"
fi
[ -d "$dir" ] || die "no folder $dir"
[ -d "$src" ] || die "no source folder $src"
for v in "$size" "$poff" "$plen"; do
  case "$v" in ''|*[!0-9]*) die "sizes are byte counts: $v" ;; esac
done
[ $((size % 1048576)) = 0 ] || die "size $size is not a whole MiB"
if [ $((poff % 4096)) != 0 ] || [ $((plen % 4096)) != 0 ]; then die "partition offset/length must be 4 KiB multiples"; fi
[ $((poff + plen)) -le "$size" ] || die "partition ends past the disk"
command -v mkfs.ext4 >/dev/null 2>&1 || die "mkfs.ext4 not found (e2fsprogs)"
command -v sfdisk >/dev/null 2>&1 || die "sfdisk not found (fdisk)"

flat="$dir/$name-flat.vmdk"
desc="$dir/$name.vmdk"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# libblkid (sfdisk, mkfs) would otherwise keep a cache in /run/blkid on the machine
export BLKID_FILE="$tmp/blkid.tab"

rm -f "$flat" "$desc"
truncate -s "$size" "$flat"
sfdisk -q --no-reread --no-tell-kernel "$flat" >/dev/null <<EOF
label: dos
unit: sectors

start=$((poff / 512)), size=$((plen / 512)), type=83
EOF
mkfs.ext4 -q -F -b 4096 -L "$label" -E "offset=$poff,root_owner=0:0" -d "$src" "$flat" "$((plen / 1024))k" >/dev/null \
  || die "mkfs.ext4 failed on $flat"
[ "$(stat -c %s "$flat")" = "$size" ] || die "$flat changed size"

sectors=$((size / 512))
cyl=$((sectors / (255 * 63)))
[ -n "$cid" ] || cid="$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
if [ -z "$uuid" ]; then
  read -r -a b <<<"$(od -An -N13 -tx1 /dev/urandom | tr -s ' \n' ' ')"
  uuid="60 00 C2 9${b[0]:1:1} ${b[1]} ${b[2]} ${b[3]} ${b[4]}-${b[5]} ${b[6]} ${b[7]} ${b[8]} ${b[9]} ${b[10]} ${b[11]} ${b[12]}"
fi
long_cid="$(od -An -N12 -tx4 /dev/urandom | tr -d ' \n')$cid"
cat >"$desc" <<EOF
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=$cid
parentCID=ffffffff
createType="vmfs"

# Extent description
RW $sectors VMFS "$name-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "$adapter"
ddb.deletable = "true"
ddb.geometry.cylinders = "$cyl"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.longContentID = "$long_cid"
ddb.thinProvisioned = "1"
ddb.uuid = "$uuid"
ddb.virtualHWVersion = "$hw"
EOF
