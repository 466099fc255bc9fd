package main

// Extension "license": a free ESXi host (the "vSphere Hypervisor" licence) answers its API read-only, and a
// lab-internal user for the lab's ESXi shell (lab/esxi-shell).
//
// With -free-license every SOAP call that is not a read (see readOnlyMethod) made by an ordinary API session fails as
// it fails on a free ESXi host: synchronously, HTTP 500, fault vim.fault.RestrictedVersion with the message
// "Current license or ESXi version prohibits execution of the requested operation." (pyvmomi issue #602,
// vsphere-flocker-driver issue #35, os-autoinst pull request #875 quote it from real free hosts; William Lam,
// "The Dreaded fault.RestrictedVersion.summary Error": "Users only have the ability to perform read-only operations
// against the vSphere API"). Reads (RetrieveProperties, WaitForUpdatesEx, container views, Query*/Retrieve*/Find*,
// datastore searches, ...) stay allowed, and so does /folder (HTTP, not SOAP).
//
// On ESXi the host's own shell (vim-cmd, vmkfstools, esxcli) is not bound by that licence rule. The lab's shell
// programs act through this same API, so they log in as a lab-internal user (env lab.license.internal_username /
// internal_password, random per start; the env file is 0600): its sessions may change the host in free mode too.
// 0.24.2's simulator accepts one user only, so a Login with the internal user's name and password is handed to it
// with the ordinary credentials and the session it opens is remembered as internal (by its cookie); the session's
// userName is then the ordinary user's (a lab difference). Calls made in process (the lab's own set-up) are not
// HTTP and never refused.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	internalUser         = "vmcollect-lab-shell"
	restrictedVersionMsg = "Current license or ESXi version prohibits execution of the requested operation."
	maxSOAPBody          = 64 << 20
)

var freeLicense = flag.Bool("free-license", false,
	"behave as a free ESXi host: every API call that changes the host, made by an ordinary session, fails with "+
		"vim.fault.RestrictedVersion (the lab ESXi shell's internal user may)")

func init() {
	registerExtension("license", setupLicense)
}

// readOnlyMethod: the SOAP methods a free ESXi host still answers (reads and session housekeeping).
func readOnlyMethod(name string) bool {
	switch name {
	case "RetrieveServiceContent", "Login", "LoginByToken", "LoginExtensionByCertificate",
		"LoginExtensionBySubjectName", "Logout", "SessionIsActive", "CloneSession", "AcquireCloneTicket",
		"AcquireGenericServiceTicket", "AcquireSessionTicket", "CurrentTime", "Fetch",
		"RetrieveProperties", "RetrievePropertiesEx", "ContinueRetrievePropertiesEx", "CancelRetrievePropertiesEx",
		"WaitForUpdates", "WaitForUpdatesEx", "CheckForUpdates", "CancelWaitForUpdates",
		"CreateFilter", "DestroyPropertyFilter", "CreatePropertyCollector", "DestroyPropertyCollector",
		"CreateContainerView", "CreateListView", "CreateListViewFromView", "CreateInventoryView", "DestroyView",
		"ModifyListView", "ResetListView", "ResetListViewFromView", "OpenInventoryViewFolder",
		"CloseInventoryViewFolder",
		"CreateCollectorForEvents", "CreateCollectorForTasks", "DestroyCollector", "ReadNextEvents",
		"ReadPreviousEvents", "ReadNextTasks", "ReadPreviousTasks", "RewindCollector", "ResetCollector",
		"SetCollectorPageSize",
		"HasPrivilegeOnEntity", "HasPrivilegeOnEntities", "HasUserPrivilegeOnEntities", "FetchUserPrivilegeOnEntities",
		"RefreshDatastore", "RefreshDatastoreStorageInfo", "RefreshStorageInfo",
		"SearchDatastore_Task", "SearchDatastoreSubFolders_Task":
		return true
	}
	for _, p := range []string{"Query", "Retrieve", "Find"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

type licenseGate struct {
	free             bool
	user, password   string // the internal user
	ordUser, ordPass string // the simulator's only user
	mu               sync.Mutex
	internalSessions map[string]bool
}

func setupLicense(ctx *labContext) error {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	g := &licenseGate{free: *freeLicense, user: internalUser, password: hex.EncodeToString(secret),
		internalSessions: map[string]bool{}}
	if u := ctx.Model.Service.Listen.User; u != nil {
		g.ordUser = u.Username()
		g.ordPass, _ = u.Password()
	}
	if g.ordUser == "" || g.ordPass == "" {
		return fmt.Errorf("the simulator has no login user to hand internal logins to")
	}
	ctx.WrapHTTP(g.middleware)
	ctx.Env["free"] = g.free
	ctx.Env["internal_username"] = g.user
	ctx.Env["internal_password"] = g.password
	ctx.Env["refused_fault"] = "vim.fault.RestrictedVersion"
	ctx.Env["refused_message"] = restrictedVersionMsg
	if g.free {
		// a free host lists the "vSphere Hypervisor" licence, edition esxBasic (what scripts check to tell a free
		// host, e.g. William Lam's ghettoVCB-era checks of LicenseManager.licenses[].editionKey)
		if ref := ctx.Model.ServiceContent.LicenseManager; ref != nil {
			if lm, ok := simulator.Map.Get(*ref).(*simulator.LicenseManager); ok {
				lm.Licenses = []types.LicenseManagerLicenseInfo{{
					LicenseKey: "00000-00000-00000-00000-00000", EditionKey: "esxBasic",
					Name: "VMware vSphere 8 Hypervisor", Total: 0, Used: 1, CostUnit: "cpuPackage",
				}}
			}
		}
		log.Printf("license: free ESXi: API calls that change the host are refused (RestrictedVersion) except for "+
			"the lab shell's user %s", g.user)
	}
	return nil
}

// soapCall: the method element of a SOAP request body and, for Login, its userName and password.
type soapCall struct {
	Method, This, ThisType, UserName, Password, Locale string
}

func parseSOAPCall(body []byte) (soapCall, error) {
	var c soapCall
	dec := xml.NewDecoder(bytes.NewReader(body))
	inBody, depth := false, 0
	field := ""
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return c, fmt.Errorf("no method in the SOAP body")
		}
		if err != nil {
			return c, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if !inBody {
				inBody = t.Name.Local == "Body"
				continue
			}
			depth++
			if depth == 1 {
				c.Method = t.Name.Local
				if c.Method != "Login" {
					return c, nil
				}
				continue
			}
			if depth == 2 {
				field = t.Name.Local
				if field == "_this" {
					for _, a := range t.Attr {
						if a.Name.Local == "type" {
							c.ThisType = a.Value
						}
					}
				}
			}
		case xml.CharData:
			if depth == 2 {
				switch field {
				case "_this":
					c.This += string(t)
				case "userName":
					c.UserName += string(t)
				case "password":
					c.Password += string(t)
				case "locale":
					c.Locale += string(t)
				}
			}
		case xml.EndElement:
			if inBody && depth > 0 {
				depth--
				if depth == 0 {
					return c, nil
				}
			}
		}
	}
}

