#!/usr/bin/env bash
# up.sh - bring the whole dfir.vmcollect test lab up (one command, idempotent).
#
#   bash lab/up.sh            LAB_DIR defaults to /var/tmp/vmcollect-lab
#   FORCE=1 bash lab/up.sh    tear down and bring up again even if the lab is up and healthy
#   FORCE=1 REBUILD=1 bash lab/up.sh   ... and rebuild the guest even if its inputs did not change
#   LAB_FAIL_AFTER=<step function> bash lab/up.sh   fail on purpose after that step (tests of a
#                                                   half-failed up: down.sh must still clean up)
#
# If the lab is already up and healthy (lab/status.sh) this is a quick no-op. Otherwise it first
# runs down.sh (cleans a partial or broken lab), then: builds the guest (cached) and the vSphere
# simulator (lab/vcsim/build.sh, cached), creates the namespaces and veths, SSH keys and configs,
# starts the two SSH hosts (sshd; on the KVM host also virtlogd + libvirtd) and the simulated ESXi
# host (vcsim in its namespace, https://10.213.0.10/sdk, env file $LAB_DIR/run/vcsim-esx.json),
# defines and boots the guest through that libvirtd, and writes
# $LAB_DIR/{ansible.cfg,inventory.ini,lab.json} and $LAB_DIR/ssh/{id_ed25519,known_hosts,ssh_config}.
# Each step logs to $LAB_DIR/logs/up-<step>.log; a failing step prints the tail of its log.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" = 0 ] || lab_die "up.sh must run as root"
T_START=$(now)

step() {  # step "label" function
  local label=$1 fn=$2 t0 rc log=$LAB_LOGS/up-$2.log
  t0=$(now)
  set +e
  ( set -eEuo pipefail
    trap 'echo "step $fn failed (rc=$?) at line $LINENO: $BASH_COMMAND" >&2' ERR
    "$fn"
    if [ "${LAB_FAIL_AFTER:-}" = "$fn" ]; then echo "LAB_FAIL_AFTER=$fn: failing on purpose"; exit 97; fi
  ) > "$log" 2>&1
  rc=$?
  set -e
  printf '  %-30s %6ss%s\n' "$label" "$(elapsed "$t0")" "$([ $rc = 0 ] || echo "  FAILED rc=$rc")" | tee -a "$LAB_LOGS/timings.txt"
  if [ $rc != 0 ]; then
    echo "--- last lines of $log:" >&2
    tail -n 25 "$log" >&2
    echo "--- up.sh FAILED at step '$label'. The lab is partially up: run 'bash $LAB_SRC/down.sh' to clean up (up.sh does it too before retrying)." >&2
    exit 1
  fi
}

# ---- steps -----------------------------------------------------------------------------------
preflight() {
  local t missing="" foreign
  for t in ip virsh qemu-img qemu-system-x86_64 sshd ssh ssh-keygen unshare setsid sfdisk mkfs.ext4 \
           debugfs dpkg-deb apt-get gzip "$SYS_PY" /usr/sbin/libvirtd /usr/sbin/virtlogd nsenter; do
    command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
  done
  # the simulated ESXi host: built from Debian's govmomi (golang-go golang-github-vmware-govmomi-dev)
  if [ ! -x "$LAB_DIR/bin/vcsim" ]; then
    command -v go >/dev/null 2>&1 || missing="$missing go"
    [ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ] || missing="$missing govmomi-sources"
  fi
  [ -z "$missing" ] || { echo "missing programs:$missing"; return 1; }
  # its storage (software iSCSI, VMFS datastores) degrades to "no LUN" without these: say so
  for t in iscsi-ls iscsi-inq iscsi-readcapacity16 qemu-storage-daemon sfdisk; do
    command -v "$t" >/dev/null 2>&1 || echo "WARNING: $t missing: the ESXi host's software iSCSI finds no LUN"
  done
  foreign=$(foreign_daemons)
  if [ -n "$foreign" ]; then
    echo "a libvirtd/virtlogd NOT started by the lab is running on this machine:"
    echo "$foreign"
    echo "The lab runs its own libvirtd inside the $NS_KVM namespace and would fight over /run/libvirt."
    echo "Stop it first (the lab does not kill processes it did not start)."
    return 1
  fi
  if [ -S /run/libvirt/libvirt-sock ] && timeout 5 "${VIRSH[@]}" version >/dev/null 2>&1; then
    echo "something answers on /run/libvirt/libvirt-sock and it is not the lab's libvirtd: stop it first"
    return 1
  fi
  for t in $LAB_NSS; do
    ! ns_exists "$t" || { echo "network namespace $t still exists after down.sh"; return 1; }
  done
  for t in $LAB_VETHS; do
    ! ip link show "$t" >/dev/null 2>&1 || { echo "link $t still exists after down.sh"; return 1; }
  done
  if ip -4 -o addr show | grep -F " $LAB_NET_PREFIX" ; then
    echo "addresses in ${LAB_NET_PREFIX}0.0/16 are already configured in the root namespace"
    return 1
  fi
  echo "preflight ok"
}

