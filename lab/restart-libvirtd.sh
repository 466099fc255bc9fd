#!/usr/bin/env bash
# restart-libvirtd.sh - restart the KVM host's libvirtd, as an administrator (or a crash and a
# service manager) would, while its QEMU guests keep running. Tests use it for "libvirtd restarted
# mid-run". The new libvirtd is started inside kvm1's own namespaces (network, mount, UTS, entered
# through its sshd), exactly as host-init.sh started the first one.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
pidfile=$LAB_RUN/lab-libvirtd.pid
sshd=$(cat "$LAB_RUN/lab-sshd-kvm.pid")
old=$(cat "$pidfile")
[[ $(pid_cmdline "$old") == */usr/sbin/libvirtd* ]] || lab_die "pid $old in $pidfile is not libvirtd"
kill -TERM "$old"
alive() { [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
for _ in $(seq 100); do alive "$old" || break; sleep 0.1; done
! alive "$old" || lab_die "libvirtd $old did not stop"
nsenter -t "$sshd" -m -n -u -- env LIBVIRT_LOG_OUTPUTS="${LAB_LIBVIRT_LOG_LEVEL:-3}:file:$LAB_LOGS/libvirtd.log" \
  /usr/sbin/libvirtd -d --pid-file "$pidfile"
for _ in $(seq 100); do timeout 5 "${VIRSH[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
timeout 5 "${VIRSH[@]}" version >/dev/null
echo "libvirtd restarted: pid $old -> $(cat "$pidfile")"
