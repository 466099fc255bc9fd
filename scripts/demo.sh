#!/usr/bin/env bash
# make demo: the main job against the lab. Installs what is missing, brings the lab up, and acquires the
# lab guest (disks + RAM) with playbooks/acquire_kvm.yml.
#   TRANSPORT=iscsi (default): the collector (collector1) exports a thin LUN over iSCSI (CHAP, IQN + address
#     filter), kvm1 attaches it and writes the evidence onto it, the LUN is detached and switched read-only,
#     and the collector re-hashes every artifact from the backing file against the manifest.
#   TRANSPORT=local: the evidence goes into a folder on kvm1.
#   HYPERVISOR=esxi: the lab's ESXi host esx1 (a simulator that behaves like ESXi, lab/README.md) instead, through
#     its vSphere API with playbooks/acquire_esxi.yml: a snapshot with memory of "Win Srv [prod] 01" (VM=... for
#     another), its frozen disk and .vmem/.vmsn pulled over HTTPS into a folder on this machine, the snapshot
#     removed again; then Volatility 3 reads the .vmem with its .vmsn. With TRANSPORT=iscsi: the write-up's method
#     instead - the collector's LUN becomes a datastore of esx1, the host clones the disk and copies the memory files
#     onto it, and the collector re-hashes them from the backing file.
# Then it reads the evidence independently (sha256sum -c) and says where it is. The lab stays up
# (make lab-down removes it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export LAB_DIR=${LAB_DIR:-/var/tmp/vmcollect-lab}
VENV=${VENV:-$ROOT/.venv}
scripts/setup.sh
bash lab/up.sh
CASE=${CASE:-demo-$(date -u +%Y%m%dT%H%M%SZ)}
TRANSPORT_SET=${TRANSPORT:-}
TRANSPORT=${TRANSPORT:-iscsi}
EVIDENCE=$LAB_DIR/evidence
COLLECTOR_DIR=$LAB_DIR/collector
METHOD=${METHOD:-background_snapshot}
export ANSIBLE_CONFIG=$LAB_DIR/ansible.cfg ANSIBLE_COLLECTIONS_PATH=$ROOT/.build/collections
# reads a volume's filesystem read-only in a mount namespace of its own, then runs sha256sum -c in its case folder:
#   read_volume <backing file> <folder on the volume> [<offset> <size>]   (an ESXi datastore lies in a GPT partition)
read_volume() {
  # shellcheck disable=SC2016  # the inner script expands its own variables
  unshare -m --propagation private bash -euo pipefail -c '
    if [ -n "${3:-}" ]; then loop=$(losetup --read-only --find --show --offset "$3" --sizelimit "$4" "$1")
    else loop=$(losetup --read-only --find --show "$1"); fi
    mnt=$(mktemp -d)
    trap "cd /; umount \"\$mnt\"; losetup -d \"\$loop\"; rmdir \"\$mnt\"" EXIT
    mount -o ro,noload "$loop" "$mnt"; cd "$mnt/$2"
    find . -type f | sort; sha256sum -c SHA256SUMS' read-volume "$@"
}
if [ "${HYPERVISOR:-kvm}" = esxi ]; then
  # https (the default for ESXi): pulled into a folder on this machine; iscsi: onto a datastore on the collector's LUN
  ESXI_TRANSPORT=${TRANSPORT_SET:-https}
  COLLECTOR_ARGS=()
  [ "$ESXI_TRANSPORT" = iscsi ] && COLLECTOR_ARGS=(-e "collector_journal_dir=$LAB_DIR/work/journal"
                                                   -e "collector_dir=$COLLECTOR_DIR" -e "collector_verify_dir=$LAB_DIR/work/verify")
  "$VENV/bin/ansible-playbook" playbooks/acquire_esxi.yml -e "vmcollect_transport=$ESXI_TRANSPORT" \
    -e "esxi_acquire_case_id=$CASE" -e "{\"esxi_acquire_examiner\": \"${EXAMINER:-demo examiner}\"}" \
    -e "{\"esxi_acquire_vms\": [\"${VM:-Win Srv [prod] 01}\"]}" -e '{"esxi_acquire_algorithms": ["sha256", "md5"]}' \
    -e "esxi_acquire_evidence_dir=$EVIDENCE" -e "esxi_acquire_journal_dir=$LAB_DIR/work/journal" "${COLLECTOR_ARGS[@]}"
  echo
  if [ "$ESXI_TRANSPORT" = iscsi ]; then
    VOLUME=$COLLECTOR_DIR/$CASE/esx1.img
    echo "case $CASE on collector1: the LUN backing file $VOLUME (a GPT partition; in the lab its filesystem is ext4,"
    echo "on a real ESXi host VMFS); the case's records also on this machine: $EVIDENCE/$CASE"
    echo "reading it again here, through a read-only loop device at the partition:"
    part=$(sfdisk --json "$VOLUME" | "$VENV/bin/python" -c 'import json,sys; t=json.load(sys.stdin)["partitiontable"]; \
p=t["partitions"][0]; s=t.get("sectorsize", 512); print(p["start"] * s, p["size"] * s)')
    # shellcheck disable=SC2086  # offset and size, two words
    read_volume "$VOLUME" "$CASE" $part
    exit 0
  fi
  echo "case $CASE on this machine: $EVIDENCE/$CASE (manifest.json, SHA256SUMS)"
  (cd "$EVIDENCE/$CASE" && find . -type f | sort && sha256sum -c SHA256SUMS)
  vmem=$(find "$EVIDENCE/$CASE" -name '*.vmem' | head -n 1)
  if [ -n "$vmem" ]; then
    echo "Volatility 3 reads the RAM ($vmem with the .vmsn beside it):"
    "$VENV/bin/vol" -q -f "$vmem" banners.Banners | tail -n 2
  fi
  exit 0
fi
if [ "$TRANSPORT" = local ]; then
  MODE_ARGS=(-e "kvm_acquire_evidence_dir=$EVIDENCE")
else
  MODE_ARGS=(-e "collector_journal_dir=$LAB_DIR/work/journal" -e "collector_dir=$COLLECTOR_DIR"
             -e "collector_verify_dir=$LAB_DIR/work/verify" -e "vmcollect_mount_dir=$LAB_DIR/work/volume")
fi
"$VENV/bin/ansible-playbook" playbooks/acquire_kvm.yml -e "vmcollect_transport=$TRANSPORT" \
  -e "kvm_acquire_case_id=$CASE" -e "{\"kvm_acquire_examiner\": \"${EXAMINER:-demo examiner}\"}" \
  -e '{"kvm_acquire_vms": ["vmc-victim"]}' -e "kvm_acquire_memory_method=$METHOD" \
  -e "kvm_acquire_journal_dir=$LAB_DIR/work/journal" "${MODE_ARGS[@]}"
echo
if [ "$TRANSPORT" = local ]; then
  echo "case $CASE on kvm1: $EVIDENCE/$CASE"
  echo "manifest: $EVIDENCE/$CASE/manifest.json"
  (cd "$EVIDENCE/$CASE" && find . -type f | sort && sha256sum -c SHA256SUMS)
  exit 0
fi
VOLUME=$COLLECTOR_DIR/$CASE/kvm1.img
echo "case $CASE on collector1: the LUN backing file $VOLUME"
echo "the collector's verification records: $VOLUME.verified.jsonl"
echo "reading it again here, through a read-only loop device:"
read_volume "$VOLUME" .