func xmlText(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func loginEnvelope(c soapCall, user, password string) []byte {
	locale := ""
	if c.Locale != "" {
		locale = "<locale>" + xmlText(c.Locale) + "</locale>"
	}
	return []byte(fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><Login xmlns="urn:vim25"><_this type="%s">%s</_this><userName>%s</userName><password>%s</password>%s</Login></soapenv:Body></soapenv:Envelope>`,
		xmlText(c.ThisType), xmlText(c.This), xmlText(user), xmlText(password), locale))
}

const restrictedVersionFault = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body>
<soapenv:Fault>
<faultcode>ServerFaultCode</faultcode>
<faultstring>` + restrictedVersionMsg + `</faultstring>
<detail><RestrictedVersionFault xmlns="urn:vim25" xsi:type="RestrictedVersion"></RestrictedVersionFault></detail>
</soapenv:Fault>
</soapenv:Body>
</soapenv:Envelope>
`

// cookieWatch passes a response through and keeps the session cookie it sets.
type cookieWatch struct {
	http.ResponseWriter
	status  int
	session string
}

func (w *cookieWatch) capture() {
	resp := http.Response{Header: http.Header{"Set-Cookie": w.Header().Values("Set-Cookie")}}
	for _, c := range resp.Cookies() {
		if c.Name == soap.SessionCookieName {
			w.session = c.Value
		}
	}
}

func (w *cookieWatch) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		w.capture()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *cookieWatch) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
		w.capture()
	}
	return w.ResponseWriter.Write(b)
}

func (g *licenseGate) internal(r *http.Request) bool {
	c, err := r.Cookie(soap.SessionCookieName)
	if err != nil || c.Value == "" {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.internalSessions[c.Value]
}

func (g *licenseGate) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/sdk" {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxSOAPBody))
		_ = r.Body.Close()
		if err != nil {
			http.Error(w, "reading the request: "+err.Error(), http.StatusBadRequest)
			return
		}
		call, perr := parseSOAPCall(body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if perr != nil {
			next.ServeHTTP(w, r) // the simulator answers a malformed request itself
			return
		}
		switch {
		case call.Method == "Login" && call.UserName == g.user:
			if call.Password != g.password {
				r.Body = io.NopCloser(bytes.NewReader(loginEnvelope(call, g.user, "")))
				next.ServeHTTP(w, r) // refused by the simulator as any wrong login (InvalidLogin)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(loginEnvelope(call, g.ordUser, g.ordPass)))
			r.ContentLength = -1
			cw := &cookieWatch{ResponseWriter: w}
			next.ServeHTTP(cw, r)
			if cw.status == http.StatusOK && cw.session != "" {
				g.mu.Lock()
				g.internalSessions[cw.session] = true
				g.mu.Unlock()
			}
			return
		case call.Method == "Logout":
			if c, err := r.Cookie(soap.SessionCookieName); err == nil {
				g.mu.Lock()
				delete(g.internalSessions, c.Value)
				g.mu.Unlock()
			}
		case g.free && !readOnlyMethod(call.Method) && !g.internal(r):
			log.Printf("license: free ESXi: %s refused (RestrictedVersion) for an API session", call.Method)
			w.Header().Set("Content-Type", "text/xml; charset=utf-8")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, restrictedVersionFault)
			return
		}
		next.ServeHTTP(w, r)
	})
}