build_guest() {
  bash "$LAB_SRC/build_guest.sh"
}

network() {
  record_created_path /run/netns
  local ns
  for ns in $LAB_NSS; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  # NB: "name" is needed: "ip link add X type veth" parses X as an address
  ip link add name "$VETH_KVM" type veth peer name mgmt0 netns "$NS_KVM"
  ip link add name "$VETH_COLL" type veth peer name mgmt0 netns "$NS_COLL"
  ip link add name "$VETH_ESX" type veth peer name mgmt0 netns "$NS_ESX"
  ip -n "$NS_COLL" link add name stor0 type veth peer name stor0 netns "$NS_KVM"
  ip -n "$NS_COLL" link add name stor1 type veth peer name stor0 netns "$NS_ESX"   # the ESXi host's storage link
  ip addr add "$KVM_PEER_ADDR/30" dev "$VETH_KVM"
  ip addr add "$COLL_PEER_ADDR/30" dev "$VETH_COLL"
  ip addr add "$ESX_PEER_ADDR/30" dev "$VETH_ESX"
  ip -n "$NS_KVM" addr add "$KVM_MGMT_ADDR/30" dev mgmt0
  ip -n "$NS_COLL" addr add "$COLL_MGMT_ADDR/30" dev mgmt0
  ip -n "$NS_ESX" addr add "$ESX_MGMT_ADDR/30" dev mgmt0
  ip -n "$NS_KVM" addr add "$KVM_STOR_ADDR/30" dev stor0
  ip -n "$NS_COLL" addr add "$COLL_STOR_ADDR/30" dev stor0
  ip -n "$NS_COLL" addr add "$COLL_ESX_STOR_ADDR/30" dev stor1
  ip -n "$NS_ESX" addr add "$ESX_STOR_ADDR/30" dev stor0
  for ns in $LAB_VETHS; do ip link set "$ns" up; done
  for ns in $LAB_NSS; do
    ip -n "$ns" link set mgmt0 up
    ip -n "$ns" link set stor0 up
  done
  ip -n "$NS_COLL" link set stor1 up
  for ns in $LAB_NSS; do ip -n "$ns" -br addr; done
  for ns in $LAB_VETHS; do ip -br addr show dev "$ns"; done
}

