#!/usr/bin/env bash
# Install everything dfir.vmcollect's lab, tests and demo need, on Debian 12 or Ubuntu 22.04+,
# as root. Idempotent: packages already present and an up-to-date venv are left alone.
#   scripts/setup.sh            apt packages + .venv from requirements.txt
#   PYTHON=python3.12 scripts/setup.sh    build the venv with another interpreter
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (the lab creates network namespaces and runs libvirtd)" >&2; exit 1; }

# Debian packages. The lab's hosts run modules with the system Python (/usr/bin/python3), so
# the Python libraries modules need on a host come from Debian too (python3-libvirt).
APT_PACKAGES=(
  # KVM host: QEMU under libvirt, image tools, userspace iSCSI initiator
  qemu-system-x86 qemu-utils qemu-block-extra libvirt-daemon-system libvirt-clients python3-libvirt
  libiscsi-bin
  # collector: the iSCSI target and the firewall that narrows its ACL
  tgt nftables e2fsprogs
  # lab plumbing: namespaces, sshd per host, guest disk building
  iproute2 openssh-server openssh-client fdisk cpio rsync bc
  # vSphere simulator, built offline from Debian's govmomi sources
  golang-go golang-github-vmware-govmomi-dev
  # the ESXi tests read the acquired disks as an examiner would (mmls, fls, icat)
  sleuthkit
  # E01 output (ewfacquirestream on the host that writes it; ewfverify, ewfinfo in the tests) and the report's check
  # in headless Chromium
  ewf-tools chromium
  # the collector reads a real ESXi datastore (VMFS) read-only through FUSE: vmfs6-fuse (VMFS 6), vmfs-fuse (VMFS 5)
  vmfs6-tools vmfs-tools
  # building the venv (libvirt-python compiles against libvirt-dev) and sanity's shellcheck
  python3 python3-venv python3-dev gcc pkg-config libvirt-dev git make shellcheck
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # Without systemd, package scripts would start tgtd, sshd and libvirtd on the machine
  # itself; the lab starts its own inside its namespaces. Block service starts during the
  # install unless a policy is already in place, and remove only the one we made.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  trap 'if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

# Python: one venv from requirements.txt, rebuilt only when that file or the interpreter changes.
stamp=$VENV/.vmcollect-requirements
want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version)' | head -1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: building $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv --clear "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements.txt"
  echo "$want" > "$stamp"
fi
"$VENV/bin/ansible" --version | sed -n 1p   # sed reads to the end: no SIGPIPE under pipefail

# Ansible finds the collection by its name: .build/collections/ansible_collections/dfir/vmcollect
# points at this checkout.
link=$ROOT/.build/collections/ansible_collections/dfir/vmcollect
mkdir -p "$(dirname "$link")"
[ "$(readlink "$link" 2>/dev/null)" = "$ROOT" ] || ln -sfn "$ROOT" "$link"
echo "setup: done"
