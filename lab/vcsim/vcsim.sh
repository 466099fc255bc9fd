#!/usr/bin/env bash
# Start, stop or query the lab's vSphere simulator (see main.go, build.sh).
#
#   lab/vcsim/vcsim.sh start  [ENVFILE]   # background, 127.0.0.1 + free port (or VCSIM_NETNS /
#                                         # VCSIM_LISTEN); waits until it answers
#   lab/vcsim/vcsim.sh status [ENVFILE]   # exit 0 if running, 3 if not
#   lab/vcsim/vcsim.sh stop   [ENVFILE]   # idempotent; kills only the recorded pid, then sweeps
#                                         # the datastores a killed vcsim left attached
#
# ENVFILE defaults to $LAB_DIR/run/vcsim.json; it is the JSON file vcsim writes
# once listening (url, credentials, certificate, datastores, VMs, pid).
# Pid and log live under $LAB_DIR/run, named vcsim*.pid/.log after ENVFILE.
#
# Environment:
#   LAB_DIR                  default /var/tmp/vmcollect-lab
#   VCSIM_ARGS               extra flags, e.g. "-mode vpx -vm 3 -ds 2"
#   VCSIM_DATASTORE_DIR      -datastore-dir: each datastore gets a govcsim-* subfolder there,
#                            removed when vcsim stops (default $LAB_DIR/vcsim-ds/<name>); the
#                            storage extension keeps its VMFS mounts (vmfs/volumes/<uuid>) and
#                            its .labstore state folder there too
#   VCSIM_NETNS              run vcsim in this network namespace (/run/netns/NAME; root only).
#                            Only the network namespace is entered (nsenter --net): its datastore
#                            mounts stay visible in the root mount namespace, where lab/down.sh
#                            finds them
#   VCSIM_LISTEN             listen address (default 127.0.0.1:0); with VCSIM_NETNS an address of
#                            that namespace, e.g. 10.213.0.10:443 (the certificate covers that IP)
#   VCSIM_START_TIMEOUT      seconds to wait for the server (default 30)
#   VCSIM_STOP_TIMEOUT       seconds to wait after SIGTERM before SIGKILL (default 60: vcsim
#                            unmounts and detaches its datastores on the way out)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAB_DIR="${LAB_DIR:-/var/tmp/vmcollect-lab}"
run_dir="$LAB_DIR/run"
bin="$LAB_DIR/bin/vcsim"
timeout="${VCSIM_START_TIMEOUT:-30}"
stop_timeout="${VCSIM_STOP_TIMEOUT:-60}"
netns="${VCSIM_NETNS:-}"
listen="${VCSIM_LISTEN:-127.0.0.1:0}"

usage() {
  echo "usage: $0 start|stop|status [ENVFILE]" >&2
  exit 2
}

