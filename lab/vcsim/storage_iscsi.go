// HostStorageSystem of the lab's hosts: software iSCSI with real discovery and logins (see storage.go).
package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"log"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// labStorageSystem is a host's HostStorageSystem with the lab's software iSCSI adapter.
type labStorageSystem struct {
	simulator.HostStorageSystem // first field, by value (see wrapHost)

	hs *hostStorage
}

// chapConfig is one level of CHAP settings (adapter, or one send target). The secret never leaves it.
type chapConfig struct {
	enabled bool
	name    string
	secret  string
	level   string // chapProhibited, chapDiscouraged, chapPreferred, chapRequired
}

type sendTarget struct {
	address string
	port    int32
	auth    *chapConfig // nil: inherited from the adapter
}

func (st *sendTarget) portal() string {
	return net.JoinHostPort(st.address, strconv.Itoa(int(st.port)))
}

// iscsiLun is a disk LUN a rescan found (probe JSON of labstore.py) and the paths to it.
type iscsiLun struct {
	Lun             int32           `json:"lun"`
	Vendor          string          `json:"vendor"`
	Model           string          `json:"model"`
	Revision        string          `json:"revision"`
	AnsiVersion     int             `json:"ansi_version"`
	Serial          string          `json:"serial"`
	Blocks          int64           `json:"blocks"`
	BlockSize       int32           `json:"block_size"`
	Lbppbe          int             `json:"lbppbe"`
	StandardInquiry string          `json:"standard_inquiry"`
	Designators     []lunDesignator `json:"designators"`

	canonical string
	uuid      string
	paths     []lunPath
}

type lunDesignator struct {
	Type        string `json:"type"`
	CodeSet     int    `json:"code_set"`
	Association int    `json:"association"`
	Hex         string `json:"hex"`
	Text        string `json:"text"`
}

type lunPath struct {
	target     string // target IQN
	address    string
	port       int32
	tnum       int32
	lun        int32
	sendTarget string
	working    bool
}

func (p lunPath) name() string { return fmt.Sprintf("%s:C0:T%d:L%d", swIscsiDevice, p.tnum, p.lun) }

type probeResult struct {
	Portal    string `json:"portal"`
	Discovery string `json:"discovery"`
	Error     string `json:"error"`
	Targets   []struct {
		IQN    string      `json:"iqn"`
		Portal string      `json:"portal"`
		Login  string      `json:"login"`
		Error  string      `json:"error"`
		Luns   []*iscsiLun `json:"luns"`
	} `json:"targets"`
}

// -- the adapter as the API shows it ------------------------------------------------------------

const swIscsiHbaKey = "key-vim.host.InternetScsiHba-" + swIscsiDevice

func (c chapConfig) properties(inherited *bool) types.HostInternetScsiHbaAuthenticationProperties {
	level := c.level
	if !c.enabled || level == "" {
		level = string(types.HostInternetScsiHbaChapAuthenticationTypeChapProhibited)
	}
	return types.HostInternetScsiHbaAuthenticationProperties{
		ChapAuthEnabled:              c.enabled,
		ChapName:                     c.name,
		ChapAuthenticationType:       level, // ChapSecret is never returned, as on ESXi
		ChapInherited:                inherited,
		MutualChapAuthenticationType: string(types.HostInternetScsiHbaChapAuthenticationTypeChapProhibited),
		MutualChapInherited:          inherited,
	}
}

func (hs *hostStorage) sendTargetAuth(st *sendTarget) *types.HostInternetScsiHbaAuthenticationProperties {
	if st.auth == nil {
		p := hs.auth.properties(types.NewBool(true))
		return &p
	}
	p := st.auth.properties(types.NewBool(false))
	return &p
}

