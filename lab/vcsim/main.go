// Command vcsim is the dfir.vmcollect lab's vSphere simulator.
//
// Debian ships govmomi's simulator library (golang-github-vmware-govmomi-dev,
// 0.24.2) but not upstream's vcsim program, so this is a small replacement:
// it builds an ESX (default) or vCenter model, serves it over HTTPS with a
// freshly generated self-signed certificate on a loopback address and, once
// listening, writes a JSON "env file" describing how to reach it (URL,
// credentials, certificate and thumbprints, datastores and their local
// folders, VMs and their vmx paths, pid).
//
// Lab extensions (the other *.go files, registerExtension) add real ESXi behaviour; with
// -lab-vms -ram-image PATH the content extension creates the lab's VMs with real disks, a
// guest heartbeat, memory snapshots and consolidation (BEHAVIOUR-vms.md).
//
// Build offline (see build.sh):
//
//	GO111MODULE=off GOPROXY=off GOPATH=$PRIVATE:/usr/share/gocode go build -o vcsim main.go
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" // #nosec: the vSphere thumbprint format is SHA-1
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
)

// envDatastore describes one datastore of the model.
type envDatastore struct {
	Name       string `json:"name"`
	Datacenter string `json:"datacenter"`
	Moref      string `json:"moref"`
	URL        string `json:"url"`        // ds.info.url as the API reports it
	LocalPath  string `json:"local_path"` // the folder on this machine that holds its files
}

// envVM describes one virtual machine of the model.
type envVM struct {
	Name         string `json:"name"`
	Moref        string `json:"moref"`
	Datacenter   string `json:"datacenter"`
	VmxPath      string `json:"vmx_path"`       // "[LocalDS_0] name/name.vmx"
	VmxLocalPath string `json:"vmx_local_path"` // same file on this machine
	PowerState   string `json:"power_state"`
}

// envFile is what -env writes once the server is listening.
type envFile struct {
	URL                string         `json:"url"`
	Host               string         `json:"host"`
	Port               int            `json:"port"`
	Username           string         `json:"username"`
	Password           string         `json:"password"`
	Mode               string         `json:"mode"`
	APIType            string         `json:"api_type"`
	APIVersion         string         `json:"api_version"`
	Insecure           bool           `json:"insecure"`
	CertFile           string         `json:"cert_file"`
	CertPEM            string         `json:"cert_pem"`
	ThumbprintSHA1     string         `json:"thumbprint_sha1"`
	ThumbprintSHA256   string         `json:"thumbprint_sha256"`
	Datacenters        []string       `json:"datacenters"`
	Datastores         []envDatastore `json:"datastores"`
	VMs                []envVM        `json:"vms"`
	DatastoreDir       string         `json:"datastore_dir"`
	DatastoreDirIsTemp bool           `json:"datastore_dir_is_temp"`
	Pid                int            `json:"pid"`
	StartedAt          string         `json:"started_at"`
	// Lab holds what each lab extension (the other *.go files) reports, under its name.
	Lab map[string]interface{} `json:"lab"`
}

// labContext is what a lab extension gets once the model is created and before it is served.
type labContext struct {
	Model    *simulator.Model
	Mode     string // esx or vpx
	Host     string // the listen address
	DsRoot   string // the folder holding each datastore's folder
	Env      map[string]interface{}
	cleanups *[]func()
	httpWrap *[]func(http.Handler) http.Handler
}

// AddCleanup runs fn when the simulator stops (in reverse order of registration).
func (c *labContext) AddCleanup(fn func()) { *c.cleanups = append(*c.cleanups, fn) }

// WrapHTTP adds an HTTP middleware around the simulator's whole handler (the /sdk, /folder,
// ... mux), applied once the server exists and before its address is published. Middlewares
// run in registration order (the first registered sees a request first).
func (c *labContext) WrapHTTP(mw func(http.Handler) http.Handler) {
	*c.httpWrap = append(*c.httpWrap, mw)
}

// labOptions are the flags of the lab extensions (content, guest, snapshots).
type labOptions struct {
	LabVMs   bool   // -lab-vms: create the lab's VMs with real content
	DiskMiB  int    // -disk-mib: virtual size of each lab disk
	RAMImage string // -ram-image: raw guest RAM served as the .vmem of memory snapshots
}

var labOpts labOptions

