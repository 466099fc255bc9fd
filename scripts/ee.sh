#!/usr/bin/env bash
# Build the execution environment (extensions/ee/execution-environment.yml) with podman, on a Debian/Ubuntu machine
# with neither a Docker engine nor a container registry, and check it (`make ee`; the slow test
# tests/integration/test_awx_runner_ee.py runs it, then an acquisition inside the image through ansible-runner).
#   scripts/ee.sh        # leaves the image localhost/dfir-vmcollect-ee:latest in podman's store under $EE_WORK
# Idempotent: the base and the image are kept and rebuilt only from what changed (podman's layer cache).
#
# - The base image is a Debian bookworm made here (debootstrap, podman import): there is no registry to pull from.
# - podman is configured only for this script, through CONTAINERS_CONF and CONTAINERS_STORAGE_CONF under $EE_WORK:
#   runc with explicit ulimits (podman's default nofile exceeds a hard limit of 20000 and runc refuses it; crun
#   refuses cgroup v1 hybrid mode), cgroupfs and a file events log (no systemd), the host's network (no bridge, no
#   firewall rules on the host; the container reaches what the host reaches), the overlay driver (vfs: 6x slower).
# - pip in the build trusts the host's CA bundle (a TLS-inspecting proxy): the bundle is mounted at build time only,
#   as pip's site configuration in /etc/xdg/pip, and nothing of it stays in the image.
# - Everyone else's podman set-up is left alone: only the apt packages are global.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-$ROOT/.venv}
EE_WORK=${EE_WORK:-/var/tmp/vmcollect-ee}
EE_IMAGE=${EE_IMAGE:-localhost/dfir-vmcollect-ee:latest}
BASE=localhost/vmcollect-ee-base:bookworm  # the base_image of extensions/ee/execution-environment.yml
MIRROR=${EE_MIRROR:-http://deb.debian.org/debian}
T0=$(date +%s)
stage() { printf '=== %s (%ss)\n' "$*" "$(( $(date +%s) - T0 ))"; }

stage "packages"
need=()
for p in podman runc debootstrap uidmap; do dpkg -s "$p" > /dev/null 2>&1 || need+=("$p"); done
if [ "${#need[@]}" -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

mkdir -p "$EE_WORK"/{conf,storage,tmp,pip}
export CONTAINERS_CONF=$EE_WORK/conf/containers.conf CONTAINERS_STORAGE_CONF=$EE_WORK/conf/storage.conf
export TMPDIR=$EE_WORK/tmp
cat > "$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$EE_WORK/storage/root"
runroot = "$EE_WORK/storage/run"
EOF
cat > "$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
cgroupns = "host"
netns = "host"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$EE_WORK/storage/events.log"
runtime = "runc"
tmp_dir = "$EE_WORK/storage/libpod-tmp"
EOF
cp /etc/ssl/certs/ca-certificates.crt "$EE_WORK/pip/host-ca.crt"
printf '[global]\ncert = /etc/xdg/pip/host-ca.crt\n' > "$EE_WORK/pip/pip.conf"

stage "base image $BASE (debootstrap, podman import)"
if ! podman image exists "$BASE"; then
  rm -rf "$EE_WORK/rootfs"
  debootstrap --variant=minbase bookworm "$EE_WORK/rootfs" "$MIRROR" > "$EE_WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$EE_WORK/debootstrap.log"; exit 1; }
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
    "$MIRROR" "$MIRROR" > "$EE_WORK/rootfs/etc/apt/sources.list"
  chroot "$EE_WORK/rootfs" apt-get clean
  rm -rf "$EE_WORK"/rootfs/var/lib/apt/lists/*
  tar --numeric-owner -C "$EE_WORK/rootfs" -c . | podman import --change CMD=/bin/bash - "$BASE"
  rm -rf "$EE_WORK/rootfs"
fi

stage "the collection's tarball and the build context (ansible-builder create)"
[ -f .build/dist/dfir-vmcollect.tar.gz ] || scripts/build.sh
rm -rf "$EE_WORK/context"
"$VENV/bin/ansible-builder" create -f extensions/ee/execution-environment.yml -c "$EE_WORK/context" \
  --output-filename Containerfile > /dev/null

stage "podman build $EE_IMAGE"
podman build --isolation chroot -v "$EE_WORK/pip:/etc/xdg/pip:ro" -f "$EE_WORK/context/Containerfile" \
  -t "$EE_IMAGE" "$EE_WORK/context" > "$EE_WORK/build.log" 2>&1 || { tail -30 "$EE_WORK/build.log"; exit 1; }

stage "checks inside the image"
podman run --rm "$EE_IMAGE" bash -c 'set -e
  ansible-runner --version
  ansible --version 2> /dev/null | head -1
  ansible-galaxy collection list dfir.vmcollect 2> /dev/null | tail -1
  python3 -c "import pyVmomi, paramiko"
  command -v ssh ssh-keygen ewfacquirestream'
podman image inspect "$EE_IMAGE" --format 'image {{.Id}}: {{.Size}} bytes, user {{.Config.User}}'
stage "done: $EE_IMAGE (CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF)"