func (hs *hostStorage) adapter() *types.HostInternetScsiHba {
	digest := &types.HostInternetScsiHbaDigestProperties{
		HeaderDigestType: string(types.HostInternetScsiHbaDigestTypeDigestProhibited),
		DataDigestType:   string(types.HostInternetScsiHbaDigestTypeDigestProhibited),
	}
	hba := &types.HostInternetScsiHba{
		HostHostBusAdapter: types.HostHostBusAdapter{
			Key:    swIscsiHbaKey,
			Device: swIscsiDevice,
			Bus:    0,
			Status: "online",
			Model:  "iSCSI Software Adapter",
			Driver: "iscsi_vmk",
		},
		IsSoftwareBased:       true,
		CanBeDisabled:         types.NewBool(true),
		NetworkBindingSupport: types.HostInternetScsiHbaNetworkBindingSupportTypeOptional,
		DiscoveryCapabilities: types.HostInternetScsiHbaDiscoveryCapabilities{
			StaticTargetDiscoverySettable: false,
			SendTargetsDiscoverySettable:  false,
		},
		DiscoveryProperties: types.HostInternetScsiHbaDiscoveryProperties{
			StaticTargetDiscoveryEnabled: true,
			SendTargetsDiscoveryEnabled:  true,
		},
		AuthenticationCapabilities: types.HostInternetScsiHbaAuthenticationCapabilities{
			ChapAuthSettable:         true,
			MutualChapSettable:       types.NewBool(true),
			TargetChapSettable:       types.NewBool(true),
			TargetMutualChapSettable: types.NewBool(true),
		},
		AuthenticationProperties: hs.auth.properties(nil),
		DigestCapabilities: &types.HostInternetScsiHbaDigestCapabilities{
			HeaderDigestSettable:       types.NewBool(true),
			DataDigestSettable:         types.NewBool(true),
			TargetHeaderDigestSettable: types.NewBool(true),
			TargetDataDigestSettable:   types.NewBool(true),
		},
		DigestProperties: digest,
		IpCapabilities:   types.HostInternetScsiHbaIPCapabilities{},
		IpProperties:     types.HostInternetScsiHbaIPProperties{},
		IScsiName:        hs.iscsiName,
	}
	for _, st := range hs.sendTgts {
		hba.ConfiguredSendTarget = append(hba.ConfiguredSendTarget, types.HostInternetScsiHbaSendTarget{
			Address:                  st.address,
			Port:                     st.port,
			AuthenticationProperties: hs.sendTargetAuth(st),
		})
	}
	hba.ConfiguredStaticTarget = append(hba.ConfiguredStaticTarget, hs.statics...)
	return hba
}

func (hs *hostStorage) topologyInterface() types.HostScsiTopologyInterface {
	byTarget := map[int32]*types.HostScsiTopologyTarget{}
	for _, name := range hs.sortedLunNames() {
		l := hs.luns[name]
		for _, p := range l.paths {
			t := byTarget[p.tnum]
			if t == nil {
				t = &types.HostScsiTopologyTarget{
					Key:       fmt.Sprintf("key-vim.host.ScsiTopology.Target-%s:0:%d", swIscsiDevice, p.tnum),
					Target:    p.tnum,
					Transport: p.transport(),
				}
				byTarget[p.tnum] = t
			}
			t.Lun = append(t.Lun, types.HostScsiTopologyLun{
				Key:     "key-vim.host.ScsiTopology.Lun-" + l.uuid,
				Lun:     p.lun,
				ScsiLun: l.key(),
			})
		}
	}
	nums := make([]int, 0, len(byTarget))
	for n := range byTarget {
		nums = append(nums, int(n))
	}
	sort.Ints(nums)
	itf := types.HostScsiTopologyInterface{
		Key:     "key-vim.host.ScsiTopology.Interface-" + swIscsiDevice,
		Adapter: swIscsiHbaKey,
	}
	for _, n := range nums {
		itf.Target = append(itf.Target, *byTarget[int32(n)])
	}
	return itf
}

func (p lunPath) transport() *types.HostInternetScsiTargetTransport {
	return &types.HostInternetScsiTargetTransport{
		IScsiName: p.target,
		Address:   []string{net.JoinHostPort(p.address, strconv.Itoa(int(p.port)))},
	}
}

// -- LUN identity (what ESXi names a device) -----------------------------------------------------