// labExtension gives the simulator one piece of real ESXi behaviour (see lab/README.md).
type labExtension struct {
	Name  string
	Setup func(ctx *labContext) error
}

// extensions are registered by the other files of this package from init(), run in name order.
var extensions []labExtension

func registerExtension(name string, setup func(ctx *labContext) error) {
	extensions = append(extensions, labExtension{Name: name, Setup: setup})
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmsgprefix)
	log.SetPrefix("vcsim: ")
	if err := run(); err != nil {
		log.Printf("error: %v", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("l", "127.0.0.1:0", "listen address (loopback or a lab namespace address in 10.213.0.0/16; port 0 picks a free port)")
	mode := flag.String("mode", "esx", "model: esx (standalone host) or vpx (vCenter)")
	nvm := flag.Int("vm", -1, "number of VMs (per host in esx mode, per host/cluster in vpx mode); -1 = model default (2)")
	nds := flag.Int("ds", -1, "number of local datastores; -1 = model default (1)")
	dsDir := flag.String("datastore-dir", "", "folder under which each datastore gets its own subfolder (default: a temp folder)")
	envPath := flag.String("env", "", "write a JSON file describing the running simulator here once it listens")
	username := flag.String("username", "user", "the only accepted login user")
	password := flag.String("password", "pass", "the only accepted login password")
	flag.BoolVar(&labOpts.LabVMs, "lab-vms", false,
		"create the lab's VMs with real disk content on LocalDS_0 (BEHAVIOUR-vms.md); the model's own VMs are then left out unless -vm is given")
	flag.IntVar(&labOpts.DiskMiB, "disk-mib", 64, "virtual size in MiB of each lab VM disk (-lab-vms)")
	flag.StringVar(&labOpts.RAMImage, "ram-image", "",
		"raw 256 MiB guest RAM image (lab/vcsim/ram_image.sh) served as the .vmem of memory snapshots; required by -lab-vms")
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments: %v", flag.Args())
	}

	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		return fmt.Errorf("-l %q: %v", *listen, err)
	}
	// the lab's own addresses only: loopback, or 10.213.0.0/16 (the lab's namespaces, lab/lib.sh)
	_, labNet, _ := net.ParseCIDR("10.213.0.0/16")
	if ip := net.ParseIP(host); ip == nil || !(ip.IsLoopback() || labNet.Contains(ip)) {
		return fmt.Errorf("-l %q: only loopback or lab (10.213.0.0/16) IP addresses are allowed", *listen)
	}

	var model *simulator.Model
	switch *mode {
	case "esx":
		model = simulator.ESX()
	case "vpx":
		model = simulator.VPX()
	default:
		return fmt.Errorf("-mode %q: want esx or vpx", *mode)
	}
	if *nvm >= 0 {
		model.Machine = *nvm
	} else if labOpts.LabVMs {
		model.Machine = 0 // only the lab's own VMs
	}
	if labOpts.LabVMs && model.Datastore == 0 {
		return fmt.Errorf("-lab-vms puts its VMs on LocalDS_0: it needs -ds >= 1")
	}
	if *nds >= 0 {
		model.Datastore = *nds
	}
	if model.Machine > 0 && model.Datastore < 1 {
		return fmt.Errorf("VMs live on LocalDS_0: -vm %d needs -ds >= 1", model.Machine)
	}
	// The ESX inventory holds a single host whose VMs are started by the model.
	model.Autostart = true

	// Catch signals from the start: one that arrives while the model is being
	// built is handled once it is up, so its folders are still removed.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)

	// Things to undo on exit, in reverse order.
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		cleanups = nil
	}
	defer cleanup()

	// The model creates each datastore folder with ioutil.TempDir("", ...),
	// that is under $TMPDIR: point it at -datastore-dir for Create() only.
	dsRoot := *dsDir
	dsRootIsTemp := false
	if dsRoot == "" {
		dsRoot, err = ioutil.TempDir("", "vcsim-ds-")
		if err != nil {
			return err
		}
		dsRootIsTemp = true
		root := dsRoot
		cleanups = append(cleanups, func() { _ = os.RemoveAll(root) })
	} else {
		if dsRoot, err = filepath.Abs(dsRoot); err != nil {
			return err
		}
		if err = os.MkdirAll(dsRoot, 0o700); err != nil {
			return err
		}
	}

	oldTmp, hadTmp := os.LookupEnv("TMPDIR")
	_ = os.Setenv("TMPDIR", dsRoot)
	err = model.Create()
	if hadTmp {
		_ = os.Setenv("TMPDIR", oldTmp)
	} else {
		_ = os.Unsetenv("TMPDIR")
	}
	// Model.Remove deletes the datastore folders made by Create.
	cleanups = append(cleanups, model.Remove)
	if err != nil {
		return fmt.Errorf("creating the %s model: %v", *mode, err)
	}

	cert, certPEM, err := selfSignedCert(host)
	if err != nil {
		return fmt.Errorf("generating the TLS certificate: %v", err)
	}
	tlsDir, err := ioutil.TempDir("", "vcsim-tls-")
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { _ = os.RemoveAll(tlsDir) })
	certFile := filepath.Join(tlsDir, "cert.pem")
	if err = ioutil.WriteFile(certFile, certPEM, 0o644); err != nil {
		return err
	}

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}

	labEnv := map[string]interface{}{}
	var httpWrap []func(http.Handler) http.Handler
	sort.Slice(extensions, func(i, j int) bool { return extensions[i].Name < extensions[j].Name })
	for _, ext := range extensions {
		ctx := &labContext{Model: model, Mode: *mode, Host: host, DsRoot: dsRoot, Env: map[string]interface{}{},
			cleanups: &cleanups, httpWrap: &httpWrap}
		if err = ext.Setup(ctx); err != nil {
			return fmt.Errorf("lab extension %s: %v", ext.Name, err)
		}
		labEnv[ext.Name] = ctx.Env
	}

	// Read the inventory before serving: no client can change it yet.
	info := describe(model)
	info.Lab = labEnv

	server := model.Service.NewServer()
	closeServer := func() { stopServer(server) }
	cleanups = append(cleanups, closeServer)
	// The server already accepts connections, but nobody knows its port before the env
	// file is written below: no request is in flight while the handler is swapped.
	for i := len(httpWrap) - 1; i >= 0; i-- {
		server.Config.Handler = httpWrap[i](server.Config.Handler)
	}

	addr := server.Listener.Addr().(*net.TCPAddr)
	u := url.URL{Scheme: "https", Host: net.JoinHostPort(host, fmt.Sprint(addr.Port)), Path: "/sdk"}
	leaf := cert.Certificate[0]
	s1 := sha1.Sum(leaf) // #nosec
	s256 := sha256.Sum256(leaf)
	about := model.ServiceContent.About

	info.URL = u.String()
	info.Host = host
	info.Port = addr.Port
	info.Username = *username
	info.Password = *password
	info.Mode = *mode
	info.APIType = about.ApiType
	info.APIVersion = about.ApiVersion
	info.Insecure = false
	info.CertFile = certFile
	info.CertPEM = string(certPEM)
	info.ThumbprintSHA1 = colonHex(s1[:])
	info.ThumbprintSHA256 = colonHex(s256[:])
	info.DatastoreDir = dsRoot
	info.DatastoreDirIsTemp = dsRootIsTemp
	info.Pid = os.Getpid()
	info.StartedAt = time.Now().UTC().Format(time.RFC3339)

	if *envPath != "" {
		p, perr := filepath.Abs(*envPath)
		if perr != nil {
			return perr
		}
		if err = writeJSON(p, info); err != nil {
			return fmt.Errorf("writing %s: %v", p, err)
		}
		cleanups = append(cleanups, func() { _ = os.Remove(p) })
	}

	log.Printf("listening on %s (%s, %d datastore(s), %d VM(s)); datastores under %s; SHA-1 thumbprint %s",
		info.URL, *mode, len(info.Datastores), len(info.VMs), dsRoot, info.ThumbprintSHA1)

	s := <-sig
	signal.Stop(sig)
	log.Printf("received %s, shutting down", s)
	cleanup()
	log.Printf("stopped")
	return nil
}

