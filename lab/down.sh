#!/usr/bin/env bash
# down.sh - bring the dfir.vmcollect test lab down and leave nothing behind (idempotent).
#
#   bash lab/down.sh            keeps $LAB_DIR/cache, the guest build, keys and logs
#   PURGE=1 bash lab/down.sh    also deletes $LAB_DIR entirely (cache included)
#
# Works when nothing is up and after a half-failed up.sh. It removes, in this order:
#   1. every domain of the lab's libvirtd (destroy + undefine; that libvirtd is private to the lab)
#   2. Ansible ssh ControlMaster sockets under $LAB_DIR/ansible/cp (asked to exit)
#   2b. the simulated ESXi host (lab/vcsim/vcsim.sh stop: vcsim unmounts and detaches its VMFS
#      datastores on the way out; after a kill -9 labstore.py sweeps what it left: mounts, loop
#      devices, qemu-storage-daemon)
#   3. mounts under $LAB_DIR in the root mount namespace (FUSE exports, ...) and loop devices
#      backed by files under $LAB_DIR (checked again after step 6)
#   4. processes the lab recorded in $LAB_DIR/run/lab-*.pid (only if their cmdline still matches)
#   5. every process still inside the lab's network namespaces (tgtd is asked to exit first)
#   6. the network namespaces and the root-side veths
#   7. paths the lab created outside $LAB_DIR (/run/sshd, /run/libvirt, /run/netns, ...) and
#      sysctls it changed (original values recorded in run/lab-state/sysctl.orig)
# then checks that nothing is left and exits non-zero (listing it) if something is.
set -uo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ "$(id -u)" = 0 ] || lab_die "down.sh must run as root"
T0=$(now)
say() { echo "  $*"; }
# umount (libmount) creates /run/mount for its lock/utab: remove it again if it was not there
[ -e /run/mount ] && RUN_MOUNT_EXISTED=1 || RUN_MOUNT_EXISTED=0

# ---- 1. domains ------------------------------------------------------------------------------
if pidfile_match "$LAB_RUN/lab-libvirtd.pid" libvirtd "$LAB_RUN/lab-libvirtd.pid" >/dev/null &&
   timeout 10 "${VIRSH[@]}" version >/dev/null 2>&1; then
  for dom in $(timeout 20 "${VIRSH[@]}" list --all --name 2>/dev/null); do
    if timeout 20 "${VIRSH[@]}" domstate "$dom" 2>/dev/null | grep -qvx 'shut off'; then
      timeout 30 "${VIRSH[@]}" destroy "$dom" >/dev/null 2>&1 && say "destroyed domain $dom"
    fi
    timeout 30 "${VIRSH[@]}" undefine "$dom" --snapshots-metadata --checkpoints-metadata --managed-save >/dev/null 2>&1 ||
      timeout 30 "${VIRSH[@]}" undefine "$dom" >/dev/null 2>&1
    say "undefined domain $dom"
  done
fi