// identify sets the canonical name (naa./eui./t10., as ESXi prefers them: an NAA designator of the
// logical unit, IEEE formats first, then EUI-64, then the T10 vendor ID) and a vml-like uuid.
func (l *iscsiLun) identify(fallback lunPath) {
	rank := map[byte]int{'6': 0, '5': 1, '2': 2, '3': 3}
	best, bestRank := "", 99
	eui, t10 := "", ""
	for _, d := range l.Designators {
		if d.Association != 0 {
			continue
		}
		switch d.Type {
		case "naa":
			if d.Hex == "" {
				continue
			}
			if r, ok := rank[d.Hex[0]]; ok && r < bestRank {
				best, bestRank = d.Hex, r
			}
		case "eui64":
			if eui == "" {
				eui = d.Hex
			}
		case "t10":
			if t10 == "" {
				t10 = strings.TrimRight(d.Text, "\x00")
			}
		}
	}
	modelHex := hex.EncodeToString([]byte(fmt.Sprintf("%-6.6s", l.Model)))
	switch {
	case best != "":
		l.canonical = "naa." + strings.ToLower(best)
		l.uuid = fmt.Sprintf("0200%02x0000%s%s", l.Lun&0xff, strings.ToLower(best), modelHex)
	case eui != "":
		l.canonical = "eui." + strings.ToLower(eui)
		l.uuid = fmt.Sprintf("0300%02x0000%s%s", l.Lun&0xff, strings.ToLower(eui), modelHex)
	case t10 != "":
		l.canonical = "t10." + strings.ReplaceAll(t10, " ", "_")
		l.uuid = fmt.Sprintf("0100%02x0000%s", l.Lun&0xff, hex.EncodeToString([]byte(t10)))
	default:
		l.canonical = "mpx." + fallback.name()
		l.uuid = fmt.Sprintf("0000%02x0000%s", l.Lun&0xff, hex.EncodeToString([]byte(fallback.name())))
	}
}

func (l *iscsiLun) key() string        { return "key-vim.host.ScsiDisk-" + l.uuid }
func (l *iscsiLun) devicePath() string { return "/vmfs/devices/disks/" + l.canonical }

func (l *iscsiLun) scsiDiskType() string {
	switch {
	case l.BlockSize == 4096:
		return "native4k"
	case l.BlockSize == 512 && l.Lbppbe > 0:
		return "emulated512"
	default:
		return "native512"
	}
}

// scsiDisk is the LUN as ESXi shows it. standardInquiry and durableName/alternateName stay empty:
// govmomi 0.24.2 writes a byte array as raw characters in one element, which no client can read.
func (l *iscsiLun) scsiDisk() *types.HostScsiDisk {
	vendor := strings.TrimSpace(l.Vendor)
	serial := l.Serial
	if serial == "" {
		serial = "unavailable"
	}
	return &types.HostScsiDisk{
		ScsiLun: types.ScsiLun{
			HostDevice: types.HostDevice{DeviceName: l.devicePath(), DeviceType: "disk"},
			Key:        l.key(),
			Uuid:       l.uuid,
			Descriptor: []types.ScsiLunDescriptor{
				{Quality: "highQuality", Id: l.canonical},
				{Quality: "highQuality", Id: "vml." + l.uuid},
				{Quality: "mediumQuality", Id: l.uuid},
			},
			CanonicalName:    l.canonical,
			DisplayName:      fmt.Sprintf("%s iSCSI Disk (%s)", vendor, l.canonical),
			LunType:          "disk",
			Vendor:           l.Vendor,
			Model:            l.Model,
			Revision:         l.Revision,
			ScsiLevel:        int32(l.AnsiVersion),
			SerialNumber:     serial,
			QueueDepth:       128,
			OperationalState: []string{"ok"},
			Capabilities:     &types.ScsiLunCapabilities{UpdateDisplayNameSupported: true},
			VStorageSupport:  "vStorageUnknown",
			ProtocolEndpoint: types.NewBool(false),
		},
		Capacity:              types.HostDiskDimensionsLba{BlockSize: l.BlockSize, Block: l.Blocks},
		DevicePath:            l.devicePath(),
		Ssd:                   types.NewBool(false),
		LocalDisk:             types.NewBool(false),
		EmulatedDIXDIFEnabled: types.NewBool(false),
		ScsiDiskType:          l.scsiDiskType(),
	}
}

