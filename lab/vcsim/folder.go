package main

// Extension "folder": the datastore HTTP access (/folder/<path>?dcPath=&dsName=) requires
// an authenticated session, as on ESXi: the vmware_soap_session cookie of a logged-in SOAP
// session; without one (or with an unknown or logged-out one) the answer is
// 401 Unauthorized. 0.24.2 serves /folder (GET with Range -> 206, HEAD, PUT, POST) without
// any check: this middleware runs in front of it and asks the SOAP service itself, in
// process, whether the cookie's session is current (RetrievePropertiesEx of
// SessionManager.currentSession with that cookie), so login, logout and idle expiry
// behave exactly as for /sdk.

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/vmware/govmomi/vim25/soap"
)

func init() {
	registerExtension("folder", setupFolder)
}

func setupFolder(ctx *labContext) error {
	pc := ctx.Model.ServiceContent.PropertyCollector
	sm := ctx.Model.ServiceContent.SessionManager
	if sm == nil {
		return fmt.Errorf("the model has no SessionManager")
	}
	probe := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><RetrievePropertiesEx xmlns="urn:vim25"><_this type="%s">%s</_this>
<specSet><propSet><type>SessionManager</type><pathSet>currentSession</pathSet></propSet>
<objectSet><obj type="%s">%s</obj></objectSet></specSet><options></options></RetrievePropertiesEx></soapenv:Body></soapenv:Envelope>`,
		pc.Type, pc.Value, sm.Type, sm.Value)

	ctx.WrapHTTP(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/folder" && !strings.HasPrefix(r.URL.Path, "/folder/") {
				next.ServeHTTP(w, r)
				return
			}
			if !validSession(next, r, probe) {
				w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
				http.Error(w, "401 Unauthorized: no valid vmware_soap_session cookie", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	ctx.Env["folder_auth"] = "vmware_soap_session cookie of a logged-in session; 401 otherwise"
	return nil
}

func validSession(next http.Handler, r *http.Request, probe string) bool {
	c, err := r.Cookie(soap.SessionCookieName)
	if err != nil || c.Value == "" || strings.ContainsAny(c.Value, "<>&\"") {
		return false
	}
	req := httptest.NewRequest(http.MethodPost, "/sdk", bytes.NewBufferString(probe))
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	req.Header.Set("SOAPAction", "urn:vim25/6.7")
	req.AddCookie(&http.Cookie{Name: soap.SessionCookieName, Value: c.Value})
	req.RemoteAddr = r.RemoteAddr
	req.Header.Set("User-Agent", r.UserAgent())
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return false
	}
	return strings.Contains(rec.Body.String(), "<key>"+c.Value+"</key>")
}