if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
cmd="$1"
envfile="${2:-$run_dir/vcsim.json}"
case "$envfile" in
  /*) ;;
  *) envfile="$PWD/$envfile" ;;
esac
# $LAB_DIR/run is shared with other lab parts (lab-*.pid are up.sh's): ours start with "vcsim".
name="$(basename "$envfile" .json)"
case "$name" in
  vcsim*) ;;
  *) name="vcsim-$name" ;;
esac
pidfile="$run_dir/$name.pid"
logfile="$run_dir/$name.log"
dsdir="${VCSIM_DATASTORE_DIR:-$LAB_DIR/vcsim-ds/$name}"

say() { echo "vcsim.sh: $*"; }
die() { echo "vcsim.sh: error: $*" >&2; exit 1; }

# is_ours PID: the process exists and is our vcsim binary serving ENVFILE.
is_ours() {
  local pid="$1" argv
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  argv="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [ "$(printf '%s\n' "$argv" | head -n 1)" = "$bin" ] || return 1
  printf '%s\n' "$argv" | grep -qxF -- "$envfile"
}

recorded_pid() {
  local pid=""
  if [ -f "$pidfile" ]; then
    pid="$(tr -dc '0-9' <"$pidfile")"
  fi
  echo "$pid"
}

# in_netns CMD...: run CMD in vcsim's network namespace (or here without VCSIM_NETNS)
in_netns() {
  if [ -n "$netns" ]; then
    nsenter --net="/run/netns/$netns" -- "$@"
  else
    "$@"
  fi
}

# sweep: undo what a vcsim that did not exit cleanly left of its datastores (mounts, loop
# devices, qemu-storage-daemon); labstore.py finds them from the records in the state folder.
sweep() {
  [ -d "$dsdir/.labstore" ] || return 0
  say "sweeping the datastores a dead vcsim left in $dsdir/.labstore"
  /usr/bin/python3 "$here/labstore.py" sweep --state-dir "$dsdir/.labstore" >/dev/null || true
  rmdir "$dsdir/.labstore" "$dsdir/vmfs/volumes" "$dsdir/vmfs" 2>/dev/null || true
}

# json_field KEY: a top-level string/number field of ENVFILE (flat, written by main.go).
json_field() {
  sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$envfile" | head -n 1
}

tail_log() {
  if [ -f "$logfile" ]; then
    echo "--- last lines of $logfile ---" >&2
    tail -n 20 "$logfile" >&2
  fi
}

do_status() {
  local pid
  pid="$(recorded_pid)"
  if is_ours "$pid"; then
    say "running: pid $pid, $(json_field url 2>/dev/null || echo '?')${netns:+ in netns $netns}, env $envfile"
    return 0
  fi
  say "not running (env $envfile)"
  return 3
}

do_stop() {
  local pid i
  pid="$(recorded_pid)"
  if [ -z "$pid" ]; then
    say "not running (no pid file $pidfile)"
  elif ! is_ours "$pid"; then
    say "pid $pid from $pidfile is not our vcsim (gone or reused); not killing it"
  else
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < stop_timeout * 10; i++)); do
      is_ours "$pid" || break
      sleep 0.1
    done
    if is_ours "$pid"; then
      say "pid $pid still alive after $stop_timeout s: sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    say "stopped pid $pid"
  fi
  rm -f "$pidfile"
  sweep
  # vcsim removes its env file and datastore subfolders on a clean exit; drop
  # a stale env file and our default (then empty) datastore folder.
  rm -f "$envfile"
  if [ -z "${VCSIM_DATASTORE_DIR:-}" ] && [ -d "$dsdir" ]; then
    # a vcsim killed (-9) never removed its datastore folders: they are orphans now (a clean exit
    # removes them too). Never while anything below is still mounted.
    if awk -v d="$dsdir/" '{ if (index($5 "/", d) == 1) found = 1 } END { exit !found }' /proc/self/mountinfo; then
      say "something under $dsdir is still mounted: kept"
    else
      rm -rf "$dsdir"/govcsim-*
      rmdir "$dsdir" 2>/dev/null || true
    fi
  fi
}

do_start() {
  local pid t0 deadline port host="" elapsed
  mkdir -p "$run_dir" "$(dirname "$envfile")"
  pid="$(recorded_pid)"
  if is_ours "$pid"; then
    say "already running: pid $pid, env $envfile"
    return 0
  fi
  rm -f "$pidfile" "$envfile"

  LAB_DIR="$LAB_DIR" "$here/build.sh"

  if [ -n "$netns" ] && [ ! -e "/run/netns/$netns" ]; then
    die "VCSIM_NETNS=$netns: no such network namespace (/run/netns/$netns)"
  fi
  sweep
  local -a args=(-l "$listen" -env "$envfile" -datastore-dir "$dsdir" -labstore "$here/labstore.py")
  if [ -n "${VCSIM_ARGS:-}" ]; then
    local -a extra
    read -r -a extra <<<"$VCSIM_ARGS"
    args+=("${extra[@]}")
  fi

  t0=$(date +%s.%N)
  : >"$logfile"
  # setsid: its own session, so it outlives this shell's process group. setsid and nsenter
  # (network namespace only) exec, so $! is vcsim's own pid.
  local -a pre=()
  if command -v setsid >/dev/null 2>&1; then pre+=(setsid); fi
  if [ -n "$netns" ]; then pre+=(nsenter "--net=/run/netns/$netns" --); fi
  "${pre[@]}" "$bin" "${args[@]}" </dev/null >>"$logfile" 2>&1 &
  pid=$!
  echo "$pid" >"$pidfile"

  deadline=$(($(date +%s) + timeout))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      tail_log
      die "vcsim (pid $pid) exited during start-up"
    fi
    if [ -s "$envfile" ] && [ "$(json_field pid)" = "$pid" ]; then
      port="$(json_field port)"
      host="$(json_field host)"
      # shellcheck disable=SC2016  # $1 and $2 are the inner bash's arguments
      if [ -n "$port" ] && in_netns bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "${host:-127.0.0.1}" "$port" 2>/dev/null; then
        break
      fi
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      do_stop >/dev/null
      tail_log
      die "vcsim (pid $pid) did not answer on ${host:-$listen} within ${timeout} s (env file $envfile)"
    fi
    sleep 0.1
  done
  elapsed="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')"
  say "started pid $pid in ${elapsed} s: $(json_field url)${netns:+ (netns $netns)}; env $envfile; log $logfile"
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) usage ;;
esac