# ---- 2. Ansible ControlMasters -----------------------------------------------------------------
for sock in "$LAB_DIR"/ansible/cp/*; do
  [ -S "$sock" ] || continue
  timeout 5 ssh -o ControlPath="$sock" -O exit lab-host >/dev/null 2>&1 && say "closed ssh master $(basename "$sock")"
  rm -f "$sock"
done

# ---- 2b. the simulated ESXi host (its shell's sshd first, then the simulator) ---------------------------
if [ -e "$LAB_HOSTS/esx/sshd.pid" ]; then
  ESXI_SHELL_NETNS="$NS_ESX" timeout 60 bash "$LAB_SRC/esxi-shell/sshd.sh" stop "$LAB_HOSTS/esx" 2>&1 | sed 's/^/  /'
fi
if [ -e "$LAB_RUN/vcsim-esx.pid" ] || [ -e "$VCSIM_ESX_ENV" ] || [ -d "$LAB_DIR/vcsim-ds/vcsim-esx" ]; then
  LAB_DIR="$LAB_DIR" timeout 200 bash "$LAB_SRC/vcsim/vcsim.sh" stop "$VCSIM_ESX_ENV" 2>&1 | sed 's/^/  /'
fi

# ---- 3. mounts under $LAB_DIR (root mount namespace), deepest first ------------------------------
umount_lab() {
  awk -v d="$LAB_DIR/" '{ gsub(/\\040/, " ", $5); if (index($5 "/", d) == 1) print $5 }' /proc/self/mountinfo | sort -r
}
for m in $(umount_lab); do
  umount "$m" 2>/dev/null || fusermount -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  say "unmounted $m"
done

# ---- 3b. loop devices backed by lab files (before the processes: once a namespace is gone its
# FUSE-backed loops show "/" as backing file). A mounted loop is only marked autoclear here and
# goes away with its last user; the devices seen now are checked again at the end.
lab_loops() {
  local b
  for b in /sys/block/loop*/loop/backing_file; do
    [ -r "$b" ] || continue
    case $(cat "$b" 2>/dev/null) in
      "$LAB_DIR"/*) echo "/dev/$(basename "$(dirname "$(dirname "$b")")")" ;;
    esac
  done
}
detach_loops() {  # dev...
  local dev b
  for dev in "$@"; do
    b=/sys/block/${dev#/dev/}/loop/backing_file
    [ -r "$b" ] || continue    # already released
    case $(cat "$b" 2>/dev/null) in
      "$LAB_DIR"/*|/|"") losetup -d "$dev" 2>/dev/null && say "detached $dev" ;;
    esac
  done
}
LOOPS=$(lab_loops)
# shellcheck disable=SC2086
detach_loops $LOOPS

# ---- 4. recorded processes ------------------------------------------------------------------------
stop_recorded() {  # pidfile label substring...
  local f=$1 label=$2 pid; shift 2
  if pid=$(pidfile_match "$f" "$@"); then
    if stop_pid "$pid" 50; then say "stopped $label (pid $pid)"; else say "could not stop $label (pid $pid)"; fi
  fi
  rm -f "$f"
}
stop_recorded "$LAB_RUN/lab-libvirtd.pid" libvirtd libvirtd "$LAB_RUN/lab-libvirtd.pid"
stop_recorded "$LAB_RUN/lab-virtlogd.pid" virtlogd virtlogd "$LAB_RUN/lab-virtlogd.pid"
for role in kvm coll; do
  stop_recorded "$LAB_RUN/lab-sshd-$role.pid" "sshd $role" sshd "$LAB_HOSTS/$role/sshd_config"
  # launcher pid: sshd after the exec chain (or host-init.sh if it failed before exec)
  stop_recorded "$LAB_RUN/lab-host-$role.pid" "host-init $role" "$LAB_DIR"
done
for f in "$LAB_RUN"/lab-*.pid; do   # anything else a lab part recorded (e.g. qemu-storage-daemon)
  [ -e "$f" ] || continue
  stop_recorded "$f" "$(basename "$f" .pid)" "$LAB_DIR"
done

# ---- 5. everything left inside the lab's namespaces ----------------------------------------------
ns_pids() { local ns; for ns in $LAB_NSS; do ns_exists "$ns" && ip netns pids "$ns" 2>/dev/null; done; }
TGT_PORTS=""
for pid in $(ns_pids); do
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = tgtd ] || continue
  cmd=$(pid_cmdline "$pid")
  port=$(sed -n 's/.*\(-C\|--control-port\)[ =]\([0-9][0-9]*\).*/\2/p' <<< "$cmd")
  TGT_PORTS="$TGT_PORTS ${port:-0}"
  # tgtd ignores SIGTERM while targets exist: delete them, then ask it to exit
  for tid in $(tgtadm -C "${port:-0}" --lld iscsi --op show --mode target 2>/dev/null | sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
    timeout 5 tgtadm -C "${port:-0}" --lld iscsi --op delete --force --mode target --tid "$tid" >/dev/null 2>&1
  done
  timeout 5 tgtadm -C "${port:-0}" --op delete --mode system >/dev/null 2>&1 && say "asked tgtd $pid to exit"
done
for round in 1 2; do
  pids=$(ns_pids)
  [ -n "$pids" ] || break
  for pid in $pids; do
    [ $round = 1 ] && say "leftover in lab netns: $pid $(pid_cmdline "$pid" | cut -c1-100)"
    kill "$pid" 2>/dev/null
  done
  for _ in $(seq 50); do [ -z "$(ns_pids)" ] && break; sleep 0.1; done
  [ -z "$(ns_pids)" ] && break
  for pid in $(ns_pids); do kill -9 "$pid" 2>/dev/null && say "SIGKILL $pid"; done
  sleep 0.3
done
for port in $TGT_PORTS; do rm -f "/run/tgtd/socket.$port" "/run/tgtd/socket.$port.lock"; done

# ---- 6. namespaces + veths ----------------------------------------------------------------------------
for ns in $LAB_NSS; do
  ns_exists "$ns" || continue
  ip netns del "$ns" && say "deleted netns $ns"
done
for link in $LAB_VETHS; do
  ip link show "$link" >/dev/null 2>&1 && ip link del "$link" && say "deleted link $link"
done
sleep 0.2
# loops whose last user was in a namespace just torn down (+ any attached meanwhile)
# shellcheck disable=SC2046,SC2086
detach_loops $LOOPS $(lab_loops)

# ---- 7. host paths and sysctls -------------------------------------------------------------------------
daemon_running() {  # comm (zombies do not count: PID 1 here reaps late)
  local p
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = "$1" ] && pid_alive "${p#/proc/}" && return 0
  done
  return 1
}
if [ -f "$LAB_STATE/created-paths" ]; then
  while read -r path; do
    [ -e "$path" ] || continue
    case $path in
      /run/libvirt)
        if daemon_running libvirtd || daemon_running virtlogd; then say "kept $path (a libvirtd/virtlogd runs)"
        else rm -rf "$path" && say "removed $path"; fi ;;
      /run/tgtd)
        if daemon_running tgtd; then say "kept $path (a tgtd runs)"; else rm -rf "$path" && say "removed $path"; fi ;;
      /run/netns)  # `ip netns add` made it a (shared) mount of itself
        if [ -z "$(ls -A "$path" 2>/dev/null)" ]; then
          while grep -q " $path " /proc/self/mountinfo; do umount "$path" 2>/dev/null || break; done
        fi
        if rmdir "$path" 2>/dev/null; then say "removed $path"; else say "kept $path (not empty or in use)"; fi ;;
      *)
        if rmdir "$path" 2>/dev/null; then say "removed $path"; else say "kept $path (not empty or in use)"; fi ;;
    esac
  done < "$LAB_STATE/created-paths"
