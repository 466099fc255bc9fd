#!/usr/bin/env bash
# The SSH side of the lab's ESXi host (LAB EMULATOR, see BEHAVIOUR.md): an OpenSSH sshd whose sessions run the lab's
# vim-cmd, vmkfstools, esxcli and partedUtil (acting on the lab's vSphere simulator through its API) and see the
# simulator's datastores as /vmfs/volumes/<name>.
#
#   lab/esxi-shell/sshd.sh start  STATE_DIR   # background; waits until the port answers
#   lab/esxi-shell/sshd.sh status STATE_DIR   # exit 0 if running, 3 if not
#   lab/esxi-shell/sshd.sh stop   STATE_DIR   # idempotent: the recorded sshd and its sessions
#
# STATE_DIR (made 0700, kept by stop; remove it yourself) holds the host key (made once: ssh_host_ed25519_key),
# sshd_config, authorized_keys (StrictModes off: the state folder may sit below /var/tmp, which sshd would refuse),
# config.json (0600: the env file), bin/ (the PATH wrappers), root/ (the empty mount
# point of each session's mirror root), sshd.pid, sshd.log, host_key.fingerprint (SHA256:..., as ssh-keygen -lf
# prints it) and known_hosts (one line for the listen address).
#
# Environment (start):
#   ESXI_SHELL_ENV_FILE         required: the env file of the lab's vSphere simulator (vcsim.sh start ENVFILE)
#   ESXI_SHELL_AUTHORIZED_KEYS  required: public keys admitted for root (key login only)
#   ESXI_SHELL_LISTEN           ADDR:PORT (default 127.0.0.1:2222); with ESXI_SHELL_NETNS an address of that namespace
#   ESXI_SHELL_NETNS            run sshd in this network namespace (/run/netns/NAME), e.g. vmc-esx
#   ESXI_SHELL_PYTHON           the Python with pyVmomi that runs the programs (default: the checkout's .venv)
#   ESXI_SHELL_START_TIMEOUT    seconds to wait for the port (default 15)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
sshd_bin=/usr/sbin/sshd
PROGRAMS=(vim-cmd vmkfstools esxcli partedUtil esxi-session)

usage() { echo "usage: $0 start|stop|status STATE_DIR" >&2; exit 2; }
say() { echo "sshd.sh: $*"; }
die() { echo "sshd.sh: error: $*" >&2; exit 1; }

