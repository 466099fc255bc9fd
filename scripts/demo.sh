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
#     removed again; then Volatility 3 reads the .vmem with its .vmsn.
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
TRANSPORT=${TRANSPORT:-iscsi}
EVIDENCE=$LAB_DIR/evidence
COLLECTOR_DIR=$LAB_DIR/collector
METHOD=${METHOD:-background_snapshot}
export ANSIBLE_CONFIG=$LAB_DIR/ansible.cfg ANSIBLE_COLLECTIONS_PATH=$ROOT/.build/collections
if [ "${HYPERVISOR:-kvm}" = esxi ]; then
  "$VENV/bin/ansible-playbook" playbooks/acquire_esxi.yml -e "esxi_acquire_case_id=$CASE" \
    -e "{\"esxi_acquire_examiner\": \"${EXAMINER:-demo examiner}\"}" \
    -e "{\"esxi_acquire_vms\": [\"${VM:-Win Srv [prod] 01}\"]}" -e '{"esxi_acquire_algorithms": ["sha256", "md5"]}' \
    -e "esxi_acquire_evidence_dir=$EVIDENCE" -e "esxi_acquire_journal_dir=$LAB_DIR/work/journal"
  echo
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
# shellcheck disable=SC2016  # the inner script expands its own variables
unshare -m --propagation private bash -euo pipefail -c '
  loop=$(losetup --read-only --find --show "$1"); mnt=$(mktemp -d)
  trap "cd /; umount \"\$mnt\"; losetup -d \"\$loop\"; rmdir \"\$mnt\"" EXIT
  mount -o ro,noload "$loop" "$mnt"; cd "$mnt"
  find . -type f | sort; sha256sum -c SHA256SUMS' demo "$VOLUME"
