# shellcheck shell=bash
# shellcheck disable=SC2034  # settings used by the scripts that source this file
# Shared settings and helpers of the dfir.vmcollect test lab (sourced by up/down/status/build_guest).
#
# Topology (all addresses live in network namespaces the lab creates, except the root-side
# ends of the three management veths):
#
#   root ns (Ansible, tests, pyVmomi)             vmc-kvm ns  (hostname vmc-kvm, "kvm1")
#     vmc-kvm0  10.213.0.1/30  <== veth ==>  mgmt0 10.213.0.2/30   sshd + virtlogd + libvirtd
#                                                stor0 10.213.1.2/30 ──┐
#                                                                      │ veth (storage link, KVM host)
#                                               vmc-coll ns (hostname vmc-coll, "collector1")
#     vmc-coll0 10.213.0.5/30  <== veth ==>  mgmt0 10.213.0.6/30   sshd (tgt installed, not started)
#                                                stor0 10.213.1.1/30 ──┘
#                                                stor1 10.213.1.5/30 ──┐
#                                                                      │ veth (storage link, ESXi host)
#                                               vmc-esx ns ("esx1", the simulated ESXi host)
#     vmc-esx0  10.213.0.9/30  <== veth ==>  mgmt0 10.213.0.10/30  vcsim (lab/vcsim) on :443
#                                                stor0 10.213.1.6/30 ──┘
#
# Each storage link is a /30 of its own: the collector's per-host firewall rule (initiator IQN AND
# source address, nftables) tells the ESXi host from the KVM host as it would on a real network.

LAB_DIR=${LAB_DIR:-/var/tmp/vmcollect-lab}
LAB_SRC=${LAB_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
export LAB_DIR

LAB_RUN=$LAB_DIR/run            # pid files (shared with other lab parts: only lab-* names are ours)
LAB_STATE=$LAB_DIR/run/lab-state # records of host changes to undo (paths created, sysctls)
LAB_LOGS=$LAB_DIR/logs
LAB_GUEST=$LAB_DIR/guest
LAB_HOSTS=$LAB_DIR/hosts
LAB_SSH=$LAB_DIR/ssh
LAB_CACHE=$LAB_DIR/cache

NS_KVM=vmc-kvm
NS_COLL=vmc-coll
NS_ESX=vmc-esx
LAB_NSS="$NS_KVM $NS_COLL $NS_ESX"
VETH_KVM=vmc-kvm0
VETH_COLL=vmc-coll0
VETH_ESX=vmc-esx0
LAB_VETHS="$VETH_KVM $VETH_COLL $VETH_ESX"
KVM_PEER_ADDR=10.213.0.1      # root-ns side
KVM_MGMT_ADDR=10.213.0.2
COLL_PEER_ADDR=10.213.0.5     # root-ns side
COLL_MGMT_ADDR=10.213.0.6
ESX_PEER_ADDR=10.213.0.9      # root-ns side
ESX_MGMT_ADDR=10.213.0.10     # vcsim listens here (ESX_VCSIM_PORT)
COLL_STOR_ADDR=10.213.1.1     # collector, storage link to the KVM host (stor0)
KVM_STOR_ADDR=10.213.1.2
COLL_ESX_STOR_ADDR=10.213.1.5 # collector, storage link to the ESXi host (stor1)
ESX_STOR_ADDR=10.213.1.6      # the ESXi host's iSCSI initiator address (stor0 in vmc-esx)
LAB_NET_PREFIX=10.213.

# The simulated ESXi host: lab/vcsim (govmomi's simulator + the lab's extensions) in $NS_ESX.
ESX_NAME=esx1
ESX_VCSIM_PORT=443
VCSIM_ESX_ENV=$LAB_RUN/vcsim-esx.json     # vcsim's env file (url, certificate, lab.storage, ...)

GUEST_NAME=vmc-victim
GUEST_UUID=6c616276-6d63-4000-8000-76696374696d   # fixed: "labvmc" ... "victim"
GUEST_MEM_MIB=256
LIBVIRT_URI=qemu:///system
VIRSH=(virsh -q -c "$LIBVIRT_URI")

SYS_PY=/usr/bin/python3         # never the pyenv shim on root's PATH

# ---------------------------------------------------------------------------------------------
lab_log() { printf '[lab] %s\n' "$*" >&2; }
lab_die() { printf '[lab] ERROR: %s\n' "$*" >&2; exit 1; }

# cmdline of a pid as one line ("" if gone)
pid_cmdline() { { tr '\0' ' ' < "/proc/$1/cmdline"; } 2>/dev/null || true; }

pid_alive() { [ -n "${1:-}" ] && [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# pid from a pid file if the process is alive and its cmdline contains every given substring
pidfile_match() {  # pidfile substring...
  local f=$1 pid cmd s; shift
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' < "$f")
  pid_alive "$pid" || return 1
  cmd=$(pid_cmdline "$pid")
  for s in "$@"; do [[ $cmd == *"$s"* ]] || return 1; done
  echo "$pid"
}

# stop one pid: TERM, wait up to $2 tenths of a second, then KILL
stop_pid() {  # pid [tenths]
  local pid=$1 n=${2:-50} i
  pid_alive "$pid" || return 0
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < n; i++)); do pid_alive "$pid" || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do pid_alive "$pid" || return 0; sleep 0.1; done
  return 1
}

ns_exists() { [ -e "/run/netns/$1" ]; }

# Record a path the lab is about to create outside $LAB_DIR (only if it does not exist yet),
# so that down.sh removes it again.
record_created_path() {  # path
  mkdir -p "$LAB_STATE"
  [ -e "$1" ] && return 0
  grep -qxF "$1" "$LAB_STATE/created-paths" 2>/dev/null || echo "$1" >> "$LAB_STATE/created-paths"
}

# Change a sysctl, remembering its first original value (down.sh puts it back).
lab_sysctl_set() {  # name value
  local name=$1 val=$2 f
  f=/proc/sys/${name//.//}
  [ -w "$f" ] || { lab_log "sysctl $name not writable"; return 1; }
  mkdir -p "$LAB_STATE"
  if ! awk -v n="$name" '$1 == n {found=1} END {exit !found}' "$LAB_STATE/sysctl.orig" 2>/dev/null; then
    printf '%s %s\n' "$name" "$(tr '\t' ' ' < "$f")" >> "$LAB_STATE/sysctl.orig"
  fi
  echo "$val" > "$f"
}

# Is a (non-lab) libvirtd / virtlogd running on this machine?  Prints "pid cmdline" lines.
foreign_daemons() {
  local p comm ours
  for p in /proc/[0-9]*; do
    comm=$(cat "$p/comm" 2>/dev/null) || continue
    case $comm in libvirtd|virtlogd|virtqemud|virtlockd) ;; *) continue ;; esac
    pid_alive "${p#/proc/}" || continue
    ours=0
    [[ $(pid_cmdline "${p#/proc/}") == *"$LAB_RUN/lab-"* ]] && ours=1
    [ $ours = 1 ] || echo "${p#/proc/} $(pid_cmdline "${p#/proc/}")"
  done
}

# last heartbeat counter on the guest console ("" if none)
guest_heartbeat() { grep -a -o 'LAB-HEARTBEAT [0-9]*' "$LAB_GUEST/logs/console.log" 2>/dev/null | tail -1 | awk '{print $2}'; }

now() { echo "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }
