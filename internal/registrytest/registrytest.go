// Package registrytest runs Debian's real docker-registry (distribution
// 2.x) on a free 127.0.0.1 port for tests, optionally behind a reverse
// proxy that lets a test see every request. It is imported by tests only.
package registrytest

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Bin is Debian's docker-registry binary (hack/deps.sh installs it).
const Bin = "/usr/bin/docker-registry"

// Start runs docker-registry with storage in a temp dir and returns its
// host:port once /v2/ answers with wantStatus (200, or 401 with auth).
// extraConfig is appended to the YAML config (e.g. an auth: section).
// The registry is stopped when the test ends; its log is shown if the test
// failed. Without the binary the test is skipped.
func Start(t testing.TB, extraConfig string, wantStatus int) string {
	t.Helper()
	if _, err := os.Stat(Bin); err != nil {
		t.Skipf("%s not installed (hack/deps.sh installs it)", Bin)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%s`, filepath.Join(dir, "data"), addr, extraConfig)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("registry log:\n%s", b)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == wantStatus {
				return addr
			}
			err = fmt.Errorf("/v2/ answered %s, want %d", resp.Status, wantStatus)
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry did not answer on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Proxy puts a reverse proxy in front of the registry at addr, passing
// every request through wrap, and returns the proxy's host:port. The proxy
// keeps the client's Host header, so the registry's upload Locations point
// back at the proxy and every request goes through wrap.
func Proxy(t testing.TB, addr string, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	target, _ := url.Parse("http://" + addr)
	proxy := httptest.NewServer(wrap(httputil.NewSingleHostReverseProxy(target)))
	t.Cleanup(proxy.Close)
	u, _ := url.Parse(proxy.URL)
	return u.Host
}