fi
if [ "$RUN_MOUNT_EXISTED" = 0 ] && [ -d /run/mount ] && [ -z "$(ls -A /run/mount)" ]; then
  rmdir /run/mount && say "removed /run/mount"
fi
if [ -f "$LAB_STATE/sysctl.orig" ]; then
  while read -r name val; do
    echo "$val" > "/proc/sys/${name//.//}" && say "restored sysctl $name=$val"
  done < "$LAB_STATE/sysctl.orig"
fi

# ---- 8. lab files that describe a running lab --------------------------------------------------------
rm -f "$LAB_DIR/lab.json"
rm -rf "$LAB_STATE" "$LAB_DIR/ansible/cp" "$LAB_DIR/ansible/remote-tmp" "$LAB_DIR/ansible/local-tmp" \
       "$LAB_HOSTS/kvm/etc-libvirt" "$LAB_HOSTS/kvm/var-lib-libvirt"

if [ "${PURGE:-0}" = 1 ] && [ -d "$LAB_DIR" ]; then
  real=$(readlink -f "$LAB_DIR")
  case $real in
    /|/var|/var/tmp|/tmp|/root|/home|/etc|/usr|/run|/srv|/opt|/work|"") lab_die "refusing to purge LAB_DIR=$real" ;;
  esac
  [ "$(awk -F/ '{print NF}' <<< "$real")" -ge 3 ] || lab_die "refusing to purge LAB_DIR=$real (too short)"
  rm -rf "$real" && say "purged $real"
fi

# ---- 9. verify ----------------------------------------------------------------------------------------
LEFT=""
for ns in $LAB_NSS; do ns_exists "$ns" && LEFT="$LEFT netns:$ns"; done
for link in $LAB_VETHS; do ip link show "$link" >/dev/null 2>&1 && LEFT="$LEFT link:$link"; done
for dev in $LOOPS $(lab_loops); do
  [ -r "/sys/block/${dev#/dev/}/loop/backing_file" ] && LEFT="$LEFT loop:$dev"
done
for p in /proc/[0-9]*; do
  [[ $(pid_cmdline "${p#/proc/}") == *"$LAB_RUN/lab-"* ]] && LEFT="$LEFT pid:${p#/proc/}"
  [[ $(pid_cmdline "${p#/proc/}") == *"$VCSIM_ESX_ENV"* ]] && pid_alive "${p#/proc/}" && LEFT="$LEFT vcsim:${p#/proc/}"
done
[ -n "$(umount_lab)" ] && LEFT="$LEFT mounts:$(umount_lab | tr '\n' ',')"
if [ -n "$LEFT" ]; then
  echo "down.sh: LEFT BEHIND:$LEFT" >&2
  exit 1
fi
[ -d "$LAB_LOGS" ] && printf '  %-30s %6ss\n' "down.sh" "$(elapsed "$T0")" >> "$LAB_LOGS/timings.txt"
echo "lab is down ($(elapsed "$T0")s)"
