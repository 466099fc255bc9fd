#!/usr/bin/env bash
# make demo: the main job against the lab. Installs what is missing, brings the lab up, acquires the
# lab guest (disks + RAM) into a case folder on the KVM host, verifies it with sha256sum -c, and says
# where the evidence and its manifest are. The lab stays up (make lab-down removes it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export LAB_DIR=${LAB_DIR:-/var/tmp/vmcollect-lab}
VENV=${VENV:-$ROOT/.venv}
scripts/setup.sh
bash lab/up.sh
CASE=${CASE:-demo-$(date -u +%Y%m%dT%H%M%SZ)}
EVIDENCE=$LAB_DIR/evidence
METHOD=${METHOD:-background_snapshot}
export ANSIBLE_CONFIG=$LAB_DIR/ansible.cfg ANSIBLE_COLLECTIONS_PATH=$ROOT/.build/collections
"$VENV/bin/ansible-playbook" playbooks/acquire_kvm.yml -e vmcollect_hosts=kvm_hosts \
  -e "kvm_acquire_case_id=$CASE" -e "{\"kvm_acquire_examiner\": \"${EXAMINER:-demo examiner}\"}" \
  -e '{"kvm_acquire_vms": ["vmc-victim"]}' -e "kvm_acquire_evidence_dir=$EVIDENCE" \
  -e "kvm_acquire_memory_method=$METHOD" -e "kvm_acquire_journal_dir=$LAB_DIR/work/journal"
echo
echo "case $CASE on kvm1: $EVIDENCE/$CASE"
echo "manifest: $EVIDENCE/$CASE/manifest.json"
(cd "$EVIDENCE/$CASE" && find . -type f | sort && sha256sum -c SHA256SUMS)