func (l *iscsiLun) multipath() types.HostMultipathInfoLogicalUnit {
	luKey := "key-vim.host.MultipathInfo.LogicalUnit-" + l.uuid
	lu := types.HostMultipathInfoLogicalUnit{
		Key:                    luKey,
		Id:                     l.uuid,
		Lun:                    l.key(),
		StorageArrayTypePolicy: &types.HostMultipathInfoLogicalUnitStorageArrayTypePolicy{Policy: "VMW_SATP_DEFAULT_AA"},
	}
	prefer := ""
	for _, p := range l.paths {
		state := "active"
		if !p.working {
			state = "dead"
		} else if prefer == "" {
			prefer = p.name()
		}
		lu.Path = append(lu.Path, types.HostMultipathInfoPath{
			Key:           "key-vim.host.MultipathInfo.Path-" + p.name(),
			Name:          p.name(),
			PathState:     state,
			State:         state,
			IsWorkingPath: types.NewBool(p.working),
			Adapter:       swIscsiHbaKey,
			Lun:           luKey,
			Transport:     p.transport(),
		})
	}
	lu.Policy = &types.HostMultipathInfoFixedLogicalUnitPolicy{
		HostMultipathInfoLogicalUnitPolicy: types.HostMultipathInfoLogicalUnitPolicy{Policy: "VMW_PSP_FIXED"},
		Prefer:                             prefer,
	}
	return lu
}

// -- rescan ---------------------------------------------------------------------------------------

// effectiveAuth is the CHAP a send target's sessions use.
func (hs *hostStorage) effectiveAuth(st *sendTarget) chapConfig {
	if st.auth != nil {
		return *st.auth
	}
	return hs.auth
}

func (hs *hostStorage) targetNumber(iqn string) int32 {
	n, ok := hs.targetNum[iqn]
	if !ok {
		n = int32(len(hs.targetNum))
		hs.targetNum[iqn] = n
	}
	return n
}

// rescan does, for every send target, a real SendTargets discovery and a login to each target it
// offers, as this adapter's IQN with its CHAP; what answers becomes the adapter's LUNs. A failed
// discovery or login leaves no LUN (and a line in the log), as on ESXi, whose rescan succeeds anyway.
func (hs *hostStorage) rescan() {
	if !hs.hba {
		return
	}
	t0 := time.Now()
	found := map[string]*iscsiLun{}
	var statics []types.HostInternetScsiHbaStaticTarget
	seenStatic := map[string]bool{}
	for _, st := range hs.sendTgts {
		auth := hs.effectiveAuth(st)
		args := []string{"probe", "--portal", st.portal(), "--initiator", hs.iscsiName}
		secret := ""
		if auth.enabled && auth.level != string(types.HostInternetScsiHbaChapAuthenticationTypeChapProhibited) && auth.name != "" {
			args = append(args, "--user", auth.name)
			secret = auth.secret
		}
		out, err := hs.lab.run(context.Background(), args, secret, 2*time.Minute)
		if err != nil {
			log.Printf("storage: %s rescan of send target %s: %v; no LUN from it", hs.host.Name, st.portal(), err)
			continue
		}
		var res probeResult
		if err = storageDecodeJSON(out, &res); err != nil {
			log.Printf("storage: %s rescan of send target %s: %v", hs.host.Name, st.portal(), err)
			continue
		}
		for _, t := range res.Targets {
			addr, portStr, err := net.SplitHostPort(t.Portal)
			if err != nil {
				addr, portStr = t.Portal, "3260"
			}
			port, _ := strconv.Atoi(portStr)
			key := t.IQN + "|" + t.Portal
			if !seenStatic[key] {
				seenStatic[key] = true
				inherit := hs.sendTargetAuth(st)
				statics = append(statics, types.HostInternetScsiHbaStaticTarget{
					Address: addr, Port: int32(port), IScsiName: t.IQN, DiscoveryMethod: "sendTargetMethod",
					Parent: st.portal(), AuthenticationProperties: inherit,
				})
			}
			tnum := hs.targetNumber(t.IQN)
			for _, l := range t.Luns {
				p := lunPath{target: t.IQN, address: addr, port: int32(port), tnum: tnum, lun: l.Lun,
					sendTarget: st.portal(), working: true}
				l.identify(p)
				have := found[l.canonical]
				if have == nil {
					have = l
					found[l.canonical] = l
				}
				dup := false
				for _, q := range have.paths {
					dup = dup || (q.target == p.target && q.address == p.address && q.port == p.port && q.lun == p.lun)
				}
				if !dup {
					have.paths = append(have.paths, p)
				}
			}
		}
	}
	// a LUN that holds a datastore stays (its paths dead if it no longer answers)
	for name, old := range hs.luns {
		if found[name] == nil && hs.datastoreUsing(name) != nil {
			kept := *old
			kept.paths = nil
			for _, p := range old.paths {
				p.working = false
				kept.paths = append(kept.paths, p)
			}
			found[name] = &kept
			log.Printf("storage: %s rescan: %s no longer answers but holds datastore %s: kept, paths dead",
				hs.host.Name, name, hs.datastoreUsing(name).name)
		}
	}
	for name := range hs.luns {
		if found[name] == nil {
			log.Printf("storage: %s rescan: device %s is gone", hs.host.Name, name)
		}
	}
	for name, l := range found {
		if hs.luns[name] == nil {
			log.Printf("storage: %s rescan: new device %s (%s %s, serial %q, %d x %d B) via %s",
				hs.host.Name, name, strings.TrimSpace(l.Vendor), strings.TrimSpace(l.Model), l.Serial, l.Blocks,
				l.BlockSize, l.paths[0].name())
		}
	}
	sort.Slice(statics, func(i, j int) bool {
		return statics[i].IScsiName+statics[i].Address < statics[j].IScsiName+statics[j].Address
	})
	hs.luns = found
	hs.statics = statics
	log.Printf("storage: %s rescan of %s: %d send target(s), %d device(s) (%.1f s)", hs.host.Name, swIscsiDevice,
		len(hs.sendTgts), len(found), time.Since(t0).Seconds())
}

