#!/usr/bin/env bash
# status.sh - is the lab up and healthy?   bash lab/status.sh [-q]
# Exit 0 only if everything is healthy: namespaces, both sshd answer `ssh -F ssh_config root@addr
# true`, the lab's virtlogd/libvirtd run, the guest is running and its heartbeat advances, the
# simulated ESXi host (vcsim in vmc-esx) runs and answers HTTPS on its management address, and
# lab.json exists. -q prints nothing.
set -uo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
QUIET=0
[ "${1:-}" = -q ] && QUIET=1
FAILS=0
report() {  # ok|FAIL what detail
  [ "$1" = ok ] || FAILS=$((FAILS + 1))
  [ $QUIET = 1 ] || printf '%-4s %-22s %s\n' "$1" "$2" "${3:-}"
}
check() {  # what detail command...
  local what=$1 detail=$2; shift 2
  if "$@" >/dev/null 2>&1; then report ok "$what" "$detail"; else report FAIL "$what" "$detail"; fi
}

for ns in $LAB_NSS; do check "netns $ns" "" ns_exists "$ns"; done
[ $FAILS = 0 ] || { [ $QUIET = 1 ] || echo "lab is DOWN"; exit 1; }

for link in $LAB_VETHS; do
  check "link $link" "$(ip -br -4 addr show dev "$link" 2>/dev/null | awk '{print $2, $3}')" \
    bash -c "ip -br link show dev $link | grep -qw UP"
done
for role in kvm coll; do
  if [ $role = kvm ]; then addr=$KVM_MGMT_ADDR; else addr=$COLL_MGMT_ADDR; fi
  pid=$(pidfile_match "$LAB_RUN/lab-sshd-$role.pid" sshd "$LAB_HOSTS/$role/sshd_config") || pid=""
  check "sshd $role" "pid ${pid:-none}" test -n "$pid"
  check "ssh root@$addr" "ssh -F $LAB_SSH/ssh_config root@$addr true" \
    timeout 15 ssh -F "$LAB_SSH/ssh_config" -o ConnectTimeout=5 "root@$addr" true
done
for d in virtlogd libvirtd; do
  pid=$(pidfile_match "$LAB_RUN/lab-$d.pid" "$d") || pid=""
  check "$d" "pid ${pid:-none}" test -n "$pid"
done
state=$(timeout 10 "${VIRSH[@]}" domstate "$GUEST_NAME" 2>/dev/null | head -1)
check "guest $GUEST_NAME" "${state:-unknown}" test "$state" = running

# shellcheck disable=SC2317  # hb_ok is called through check()
# heartbeat: fresh console log (written every 2 s) or a counter that moves within 5 s
hb_ok() {
  local hb0 age i
  hb0=$(guest_heartbeat); [ -n "$hb0" ] || return 1
  age=$(( $(date +%s) - $(stat -c %Y "$LAB_GUEST/logs/console.log") ))
  [ "$age" -le 5 ] && return 0
  for ((i = 0; i < 50; i++)); do [ "$(guest_heartbeat)" != "$hb0" ] && return 0; sleep 0.1; done
  return 1
}
check "guest heartbeat" "last $(guest_heartbeat)" hb_ok
# the simulated ESXi host: our vcsim (pid file + argv checked by vcsim.sh), in its namespace, and
# its SOAP endpoint answering from the root namespace (where the controller runs)
vcsim_pid=$(sed -n 's/^  "pid": \([0-9]*\),$/\1/p' "$VCSIM_ESX_ENV" 2>/dev/null)
check "vcsim $ESX_NAME" "pid ${vcsim_pid:-none}, $VCSIM_ESX_ENV" \
  env LAB_DIR="$LAB_DIR" bash "$LAB_SRC/vcsim/vcsim.sh" status "$VCSIM_ESX_ENV"
# shellcheck disable=SC2317  # esx_ns_ok is called through check()
esx_ns_ok() { [ -n "$vcsim_pid" ] && [ "$(readlink "/proc/$vcsim_pid/ns/net")" = "$(ip netns exec "$NS_ESX" readlink /proc/self/ns/net)" ]; }
check "vcsim in netns $NS_ESX" "" esx_ns_ok
check "https://$ESX_MGMT_ADDR/sdk" "vimServiceVersions.xml" \
  timeout 10 "$SYS_PY" -c 'import http.client, json, ssl, sys
e = json.load(open(sys.argv[1]))
c = http.client.HTTPSConnection(sys.argv[2], e["port"], timeout=5, context=ssl.create_default_context(cadata=e["cert_pem"]))
c.request("GET", "/sdk/vimServiceVersions.xml")
sys.exit(c.getresponse().status != 200)
' "$VCSIM_ESX_ENV" "$ESX_MGMT_ADDR"
check "esx shell sshd" "$LAB_HOSTS/esx" bash "$LAB_SRC/esxi-shell/sshd.sh" status "$LAB_HOSTS/esx"
check "lab.json" "$LAB_DIR/lab.json" test -s "$LAB_DIR/lab.json"

if [ $FAILS = 0 ]; then
  [ $QUIET = 1 ] || echo "lab is UP"
  exit 0
fi
[ $QUIET = 1 ] || echo "lab is NOT healthy ($FAILS problems)"
exit 1