// stopServer closes the HTTP server. Open connections that do not end within
// 2 s (for example a client blocked in WaitForUpdatesEx, whose handler does
// not watch the connection) are closed by force; after 1 s more we go on with
// the clean-up anyway, as the process is about to exit.
func stopServer(server *simulator.Server) {
	done := make(chan struct{})
	go func() {
		server.Close()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(2 * time.Second):
	}
	log.Printf("connections still open after 2s: closing them")
	_ = server.Config.Close()
	select {
	case <-done:
	case <-time.After(time.Second):
		log.Printf("a request handler is still busy; exiting anyway")
	}
}

// describe lists the datacenters, datastores and VMs of the created model.
func describe(model *simulator.Model) *envFile {
	info := &envFile{Datacenters: []string{}, Datastores: []envDatastore{}, VMs: []envVM{}}
	reg := simulator.Map

	dsLocal := map[string]string{}
	for _, e := range reg.All("Datastore") {
		ds := digMO[mo.Datastore](e)
		if ds == nil || ds.Info == nil {
			continue
		}
		u := ds.Info.GetDatastoreInfo().Url
		dsLocal[ds.Name] = u
		info.Datastores = append(info.Datastores, envDatastore{
			Name:       ds.Name,
			Datacenter: datacenterOf(reg, e),
			Moref:      ds.Self.Value,
			URL:        u,
			LocalPath:  u,
		})
	}
	for _, e := range reg.All("Datacenter") {
		info.Datacenters = append(info.Datacenters, e.Entity().Name)
	}
	for _, e := range reg.All("VirtualMachine") {
		vm := digMO[mo.VirtualMachine](e) // lab extensions wrap VMs (content.go)
		if vm == nil {
			continue
		}
		vmx := vm.Config.Files.VmPathName
		local := ""
		var p object.DatastorePath
		if p.FromString(vmx) {
			if root, ok := dsLocal[p.Datastore]; ok {
				local = filepath.Join(root, filepath.FromSlash(p.Path))
			}
		}
		info.VMs = append(info.VMs, envVM{
			Name:         vm.Name,
			Moref:        vm.Self.Value,
			Datacenter:   datacenterOf(reg, e),
			VmxPath:      vmx,
			VmxLocalPath: local,
			PowerState:   string(vm.Runtime.PowerState),
		})
	}
	sort.Strings(info.Datacenters)
	sort.Slice(info.Datastores, func(i, j int) bool { return info.Datastores[i].Name < info.Datastores[j].Name })
	sort.Slice(info.VMs, func(i, j int) bool { return info.VMs[i].Name < info.VMs[j].Name })
	return info
}