// -- SOAP methods -----------------------------------------------------------------------------------

func badHba(device string) *soap.Fault {
	return simulator.Fault(fmt.Sprintf("no host bus adapter %q (software iSCSI: %s, once enabled)", device, swIscsiDevice),
		&types.NotFound{})
}

func storageInvalid(prop, msg string) *soap.Fault {
	return simulator.Fault(msg, &types.InvalidArgument{InvalidProperty: prop})
}

// checkIscsiDevice: the device must be the software adapter, once created.
func (hs *hostStorage) checkIscsiDevice(device string) *soap.Fault {
	if !hs.hba || device != swIscsiDevice {
		return badHba(device)
	}
	return nil
}

func (s *labStorageSystem) UpdateSoftwareInternetScsiEnabled(ctx *simulator.Context, req *types.UpdateSoftwareInternetScsiEnabled) soap.HasFault {
	hs := s.hs
	hs.do(ctx, func() {
		if req.Enabled && !hs.hba {
			hs.hba = true
			log.Printf("storage: %s: software iSCSI adapter %s created, iSCSI name %s", hs.host.Name, swIscsiDevice, hs.iscsiName)
		}
		if !req.Enabled && hs.swEnabled {
			log.Printf("storage: %s: software iSCSI disabled; as on ESXi this takes effect at the next reboot: %s stays",
				hs.host.Name, swIscsiDevice)
		}
		hs.swEnabled = req.Enabled
		hs.publish(ctx)
	})
	return &methods.UpdateSoftwareInternetScsiEnabledBody{Res: &types.UpdateSoftwareInternetScsiEnabledResponse{}}
}

var iscsiNameRe = regexp.MustCompile(`^(iqn\.[0-9]{4}-[0-9]{2}\.[A-Za-z0-9.-]+(:[^\s]+)?|eui\.[0-9A-Fa-f]{16}|naa\.([0-9A-Fa-f]{16}|[0-9A-Fa-f]{32}))$`)

func (s *labStorageSystem) UpdateInternetScsiName(ctx *simulator.Context, req *types.UpdateInternetScsiName) soap.HasFault {
	body := &methods.UpdateInternetScsiNameBody{}
	hs := s.hs
	hs.do(ctx, func() {
		if f := hs.checkIscsiDevice(req.IScsiHbaDevice); f != nil {
			body.Fault_ = f
			return
		}
		if len(req.IScsiName) > 223 || !iscsiNameRe.MatchString(req.IScsiName) {
			body.Fault_ = storageInvalid("iScsiName", fmt.Sprintf("%q is not an iSCSI name (iqn.yyyy-mm.naming-authority[:unique], eui. or naa.)", req.IScsiName))
			return
		}
		log.Printf("storage: %s: %s iSCSI name %s -> %s", hs.host.Name, swIscsiDevice, hs.iscsiName, req.IScsiName)
		hs.iscsiName = req.IScsiName
		hs.publish(ctx)
		body.Res = &types.UpdateInternetScsiNameResponse{}
	})
	return body
}