[ $# -eq 2 ] || usage
cmd="$1"
state="$2"
case "$state" in
  /*) ;;
  *) state="$PWD/$state" ;;
esac
case "$state" in
  *[[:space:]\'\"\\]*) die "STATE_DIR must not contain spaces or quotes: $state" ;;
esac
config="$state/sshd_config"
pidfile="$state/sshd.pid"
netns="${ESXI_SHELL_NETNS:-}"

# is_ours PID: a live sshd started on our sshd_config (the listener rewrites its argv into one title,
# "sshd: /usr/sbin/sshd -D -e -f <config> [listener] ...": matched as one string)
is_ours() {
  local pid="$1" argv
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  argv="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  case "$argv " in
    *sshd*" -f $config "*) ;;
    *) return 1 ;;
  esac
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

recorded_pid() {
  if [ -f "$pidfile" ]; then tr -dc '0-9' <"$pidfile"; fi
}

# descendants PID: every process below PID (its sessions), deepest first
descendants() {
  local pid="$1" child
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
    descendants "$child"
    echo "$child"
  done
}

do_status() {
  local pid
  pid="$(recorded_pid)"
  if is_ours "$pid"; then
    say "running: pid $pid, $(grep -m1 '^ListenAddress ' "$config" | cut -d' ' -f2)${netns:+ in netns $netns}, state $state"
    return 0
  fi
  say "not running (state $state)"
  return 3
}

do_stop() {
  local pid i kids
  pid="$(recorded_pid)"
  if [ -z "$pid" ]; then
    say "not running (no pid file $pidfile)"
  elif ! is_ours "$pid"; then
    say "pid $pid from $pidfile is not our sshd (gone or reused); not killing it"
  else
    kids="$(descendants "$pid")"
    kill -TERM "$pid" 2>/dev/null || true
    # sessions outlive the listener: end them too (their commands are in their own process groups)
    for k in $kids; do kill -TERM "$k" 2>/dev/null || true; done
    for ((i = 0; i < 50; i++)); do
      is_ours "$pid" || break
      sleep 0.1
    done
    if is_ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
    say "stopped pid $pid"
  fi
  rm -f "$pidfile"
}

do_start() {
  local pid listen addr port env_file keys python deadline fp
  pid="$(recorded_pid)"
  if is_ours "$pid"; then
    say "already running: pid $pid, state $state"
    return 0
  fi
  env_file="${ESXI_SHELL_ENV_FILE:-}"
  keys="${ESXI_SHELL_AUTHORIZED_KEYS:-}"
  listen="${ESXI_SHELL_LISTEN:-127.0.0.1:2222}"
  python="${ESXI_SHELL_PYTHON:-$repo/.venv/bin/python}"
  if [ -z "$env_file" ] || [ ! -f "$env_file" ]; then
    die "ESXI_SHELL_ENV_FILE: the simulator's env file is missing (${env_file:-unset})"
  fi
  if [ -z "$keys" ] || [ ! -s "$keys" ]; then
    die "ESXI_SHELL_AUTHORIZED_KEYS: no public keys (${keys:-unset})"
  fi
  [ -x "$python" ] || die "ESXI_SHELL_PYTHON: $python is not executable (the lab's venv with pyVmomi)"
  "$python" -c 'import pyVmomi' 2>/dev/null || die "$python has no pyVmomi"
  [ -x "$sshd_bin" ] || die "$sshd_bin missing: apt-get install openssh-server"
  addr="${listen%:*}"
  port="${listen##*:}"
  case "$port" in
    "" | *[!0-9]*) die "ESXI_SHELL_LISTEN=$listen: want ADDR:PORT" ;;
  esac
  if [ -z "$addr" ] || [ "$addr" = "$listen" ] || [ "$port" -eq 0 ]; then
    die "ESXI_SHELL_LISTEN=$listen: want ADDR:PORT"
  fi
  if [ -n "$netns" ] && [ ! -e "/run/netns/$netns" ]; then
    die "ESXI_SHELL_NETNS=$netns: no such network namespace"
  fi

  mkdir -p "$state" "$state/bin" "$state/root"
  chmod 0700 "$state"
  # sshd's privilege separation folder (Debian's package makes it at boot; lab/up.sh records it as its own)
  [ -d /run/sshd ] || mkdir -m 0755 /run/sshd
  if [ ! -s "$state/ssh_host_ed25519_key" ]; then
    ssh-keygen -q -t ed25519 -N '' -C "vmcollect-lab-esxi" -f "$state/ssh_host_ed25519_key"
  fi
  install -m 0600 "$keys" "$state/authorized_keys"
  (umask 077 && printf '{"env_file": "%s", "bin": "%s", "root": "%s"}\n' "$env_file" "$state/bin" "$state/root" \
    >"$state/config.json")
  chmod 0600 "$state/config.json"
  for p in "${PROGRAMS[@]}"; do
    printf '#!/bin/sh\n# lab ESXi shell: %s (lab/esxi-shell/%s) with the lab venv'"'"'s Python\nVMCOLLECT_ESXI_SHELL_CONFIG=%s\nexport VMCOLLECT_ESXI_SHELL_CONFIG\nexec %s %s "$@"\n' \
      "$p" "$p" "$state/config.json" "$python" "$here/$p" >"$state/bin/$p"
    chmod 0755 "$state/bin/$p"
  done
  cat >"$config" <<EOF
# lab ESXi host's sshd (lab/esxi-shell/sshd.sh); LAB EMULATOR
ListenAddress $addr:$port
HostKey $state/ssh_host_ed25519_key
PidFile $pidfile
PermitRootLogin prohibit-password
AuthorizedKeysFile $state/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserEnvironment no
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PrintMotd no
PrintLastLog no
ForceCommand exec $state/bin/esxi-session
EOF
  "$sshd_bin" -t -f "$config" || die "sshd -t refused $config"
  fp="$(ssh-keygen -lf "$state/ssh_host_ed25519_key.pub" | awk '{print $2}')"
  echo "$fp" >"$state/host_key.fingerprint"
  if [ "$port" = 22 ]; then
    printf '%s %s\n' "$addr" "$(cut -d' ' -f1-2 "$state/ssh_host_ed25519_key.pub")" >"$state/known_hosts"
  else
    printf '[%s]:%s %s\n' "$addr" "$port" "$(cut -d' ' -f1-2 "$state/ssh_host_ed25519_key.pub")" >"$state/known_hosts"
  fi

  local -a pre=()
  if command -v setsid >/dev/null 2>&1; then pre+=(setsid); fi
  if [ -n "$netns" ]; then pre+=(nsenter "--net=/run/netns/$netns" --); fi
  : >"$state/sshd.log"
  "${pre[@]}" "$sshd_bin" -D -e -f "$config" </dev/null >>"$state/sshd.log" 2>&1 &
  pid=$!
  echo "$pid" >"$pidfile"
  deadline=$(($(date +%s) + ${ESXI_SHELL_START_TIMEOUT:-15}))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$state/sshd.log" >&2 || true
      rm -f "$pidfile"
      die "sshd (pid $pid) exited during start-up"
    fi
    # shellcheck disable=SC2016  # $1 and $2 are the inner bash's arguments
    if { if [ -n "$netns" ]; then nsenter "--net=/run/netns/$netns" -- bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$addr" "$port"
         else bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$addr" "$port"; fi; } 2>/dev/null; then
      break
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      do_stop >/dev/null
      tail -n 20 "$state/sshd.log" >&2 || true
      die "sshd (pid $pid) did not answer on $addr:$port"
    fi
    sleep 0.1
  done
  echo "$pid" >"$pidfile"  # sshd -D wrote its own pid there too: the same process (setsid and nsenter exec)
  say "started pid $pid on $addr:$port${netns:+ (netns $netns)}; host key $fp; state $state"
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) usage ;;
esac