ssh_setup() {
  local role addr h
  mkdir -p "$LAB_SSH" "$LAB_RUN"
  record_created_path /run/sshd      # sshd's privilege separation folder (sshd -t needs it too)
  [ -d /run/sshd ] || mkdir -m 0755 /run/sshd
  chmod 0700 "$LAB_SSH"
  [ -s "$LAB_SSH/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C vmcollect-lab-controller -f "$LAB_SSH/id_ed25519"
  cp "$LAB_SSH/id_ed25519.pub" "$LAB_SSH/authorized_keys"
  : > "$LAB_SSH/known_hosts.tmp"
  for role in kvm coll; do
    h=$LAB_HOSTS/$role
    if [ $role = kvm ]; then addr=$KVM_MGMT_ADDR; else addr=$COLL_MGMT_ADDR; fi
    mkdir -p "$h"
    [ -s "$h/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "vmc-$role-hostkey" -f "$h/ssh_host_ed25519_key"
    echo "$addr $(cut -d' ' -f1,2 "$h/ssh_host_ed25519_key.pub")" >> "$LAB_SSH/known_hosts.tmp"
    cat > "$h/sshd_config" <<EOF
# sshd of lab host $role (generated by lab/up.sh)
ListenAddress $addr
Port 22
HostKey $h/ssh_host_ed25519_key
PidFile $LAB_RUN/lab-sshd-$role.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile $LAB_SSH/authorized_keys
# the lab folder may live under a world-writable /var/tmp
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
PrintLastLog no
MaxStartups 50:30:100
MaxSessions 50
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
    /usr/sbin/sshd -t -f "$h/sshd_config"
  done
  mv "$LAB_SSH/known_hosts.tmp" "$LAB_SSH/known_hosts"
  cat > "$LAB_SSH/ssh_config" <<EOF
# ssh -F $LAB_SSH/ssh_config root@$KVM_MGMT_ADDR   (generated by lab/up.sh)
Host kvm1 $NS_KVM
  HostName $KVM_MGMT_ADDR
Host collector1 $NS_COLL
  HostName $COLL_MGMT_ADDR
Host $ESX_NAME $NS_ESX
  HostName $ESX_MGMT_ADDR
Host *
  User root
  IdentityFile $LAB_SSH/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $LAB_SSH/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  BatchMode yes
  ConnectTimeout 10
  ServerAliveInterval 15
  LogLevel ERROR
EOF
  chmod 0600 "$LAB_SSH/id_ed25519"
  chmod 0644 "$LAB_SSH/known_hosts" "$LAB_SSH/ssh_config" "$LAB_SSH/authorized_keys"
  cat "$LAB_SSH/known_hosts"
}

# Private libvirt folders of the KVM host that host-init.sh binds over the real ones inside its
# mount namespace: a copy of /etc/libvirt without network definitions (libvirtd writes domain,
# secret, nwfilter... configs there), and empty state/log/cache folders with the owner/mode of
# the machine's.
kvm_state_dirs() {
  local h=$LAB_HOSTS/kvm src dst d
  rm -rf "$h/etc-libvirt" "$h/var-lib-libvirt" "$h/var-log-libvirt"
  mkdir -p "$h"
  cp -a /etc/libvirt "$h/etc-libvirt"
  rm -rf "$h/etc-libvirt/qemu/networks"/* "$h/etc-libvirt/qemu"/*.xml
  # host-init.sh hides /dev/kvm behind a bind mount (see there); libvirt's per-domain /dev
  # namespace cannot carry that mount into QEMU's private /dev, so QEMU uses the host's /dev.
  printf '\n# dfir.vmcollect lab (lab/up.sh): no private /dev for QEMU (see host-init.sh)\nnamespaces = []\n' \
    >> "$h/etc-libvirt/qemu.conf"
  # the cache (QEMU capabilities) is kept between runs: probing the emulators takes ~1 min
  for pair in /var/lib/libvirt:$h/var-lib-libvirt \
              /var/log/libvirt:$h/var-log-libvirt /var/cache/libvirt:$LAB_CACHE/libvirt; do
    src=${pair%%:*}; dst=${pair#*:}
    [ -d "$src" ] || { echo "$src missing (libvirt-daemon-system installed?)"; return 1; }
    mkdir -p "$dst"
    chown --reference="$src" "$dst"; chmod --reference="$src" "$dst"
    # sub-folders of the package layout, except the network definitions (no `default` network)
    (cd "$src" && find . -mindepth 1 -type d ! -path './networks' ! -path './networks/*' -printf '%P\n') |
      while read -r d; do
        mkdir -p "$dst/$d"
        chown --reference="$src/$d" "$dst/$d"; chmod --reference="$src/$d" "$dst/$d"
      done
  done
  find "$h" "$LAB_CACHE/libvirt" -maxdepth 2 -type d -printf '%M %u %p\n'
}

wait_tcp() {  # addr port tenths
  local i
  for ((i = 0; i < $3; i++)); do
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1:$2"; return 1
}

start_hosts() {
  record_created_path /run/libvirt   # created by virtlogd/libvirtd
  record_created_path /run/tgtd      # created by a tgtd the modules may start in the lab
  record_created_path /run/mount     # libmount's lock/utab folder (mount/umount in the hosts)
  mkdir -p "$LAB_RUN"
  local role ns addr
  for role in coll kvm; do
    if [ $role = kvm ]; then ns=$NS_KVM addr=$KVM_MGMT_ADDR; else ns=$NS_COLL addr=$COLL_MGMT_ADDR; fi
    setsid ip netns exec "$ns" unshare --uts -- bash "$LAB_SRC/host-init.sh" "$role" \
      > "$LAB_LOGS/host-$role.log" 2>&1 < /dev/null &
    echo $! > "$LAB_RUN/lab-host-$role.pid"
    echo "host $role: launched pid $!"
  done
  for role in coll kvm; do
    if [ $role = kvm ]; then addr=$KVM_MGMT_ADDR; else addr=$COLL_MGMT_ADDR; fi
    wait_tcp "$addr" 22 150 || { cat "$LAB_LOGS/host-$role.log"; return 1; }
    echo "sshd $role listening on $addr:22 (pid $(cat "$LAB_RUN/lab-sshd-$role.pid" 2>/dev/null))"
  done
  local i
  for ((i = 0; i < 300; i++)); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.1; done
  # the first start probes the QEMU binaries (~1 min per binary here, cached afterwards)
  timeout 400 "${VIRSH[@]}" version || { cat "$LAB_LOGS/host-kvm.log"; tail -20 "$LAB_LOGS/libvirtd.log" 2>/dev/null; return 1; }
  echo "virtlogd pid $(cat "$LAB_RUN/lab-virtlogd.pid"), libvirtd pid $(cat "$LAB_RUN/lab-libvirtd.pid")"
  # libvirtd must live in the KVM host's namespaces
  [ "$(readlink "/proc/$(cat "$LAB_RUN/lab-libvirtd.pid")/ns/net")" = "$(ip netns exec "$NS_KVM" readlink /proc/self/ns/net)" ] \
    || { echo "libvirtd is not in netns $NS_KVM"; return 1; }
  "${VIRSH[@]}" net-list --all
}

# ==== hook for the simulator's VM extension (lab/vcsim: disk.go, ram_image.sh; other developer) ====
# ram_image.sh (when present) builds and caches the RAM image the simulated VMs' memory snapshots
# serve; it prints the image's path on its last line, for vcsim's -ram-image flag. That flag (and
# any other the VM extension documents) goes to vcsim in VCSIM_ARGS, only if the built binary
# knows it. LAB_VCSIM_ARGS adds flags by hand (e.g. "-vm 3").
vcsim_vm_args() {
  local args=${LAB_VCSIM_ARGS:-} img="" knows=0 usage
  usage=$("$LAB_DIR/bin/vcsim" -h 2>&1 || true)
  [[ $usage == *"-ram-image"* ]] && knows=1
  if [ -f "$LAB_SRC/vcsim/ram_image.sh" ]; then
    if ! img=$(LAB_DIR="$LAB_DIR" bash "$LAB_SRC/vcsim/ram_image.sh" | tail -n 1); then
      [ $knows = 0 ] || { echo "lab/vcsim/ram_image.sh failed" >&2; return 1; }
      echo "WARNING: lab/vcsim/ram_image.sh failed (vcsim does not use its image yet: going on)" >&2
      img=""
    fi
    # the lab VMs with real content (lab/vcsim/BEHAVIOUR-vms.md), whose memory snapshots serve that image
    if [ -n "$img" ] && [ $knows = 1 ]; then args="$args -lab-vms -ram-image $img"; fi
  fi
  echo "$args"
}
# ===================================================================================================

vcsim_build() {
  LAB_DIR="$LAB_DIR" bash "$LAB_SRC/vcsim/build.sh"
}

# The simulated ESXi host "esx1": vcsim in its own network namespace on its management address,
# port 443 (the TLS certificate covers that IP), reachable from the root namespace over vmc-esx0.
esx_start() {
  local args
  args=$(vcsim_vm_args)
  echo "VCSIM_ARGS=$args"
  LAB_DIR="$LAB_DIR" VCSIM_NETNS="$NS_ESX" VCSIM_LISTEN="$ESX_MGMT_ADDR:$ESX_VCSIM_PORT" VCSIM_ARGS="$args" \
    bash "$LAB_SRC/vcsim/vcsim.sh" start "$VCSIM_ESX_ENV"
  wait_tcp "$ESX_MGMT_ADDR" "$ESX_VCSIM_PORT" 50   # from the root namespace, as the controller reaches it
  "$SYS_PY" -c 'import json, sys; e = json.load(open(sys.argv[1])); s = e["lab"]["storage"]
print(e["url"], e["mode"], "storage ready:", s["ready"], "missing:", s["missing"], s["hosts"])' "$VCSIM_ESX_ENV"
}

guest_start() {
  local B=$LAB_GUEST/build I=$LAB_GUEST/images L=$LAB_GUEST/logs i
  mkdir -p "$I" "$L" "$LAB_DIR/work"
  # QEMU runs as libvirt-qemu: it must be able to write its own files (pmemsave, ...) here
  chmod 1777 "$I" "$L" "$LAB_DIR/work"
  rm -rf "${I:?}"/* "$L/console.log" "${LAB_DIR:?}/work"/*   # fresh disks + empty work folder per run
  cp "$B/vmlinuz" "$B/initrd.gz" "$I/"
  cp --sparse=always "$B/vda.qcow2" "$B/vdb.raw" "$I/"
  cp "$B/$GUEST_NAME.xml" "$LAB_GUEST/$GUEST_NAME.xml"
  "${VIRSH[@]}" define "$LAB_GUEST/$GUEST_NAME.xml"
  "${VIRSH[@]}" start "$GUEST_NAME"
  for ((i = 0; i < 1800; i++)); do
    grep -q -a 'LAB-INIT-DONE' "$L/console.log" 2>/dev/null && break
    "${VIRSH[@]}" domstate "$GUEST_NAME" 2>/dev/null | grep -q running || { echo "guest stopped"; break; }
    sleep 0.1
  done
  grep -a '^LAB-' "$L/console.log" || true
  grep -q -a 'LAB-INIT-DONE' "$L/console.log" || {
    echo "guest did not reach LAB-INIT-DONE; console tail:"; tail -30 "$L/console.log" 2>/dev/null
    tail -20 "$LAB_HOSTS/kvm/var-log-libvirt/qemu/$GUEST_NAME.log" 2>/dev/null; return 1; }
  grep -q -a 'LAB-DISK-WRITTEN /dev/vda ' "$L/console.log" || { echo "guest did not write the vda marker"; return 1; }
  grep -q -a 'LAB-DISK-WRITTEN /dev/vdb ' "$L/console.log" || { echo "guest did not write the vdb marker"; return 1; }
  grep -a -o -m1 'LAB-MARKER=FORENSIC-MARKER-[0-9a-f]*' "$L/console.log" | cut -d= -f2 > "$LAB_STATE/guest-marker"
  [ -s "$LAB_STATE/guest-marker" ] || { echo "no marker on the console"; return 1; }
  echo "marker: $(cat "$LAB_STATE/guest-marker")"
  "${VIRSH[@]}" domblklist "$GUEST_NAME" --details
}

ssh_check() {
  local addr want got
  for addr in $KVM_MGMT_ADDR $COLL_MGMT_ADDR; do
    if [ "$addr" = "$KVM_MGMT_ADDR" ]; then want=$NS_KVM; else want=$NS_COLL; fi
    got=$(ssh -F "$LAB_SSH/ssh_config" "root@$addr" hostname)
    echo "$addr -> $got"
    [ "$got" = "$want" ] || { echo "expected hostname $want"; return 1; }
  done
  ssh -F "$LAB_SSH/ssh_config" "root@$KVM_MGMT_ADDR" "virsh -c $LIBVIRT_URI domstate $GUEST_NAME" | grep -q running
}

# The simulated ESXi host's shell over SSH (lab/esxi-shell, a LAB EMULATOR): an sshd in its namespace on its
# management address, whose vim-cmd/vmkfstools/esxcli/partedUtil act on the simulator. Its host key is made once in
# $LAB_HOSTS/esx and added to the lab's known_hosts; root logs in with the lab's key.
esx_shell_start() {
  ESXI_SHELL_ENV_FILE="$VCSIM_ESX_ENV" ESXI_SHELL_AUTHORIZED_KEYS="$LAB_SSH/id_ed25519.pub" \
    ESXI_SHELL_NETNS="$NS_ESX" ESXI_SHELL_LISTEN="$ESX_MGMT_ADDR:22" \
    bash "$LAB_SRC/esxi-shell/sshd.sh" start "$LAB_HOSTS/esx"
  grep -v "^$ESX_MGMT_ADDR " "$LAB_SSH/known_hosts" > "$LAB_SSH/known_hosts.tmp" || true
  cat "$LAB_HOSTS/esx/known_hosts" >> "$LAB_SSH/known_hosts.tmp"
  mv "$LAB_SSH/known_hosts.tmp" "$LAB_SSH/known_hosts"
  chmod 0644 "$LAB_SSH/known_hosts"
  local got
  got=$(ssh -F "$LAB_SSH/ssh_config" "root@$ESX_NAME" vim-cmd vmsvc/getallvms | head -1)
  case "$got" in Vmid*) echo "esx shell answers: $got" ;; *) echo "esx shell: unexpected answer: $got"; return 1 ;; esac
}

write_configs() {
  local marker A=$LAB_DIR/ansible esx_iqn
  marker=$(cat "$LAB_STATE/guest-marker")
  esx_iqn=$("$SYS_PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["lab"]["storage"]["hosts"][0]["iscsi_name"])' "$VCSIM_ESX_ENV")
  # the simulator's lab login and its certificate (a copy that outlives its run folder), for the inventory
  esx_user=$("$SYS_PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["username"])' "$VCSIM_ESX_ENV")
  esx_password=$("$SYS_PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["password"])' "$VCSIM_ESX_ENV")
  esx_cert=$LAB_DIR/ssh/esx1-ca.pem
  "$SYS_PY" -c 'import json, sys; open(sys.argv[2], "w").write(json.load(open(sys.argv[1]))["cert_pem"])' "$VCSIM_ESX_ENV" "$esx_cert"
  mkdir -p "$A/cp" "$A/local-tmp" "$A/remote-tmp"
  cat > "$LAB_DIR/ansible.cfg" <<EOF
# Ansible settings for the dfir.vmcollect lab (generated by lab/up.sh).
# Use: ANSIBLE_CONFIG=$LAB_DIR/ansible.cfg ANSIBLE_COLLECTIONS_PATH=... ansible-playbook ...
[defaults]
inventory = $LAB_DIR/inventory.ini
host_key_checking = True
retry_files_enabled = False
local_tmp = $A/local-tmp
remote_tmp = $A/remote-tmp
interpreter_python = /usr/bin/python3

[ssh_connection]
ssh_common_args = -F $LAB_SSH/ssh_config
control_path_dir = $A/cp
pipelining = True
EOF
  cat > "$LAB_DIR/inventory.ini" <<EOF
# dfir.vmcollect lab inventory (generated by lab/up.sh)
[kvm_hosts]
kvm1 ansible_host=$KVM_MGMT_ADDR lab_netns=$NS_KVM lab_hostname=$NS_KVM storage_address=$KVM_STOR_ADDR storage_peer_address=$COLL_STOR_ADDR vmcollect_storage_address=$KVM_STOR_ADDR

# the simulated ESXi host, reached through its API from this controller (playbooks/acquire_esxi.yml)
[esxi_hosts]
$ESX_NAME ansible_host=$ESX_MGMT_ADDR ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}" esxi_acquire_username=$esx_user esxi_acquire_password=$esx_password esxi_acquire_ca_file=$esx_cert esxi_acquire_ssh_username=root esxi_acquire_ssh_known_hosts=$LAB_SSH/known_hosts esxi_acquire_ssh_private_key_file=$LAB_SSH/id_ed25519 vmcollect_storage_address=$ESX_STOR_ADDR vmcollect_initiator_iqn=$esx_iqn vmcollect_collector_address=$COLL_ESX_STOR_ADDR

[collectors]
collector1 ansible_host=$COLL_MGMT_ADDR lab_netns=$NS_COLL lab_hostname=$NS_COLL storage_address=$COLL_STOR_ADDR storage_peer_address=$KVM_STOR_ADDR vmcollect_storage_address=$COLL_STOR_ADDR esx_storage_address=$COLL_ESX_STOR_ADDR esx_storage_peer_address=$ESX_STOR_ADDR

[all:vars]
ansible_user=root
# root's PATH has pyenv shims that break over SSH: use Debian's python
ansible_python_interpreter=/usr/bin/python3
lab_dir=$LAB_DIR
lab_json=$LAB_DIR/lab.json
lab_work_dir=$LAB_DIR/work
lab_guest=$GUEST_NAME
lab_libvirt_uri=$LIBVIRT_URI
lab_kvm_storage_address=$KVM_STOR_ADDR
lab_collector_storage_address=$COLL_STOR_ADDR
# the simulated ESXi host $ESX_NAME (vcsim; its shell over SSH is lab/esxi-shell); its API: lab_esx_url
lab_esx_netns=$NS_ESX
lab_esx_mgmt_address=$ESX_MGMT_ADDR
lab_esx_url=https://$ESX_MGMT_ADDR/sdk
lab_esx_vcsim_env=$VCSIM_ESX_ENV
lab_esx_storage_address=$ESX_STOR_ADDR
lab_collector_esx_storage_address=$COLL_ESX_STOR_ADDR
lab_esx_iscsi_name=$esx_iqn
EOF
  # shellcheck disable=SC1091
  . "$LAB_GUEST/build/guest.env"
  local I=$LAB_GUEST/images
  "$SYS_PY" "$LAB_SRC/labtool.py" labjson "$LAB_DIR/lab.json" \
    "lab_dir=$LAB_DIR" "work_dir=$LAB_DIR/work" "ansible_cfg=$LAB_DIR/ansible.cfg" \
    "inventory=$LAB_DIR/inventory.ini" "libvirt_uri=$LIBVIRT_URI" \
    "ssh.config=$LAB_SSH/ssh_config" "ssh.identity=$LAB_SSH/id_ed25519" "ssh.known_hosts=$LAB_SSH/known_hosts" \
    "hosts.0.name=kvm1" "hosts.0.group=kvm_hosts" "hosts.0.hostname=$NS_KVM" "hosts.0.netns=$NS_KVM" \
    "hosts.0.mgmt_address=$KVM_MGMT_ADDR" "hosts.0.mgmt_peer_address=$KVM_PEER_ADDR" \
    "hosts.0.storage_address=$KVM_STOR_ADDR" "hosts.0.storage_peer_address=$COLL_STOR_ADDR" \
    "hosts.1.name=collector1" "hosts.1.group=collectors" "hosts.1.hostname=$NS_COLL" "hosts.1.netns=$NS_COLL" \
    "hosts.1.mgmt_address=$COLL_MGMT_ADDR" "hosts.1.mgmt_peer_address=$COLL_PEER_ADDR" \
    "hosts.1.storage_address=$COLL_STOR_ADDR" "hosts.1.storage_peer_address=$KVM_STOR_ADDR" \
    "hosts.1.esx_storage_address=$COLL_ESX_STOR_ADDR" "hosts.1.esx_storage_peer_address=$ESX_STOR_ADDR" \
    "esxi_hosts.0.name=$ESX_NAME" "esxi_hosts.0.netns=$NS_ESX" "esxi_hosts.0.mgmt_address=$ESX_MGMT_ADDR" \
    "esxi_hosts.0.mgmt_peer_address=$ESX_PEER_ADDR" "esxi_hosts.0.port=$ESX_VCSIM_PORT" \
    "esxi_hosts.0.url=https://$ESX_MGMT_ADDR/sdk" "esxi_hosts.0.vcsim_env=$VCSIM_ESX_ENV" \
    "esxi_hosts.0.storage_address=$ESX_STOR_ADDR" "esxi_hosts.0.storage_peer_address=$COLL_ESX_STOR_ADDR" \
    "esxi_hosts.0.iscsi_adapter=vmhba64" "esxi_hosts.0.iscsi_name=$esx_iqn" \
    "esxi_hosts.0.ssh.port=22" "esxi_hosts.0.ssh.known_hosts=$LAB_SSH/known_hosts" \
    "esxi_hosts.0.ssh.host_key_fingerprint=$(cat "$LAB_HOSTS/esx/host_key.fingerprint")" \
    "esxi_hosts.0.ssh.state_dir=$LAB_HOSTS/esx" \
    "guest.name=$GUEST_NAME" "guest.uuid=$GUEST_UUID" "guest.marker=$marker" \
    "guest.memory_mib=$GUEST_MEM_MIB" "guest.vcpus=1" "guest.virt_type=qemu" "guest.host=kvm1" \
    "guest.console_log=$LAB_GUEST/logs/console.log" "guest.known_files_sha256=$LAB_GUEST/known-files.sha256" \
    "guest.domain_xml=$LAB_GUEST/$GUEST_NAME.xml" "guest.kernel=$I/vmlinuz" "guest.initrd=$I/initrd.gz" \
    "guest.kernel_package=$KPKG" "guest.heartbeat_seconds=$HEARTBEAT_SECONDS" \
    "guest.disks.0.target=vda" "guest.disks.0.path=$I/vda.qcow2" "guest.disks.0.format=qcow2" \
    "guest.disks.0.virtual_size=$((VDA_MIB * 1048576))" "guest.disks.0.marker_offset=$VDA_MARK_OFFSET" \
    "guest.disks.0.marker_text=DISKMARK:$marker" "guest.disks.0.pristine=$LAB_GUEST/build/vda.qcow2" \
    "guest.disks.0.partition_table=dos" "guest.disks.0.partitions.0.number=1" \
    "guest.disks.0.partitions.0.start=$PART_START_BYTES" "guest.disks.0.partitions.0.size=$PART_SIZE_BYTES" \
    "guest.disks.0.partitions.0.fstype=ext4" "guest.disks.0.partitions.0.uuid=$FS_UUID" \
    "guest.disks.0.partitions.0.label=$FS_LABEL" \
    "guest.disks.1.target=vdb" "guest.disks.1.path=$I/vdb.raw" "guest.disks.1.format=raw" \
    "guest.disks.1.virtual_size=$((VDB_MIB * 1048576))" "guest.disks.1.marker_offset=$VDB_MARK_OFFSET" \
    "guest.disks.1.marker_text=DISKMARK2:$marker" "guest.disks.1.pristine=$LAB_GUEST/build/vdb.raw"
  cat "$LAB_DIR/lab.json"
}

# ---- main ------------------------------------------------------------------------------------
mkdir -p "$LAB_DIR" "$LAB_LOGS" "$LAB_RUN" "$LAB_STATE"
chmod 0755 "$LAB_DIR"
if [ "${FORCE:-0}" != 1 ] && bash "$LAB_SRC/status.sh" -q; then
  echo "lab already up and healthy ($LAB_DIR/lab.json) - nothing to do"
  exit 0
fi
echo "=== up.sh $(date -Is) LAB_DIR=$LAB_DIR" | tee -a "$LAB_LOGS/timings.txt"
cleanup_previous() { bash "$LAB_SRC/down.sh"; }
step "down.sh (previous state)"  cleanup_previous
mkdir -p "$LAB_LOGS" "$LAB_RUN" "$LAB_STATE"
step "preflight"                  preflight
step "guest build (cached)"       build_guest
step "vcsim build (cached)"       vcsim_build
step "namespaces + veths"         network
step "ssh keys + configs"         ssh_setup
step "kvm host libvirt folders"   kvm_state_dirs
step "start hosts (sshd/libvirt)" start_hosts
step "esx1 (vcsim) start"         esx_start
step "esx1 shell (sshd) start"    esx_shell_start
step "guest define + boot"        guest_start
step "ssh + hostname check"       ssh_check
step "ansible.cfg/inventory/json" write_configs
printf '  %-30s %6ss\n' "TOTAL up.sh" "$(elapsed "$T_START")" | tee -a "$LAB_LOGS/timings.txt"
echo "lab is up: $LAB_DIR/lab.json   ssh -F $LAB_SSH/ssh_config root@$KVM_MGMT_ADDR   ESXi: https://$ESX_MGMT_ADDR/sdk ($VCSIM_ESX_ENV)"