func normTarget(t types.HostInternetScsiHbaSendTarget) (string, int32, *soap.Fault) {
	addr := strings.TrimSpace(t.Address)
	if addr == "" || strings.ContainsAny(addr, " /,@%") {
		return "", 0, storageInvalid("address", fmt.Sprintf("send target address %q is not a host name or IP address", t.Address))
	}
	port := t.Port
	if port == 0 {
		port = 3260
	}
	if port < 1 || port > 65535 {
		return "", 0, storageInvalid("port", fmt.Sprintf("send target port %d is not a TCP port", t.Port))
	}
	return addr, port, nil
}

func (s *labStorageSystem) AddInternetScsiSendTargets(ctx *simulator.Context, req *types.AddInternetScsiSendTargets) soap.HasFault {
	body := &methods.AddInternetScsiSendTargetsBody{}
	hs := s.hs
	hs.do(ctx, func() {
		if f := hs.checkIscsiDevice(req.IScsiHbaDevice); f != nil {
			body.Fault_ = f
			return
		}
		for _, t := range req.Targets {
			if _, _, f := normTarget(t); f != nil {
				body.Fault_ = f
				return
			}
		}
		for _, t := range req.Targets {
			addr, port, _ := normTarget(t)
			if hs.findSendTarget(addr, port) >= 0 {
				continue
			}
			hs.sendTgts = append(hs.sendTgts, &sendTarget{address: addr, port: port})
			log.Printf("storage: %s: %s send target %s added (discovered on the next rescan)", hs.host.Name,
				swIscsiDevice, net.JoinHostPort(addr, strconv.Itoa(int(port))))
		}
		hs.publish(ctx)
		body.Res = &types.AddInternetScsiSendTargetsResponse{}
	})
	return body
}

func (hs *hostStorage) findSendTarget(addr string, port int32) int {
	for i, st := range hs.sendTgts {
		if st.address == addr && st.port == port {
			return i
		}
	}
	return -1
}

func (s *labStorageSystem) RemoveInternetScsiSendTargets(ctx *simulator.Context, req *types.RemoveInternetScsiSendTargets) soap.HasFault {
	body := &methods.RemoveInternetScsiSendTargetsBody{}
	hs := s.hs
	hs.do(ctx, func() {
		if f := hs.checkIscsiDevice(req.IScsiHbaDevice); f != nil {
			body.Fault_ = f
			return
		}
		for _, t := range req.Targets {
			addr, port, f := normTarget(t)
			if f != nil {
				body.Fault_ = f
				return
			}
			if hs.findSendTarget(addr, port) < 0 {
				body.Fault_ = simulator.Fault(fmt.Sprintf("no send target %s on %s", net.JoinHostPort(addr, strconv.Itoa(int(port))), swIscsiDevice),
					&types.NotFound{})
				return
			}
		}
		for _, t := range req.Targets {
			addr, port, _ := normTarget(t)
			i := hs.findSendTarget(addr, port)
			portal := hs.sendTgts[i].portal()
			hs.sendTgts = append(hs.sendTgts[:i:i], hs.sendTgts[i+1:]...)
			// the static targets it discovered go with it; its devices at the next rescan
			var keep []types.HostInternetScsiHbaStaticTarget
			for _, st := range hs.statics {
				if st.Parent != portal {
					keep = append(keep, st)
				}
			}
			hs.statics = keep
			log.Printf("storage: %s: %s send target %s removed (its devices go at the next rescan)", hs.host.Name,
				swIscsiDevice, portal)
		}
		hs.publish(ctx)
		body.Res = &types.RemoveInternetScsiSendTargetsResponse{}
	})
	return body
}