// digMO returns the mo type T embedded (as first field, by value or pointer, at any
// depth) in a registry object: the simulator's own types and lab wrappers of them.
func digMO[T any](obj interface{}) *T {
	want := reflect.TypeOf((*T)(nil)).Elem()
	v := reflect.ValueOf(obj)
	for i := 0; i < 8; i++ {
		if v.Kind() == reflect.Ptr {
			if v.IsNil() {
				return nil
			}
			v = v.Elem()
		}
		if v.Kind() != reflect.Struct {
			return nil
		}
		if v.Type() == want {
			return v.Addr().Interface().(*T)
		}
		if v.NumField() == 0 {
			return nil
		}
		v = v.Field(0)
	}
	return nil
}

// datacenterOf walks up the parent chain of an entity to its Datacenter.
func datacenterOf(reg *simulator.Registry, e mo.Entity) string {
	for i := 0; e != nil && i < 32; i++ {
		if dc, ok := e.(*simulator.Datacenter); ok {
			return dc.Name
		}
		parent := e.Entity().Parent
		if parent == nil {
			return ""
		}
		next, ok := reg.Get(*parent).(mo.Entity)
		if !ok {
			return ""
		}
		e = next
	}
	return ""
}

// selfSignedCert makes a short-lived ECDSA certificate for the listen IP and
// "localhost", usable by clients as its own trust anchor (CA:TRUE).
func selfSignedCert(host string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host, Organization: []string{"dfir.vmcollect lab vcsim"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP(host)},
		DNSNames:              []string{"localhost"},
	}
	if !net.ParseIP(host).Equal(net.IPv4(127, 0, 0, 1)) {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IPv4(127, 0, 0, 1))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	return cert, certPEM, err
}

func colonHex(b []byte) string {
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = fmt.Sprintf("%02X", c)
	}
	return strings.Join(parts, ":")
}

// writeJSON writes v to path atomically (temp file + rename), so a poller
// never reads a partial file.
func writeJSON(path string, v interface{}) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := ioutil.TempFile(filepath.Dir(path), "."+filepath.Base(path)+".")
	if err != nil {
		return err
	}
	if _, err = tmp.Write(append(data, '\n')); err == nil {
		err = tmp.Chmod(0o600)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}
