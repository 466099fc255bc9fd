#!/usr/bin/env bash
# host-init.sh ROLE - "boot" one lab host. up.sh runs it as
#   setsid ip netns exec <netns> unshare --uts -- bash host-init.sh kvm|coll
# `ip netns exec` gives it a private (slave) mount namespace, `unshare --uts` a private
# hostname. Every daemon started here and every SSH session of sshd (= every Ansible task on
# this host) shares that network, mount and UTS namespace.
#
#   kvm : hostname vmc-kvm; binds lab-owned folders over /etc/libvirt (a copy without the
#         network definitions), /var/lib/libvirt,
#         /var/log/libvirt and /var/cache/libvirt (= $LAB_DIR/cache/libvirt, kept by down.sh
#         because libvirtd's QEMU capability probe takes ~1 min) (only inside this mount namespace: the
#         machine's /etc and /var stay untouched, and the libvirt `default` network does not
#         exist here, so no virbr0/dnsmasq); starts virtlogd -d and libvirtd -d, then exec sshd.
#   coll: hostname vmc-coll; exec sshd (tgt is installed, tgtd is left to the modules).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
role=${1:?usage: host-init.sh kvm|coll}
H=$LAB_HOSTS/$role
case $role in
  kvm)  hostname "$NS_KVM" ;;
  coll) hostname "$NS_COLL" ;;
  *) echo "unknown role $role" >&2; exit 2 ;;
esac

if [ "$role" = kvm ]; then
  # -n: no /run/mount/utab entries (that file is shared with the root namespace)
  mount -n --bind "$H/etc-libvirt" /etc/libvirt
  mount -n --bind "$H/var-lib-libvirt" /var/lib/libvirt
  mount -n --bind "$LAB_CACHE/libvirt" /var/cache/libvirt   # QEMU capabilities: probing costs ~1 min
  mount -n --bind "$H/var-log-libvirt" /var/log/libvirt
  # /dev/kvm here is kvm_pvm (root-only, cannot boot a stock kernel): the lab runs TCG guests.
  # libvirt's QEMU probe (as root) sees KVM, its usability check (as libvirt-qemu) does not, so
  # it re-probes QEMU (~4 s) on every capabilities lookup (each define/start/...). Hide it in
  # this mount namespace behind an empty mode-000 file so both agree: no KVM.
  if [ -e /dev/kvm ]; then
    : > "$H/no-kvm"; chmod 000 "$H/no-kvm"
    mount -n --bind "$H/no-kvm" /dev/kvm
  fi
  # hugetlbfs, in this mount namespace only: libvirt refuses <hugepages/> without one (also for
  # memfd-backed RAM, which does not use it), named in qemu.conf only once it is mounted (libvirtd
  # would not start on a hugetlbfs_mount that is not one). The pages themselves are reserved by the
  # test that needs them (vm.nr_hugepages) and given back after.
  mkdir -p "$H/hugepages"
  if mount -n -t hugetlbfs -o pagesize=2M lab-hugepages "$H/hugepages"; then
    printf '# dfir.vmcollect lab (host-init.sh): hugetlbfs of the KVM host namespace\nhugetlbfs_mount = "%s"\n' \
      "$H/hugepages" >> /etc/libvirt/qemu.conf
  else
    echo "LAB-WARN: no hugetlbfs here: hugepage-backed test guests will be skipped" >&2
  fi
  /usr/sbin/virtlogd -d --pid-file "$LAB_RUN/lab-virtlogd.pid"
  for _ in $(seq 100); do [ -S /run/libvirt/virtlogd-sock ] && break; sleep 0.05; done
  [ -S /run/libvirt/virtlogd-sock ] || { echo "virtlogd socket did not appear" >&2; exit 1; }
  LIBVIRT_LOG_FILTERS=${LAB_LIBVIRT_LOG_FILTERS:-} LIBVIRT_LOG_OUTPUTS="${LAB_LIBVIRT_LOG_LEVEL:-3}:file:$LAB_LOGS/libvirtd.log" \
    /usr/sbin/libvirtd -d --pid-file "$LAB_RUN/lab-libvirtd.pid"
fi
# sshd runs every session's command through root's bash, and bash run by sshd reads ~/.bashrc. This machine's own
# (pyenv init and the like: 0.2 s per command here, so per Ansible task) is not what a hypervisor host or a collector
# runs: an empty one is bound over it, in this mount namespace only (the machine's file stays as it is).
home=$(getent passwd root | cut -d: -f6)
if [ -f "$home/.bashrc" ]; then
  printf '# root'"'"'s ~/.bashrc on lab host %s: empty (lab/host-init.sh)\n' "$role" > "$H/bashrc"
  mount -n --bind "$H/bashrc" "$home/.bashrc"
fi
exec /usr/sbin/sshd -D -e -f "$H/sshd_config"