func (s *labStorageSystem) UpdateInternetScsiAuthenticationProperties(ctx *simulator.Context, req *types.UpdateInternetScsiAuthenticationProperties) soap.HasFault {
	body := &methods.UpdateInternetScsiAuthenticationPropertiesBody{}
	hs := s.hs
	hs.do(ctx, func() {
		if f := hs.checkIscsiDevice(req.IScsiHbaDevice); f != nil {
			body.Fault_ = f
			return
		}
		p := req.AuthenticationProperties
		prohibited := string(types.HostInternetScsiHbaChapAuthenticationTypeChapProhibited)
		switch p.ChapAuthenticationType {
		case "", prohibited, "chapDiscouraged", "chapPreferred", "chapRequired":
		default:
			body.Fault_ = storageInvalid("chapAuthenticationType", fmt.Sprintf("unknown CHAP level %q", p.ChapAuthenticationType))
			return
		}
		if (p.MutualChapAuthenticationType != "" && p.MutualChapAuthenticationType != prohibited) || p.MutualChapName != "" {
			body.Fault_ = simulator.Fault("lab: mutual CHAP is not simulated (the lab's initiators cannot check a target's secret)",
				&types.NotSupported{})
			return
		}
		if req.TargetSet != nil && len(req.TargetSet.StaticTargets) > 0 {
			body.Fault_ = simulator.Fault("lab: CHAP of static targets is not simulated; set it on the adapter or the send target",
				&types.NotSupported{})
			return
		}
		apply := func(cur *chapConfig) (chapConfig, *soap.Fault) {
			c := chapConfig{enabled: p.ChapAuthEnabled, name: p.ChapName, secret: p.ChapSecret, level: p.ChapAuthenticationType}
			if !c.enabled {
				return chapConfig{level: prohibited}, nil
			}
			if c.level == "" || c.level == prohibited {
				c.level = "chapRequired"
			}
			if c.secret == "" && cur != nil && cur.name == c.name {
				c.secret = cur.secret // a client that writes back what it read (no secret) keeps the secret
			}
			if c.name == "" || c.secret == "" {
				return c, storageInvalid("chapSecret", "CHAP needs a name and a secret")
			}
			return c, nil
		}
		if req.TargetSet == nil || len(req.TargetSet.SendTargets) == 0 {
			c, f := apply(&hs.auth)
			if f != nil {
				body.Fault_ = f
				return
			}
			hs.auth = c
			log.Printf("storage: %s: %s adapter CHAP: %s", hs.host.Name, swIscsiDevice, describeChap(c))
		} else {
			for _, t := range req.TargetSet.SendTargets {
				addr, port, f := normTarget(t)
				if f != nil {
					body.Fault_ = f
					return
				}
				i := hs.findSendTarget(addr, port)
				if i < 0 {
					body.Fault_ = simulator.Fault(fmt.Sprintf("no send target %s on %s", net.JoinHostPort(addr, strconv.Itoa(int(port))), swIscsiDevice),
						&types.NotFound{})
					return
				}
				st := hs.sendTgts[i]
				if p.ChapInherited != nil && *p.ChapInherited {
					st.auth = nil
					log.Printf("storage: %s: send target %s CHAP: inherited from the adapter", hs.host.Name, st.portal())
					continue
				}
				c, f := apply(st.auth)
				if f != nil {
					body.Fault_ = f
					return
				}
				st.auth = &c
				log.Printf("storage: %s: send target %s CHAP: %s", hs.host.Name, st.portal(), describeChap(c))
			}
		}
		hs.publish(ctx)
		body.Res = &types.UpdateInternetScsiAuthenticationPropertiesResponse{}
	})
	return body
}

func describeChap(c chapConfig) string {
	if !c.enabled {
		return "off"
	}
	return fmt.Sprintf("%s, name %s, secret of %d characters", c.level, c.name, len(c.secret))
}

func (s *labStorageSystem) RescanHba(ctx *simulator.Context, req *types.RescanHba) soap.HasFault {
	body := &methods.RescanHbaBody{}
	hs := s.hs
	hs.do(ctx, func() {
		known := false
		for _, a := range hs.ss.StorageDeviceInfo.HostBusAdapter {
			known = known || a.GetHostHostBusAdapter().Device == req.HbaDevice
		}
		if !known {
			body.Fault_ = badHba(req.HbaDevice)
			return
		}
		if req.HbaDevice == swIscsiDevice {
			hs.rescan()
			hs.publish(ctx)
		}
		body.Res = &types.RescanHbaResponse{}
	})
	return body
}

// RescanAllHba rescans the software iSCSI adapter (the simulator's own RescanAllHba swaps its
// adapter list with a Fibre Channel one, a test hook of its own: not on the lab's hosts).
func (s *labStorageSystem) RescanAllHba(ctx *simulator.Context, req *types.RescanAllHba) soap.HasFault {
	hs := s.hs
	hs.do(ctx, func() {
		hs.rescan()
		hs.publish(ctx)
	})
	return &methods.RescanAllHbaBody{Res: &types.RescanAllHbaResponse{}}
}
