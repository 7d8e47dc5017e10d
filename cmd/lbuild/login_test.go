package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/lbuild/lbuild/internal/registrytest"
)

// startAuthRegistry runs Debian's docker-registry on a free 127.0.0.1 port
// with htpasswd auth for user:password and returns its host:port. It waits
// until the registry refuses anonymous requests.
func startAuthRegistry(t *testing.T, user, password string) string {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return registrytest.Start(t, "auth:\n  htpasswd:\n    realm: lbuild-test\n    path: "+htpasswd+"\n", http.StatusUnauthorized)
}

// credHelperScript is a docker credential helper speaking the protocol of
// github.com/docker/docker-credential-helpers (store, get, erase, list;
// JSON on stdin and stdout). It keeps each server's credentials as the JSON
// docker sent, in a file of STORE, and logs each call to LOG.
const credHelperScript = `#!/bin/sh
store=@STORE@
key() { printf '%s' "$1" | tr '/:' '__'; }
field() { sed -n 's/.*"'"$1"'":"\([^"]*\)".*/\1/p'; }
case "$1" in
store)
	in=$(cat)
	url=$(printf '%s' "$in" | field ServerURL)
	echo "store $url" >>@LOG@
	[ -n "$url" ] || { echo "no credentials server URL"; exit 1; }
	printf '%s\n' "$in" >"$store/$(key "$url")"
	;;
get|erase)
	url=$(cat)
	echo "$1 $url" >>@LOG@
	f="$store/$(key "$url")"
	[ -f "$f" ] || { echo "credentials not found in native keychain"; exit 1; }
	if [ "$1" = get ]; then cat "$f"; else rm "$f"; fi
	;;
list)
	echo list >>@LOG@
	sep=
	printf '{'
	for f in "$store"/*; do
		[ -f "$f" ] || continue
		printf '%s"%s":"%s"' "$sep" "$(field ServerURL <"$f")" "$(field Username <"$f")"
		sep=,
	done
	printf '}\n'
	;;
*)
	echo "unknown action $1"
	exit 1
	;;
esac
`

// credHelper is a docker-credential-<name> installed in a temp dir put
// first on PATH for the rest of the test.
type credHelper struct {
	store, log string
}

func installCredHelper(t *testing.T, name string) *credHelper {
	t.Helper()
	dir := t.TempDir()
	h := &credHelper{store: filepath.Join(dir, "store"), log: filepath.Join(dir, "calls.log")}
	if err := os.Mkdir(h.store, 0o700); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	script := strings.NewReplacer("@STORE@", h.store, "@LOG@", h.log).Replace(credHelperScript)
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-"+name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	return h
}

// stored returns the credentials the helper holds, by server URL.
func (h *credHelper) stored(t *testing.T) map[string]struct{ Username, Secret string } {
	t.Helper()
	out := map[string]struct{ Username, Secret string }{}
	ents, err := os.ReadDir(h.store)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(h.store, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var c struct{ ServerURL, Username, Secret string }
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatalf("helper file %s: %v\n%s", e.Name(), err, b)
		}
		out[c.ServerURL] = struct{ Username, Secret string }{c.Username, c.Secret}
	}
	return out
}

func (h *credHelper) calls(t *testing.T) string {
	b, err := os.ReadFile(h.log)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

// runIn runs the lbuild binary with stdin and returns stdout, stderr and the
// exit code.
func runIn(t *testing.T, root, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(lbuildBin, append([]string{"--root", root}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

// writeDockerConfig points DOCKER_CONFIG at a new dir holding config.json with
// content, and returns the file's path.
func writeDockerConfig(t *testing.T, content string) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dir)
	p := filepath.Join(dir, "config.json")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkPushPull pushes an image to and pulls it from host with whatever
// credentials the docker config gives, and reports failures of either.
func checkPushPull(t *testing.T, host, repo string) (pushErr, pullErr string) {
	t.Helper()
	root := t.TempDir()
	transferTestImage(t, root, "app:1")
	ref := host + "/" + repo + ":1"
	if _, stderr, code := run(t, root, "push", "app:1", ref); code != 0 {
		pushErr = stderr
	}
	if _, stderr, code := run(t, t.TempDir(), "pull", ref); code != 0 {
		pullErr = stderr
	}
	return pushErr, pullErr
}

// TestLoginCredentialHelper logs in to a registry with htpasswd auth while
// the docker config sends its credentials to a credential helper (credsStore
// for every registry, or credHelpers for this one): login must store them
// with the helper, push and pull must find them there, logout must erase
// them.
func TestLoginCredentialHelper(t *testing.T) {
	host := startAuthRegistry(t, "alice", "s3cret")
	for _, tc := range []struct{ name, config string }{
		{"credsStore", `{"credsStore":"lbtest","psFormat":"table {{.ID}}"}`},
		{"credHelpers", `{"credHelpers":{"` + host + `":"lbtest"},"psFormat":"table {{.ID}}"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := installCredHelper(t, "lbtest")
			cfgPath := writeDockerConfig(t, tc.config)
			repo := "helper-" + strings.ToLower(tc.name)

			if pushErr, _ := checkPushPull(t, host, repo); !strings.Contains(pushErr, "UNAUTHORIZED") {
				t.Fatalf("anonymous push: want UNAUTHORIZED, got %q", pushErr)
			}

			before, _ := os.ReadFile(cfgPath)
			_, stderr, code := runIn(t, t.TempDir(), "wrong\n", "login", "-u", "alice", "--password-stdin", host)
			if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "wrong username or password") {
				t.Errorf("login with a wrong password: exit %d, stderr %q", code, stderr)
			}
			if after, _ := os.ReadFile(cfgPath); !bytes.Equal(before, after) {
				t.Errorf("failed login changed config.json:\n%s\n->\n%s", before, after)
			}
			if got := h.stored(t); len(got) != 0 {
				t.Errorf("failed login stored %v", got)
			}

			stdout, stderr, code := runIn(t, t.TempDir(), "s3cret\n", "login", "-u", "alice", "--password-stdin", host)
			if code != 0 || !strings.Contains(stdout, "Login Succeeded (credentials in docker-credential-lbtest)") {
				t.Fatalf("login: exit %d\n%s%s", code, stdout, stderr)
			}
			if got := h.stored(t)[host]; got.Username != "alice" || got.Secret != "s3cret" {
				t.Errorf("helper holds %+v for %s, want alice/s3cret (calls:\n%s)", h.stored(t), host, h.calls(t))
			}
			b, _ := os.ReadFile(cfgPath)
			if bytes.Contains(b, []byte("s3cret")) || bytes.Contains(b, []byte(base64.StdEncoding.EncodeToString([]byte("alice:s3cret")))) {
				t.Errorf("the password is in config.json, not only in the helper:\n%s", b)
			}
			if !bytes.Contains(b, []byte(`"psFormat": "table {{.ID}}"`)) {
				t.Errorf("login lost config.json's other entries:\n%s", b)
			}

			if pushErr, pullErr := checkPushPull(t, host, repo); pushErr != "" || pullErr != "" {
				t.Fatalf("with the helper's credentials: push %q, pull %q\nhelper calls:\n%s", pushErr, pullErr, h.calls(t))
			}
			if !strings.Contains(h.calls(t), "get "+host+"\n") {
				t.Errorf("push and pull did not ask the helper for %s:\n%s", host, h.calls(t))
			}

			stdout, stderr, code = runIn(t, t.TempDir(), "", "logout", host)
			if code != 0 || !strings.Contains(stdout, "Removing login credentials for "+host) {
				t.Fatalf("logout: exit %d\n%s%s", code, stdout, stderr)
			}
			if got := h.stored(t); len(got) != 0 {
				t.Errorf("logout left %v in the helper", got)
			}
			if pushErr, _ := checkPushPull(t, host, repo); !strings.Contains(pushErr, "UNAUTHORIZED") {
				t.Errorf("push after logout: want UNAUTHORIZED, got %q", pushErr)
			}
			stdout, _, code = runIn(t, t.TempDir(), "", "logout", host)
			if code != 0 || !strings.Contains(stdout, "Not logged in to "+host) {
				t.Errorf("second logout: exit %d, %q", code, stdout)
			}
		})
	}
}

// TestLoginAuthsFile logs in with no credential helper configured: the
// credentials go base64 into config.json's auths, which push and pull use,
// and logout removes that entry and nothing else.
func TestLoginAuthsFile(t *testing.T) {
	host := startAuthRegistry(t, "bob", "hunter2")
	cfgPath := writeDockerConfig(t, `{"auths":{"other.example":{"auth":"eDp5"}},"credHelpers":{"x.example":"y"},"x-other-tool":{"keep":true}}`)

	stdout, stderr, code := runIn(t, t.TempDir(), "hunter2\n", "login", "-u", "bob", "--password-stdin", "http://"+host+"/")
	if code != 0 || !strings.Contains(stdout, "Login Succeeded (credentials in "+cfgPath+")") {
		t.Fatalf("login: exit %d\n%s%s", code, stdout, stderr)
	}
	var cfg struct {
		Auths       map[string]struct{ Auth string }
		CredHelpers map[string]string
		Other       struct{ Keep bool } `json:"x-other-tool"`
	}
	b, _ := os.ReadFile(cfgPath)
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if got := cfg.Auths[host].Auth; got != base64.StdEncoding.EncodeToString([]byte("bob:hunter2")) {
		t.Errorf("auths[%s] = %q\n%s", host, got, b)
	}
	if cfg.Auths["other.example"].Auth != "eDp5" || cfg.CredHelpers["x.example"] != "y" || !cfg.Other.Keep {
		t.Errorf("other entries lost:\n%s", b)
	}

	if pushErr, pullErr := checkPushPull(t, host, "auths"); pushErr != "" || pullErr != "" {
		t.Fatalf("with the auths credentials: push %q, pull %q", pushErr, pullErr)
	}

	// -p works as docker's does, with docker's warning.
	if _, stderr, code := runIn(t, t.TempDir(), "", "login", "-u", "bob", "-p", "hunter2", host); code != 0 || !strings.Contains(stderr, "WARNING! Using --password via the CLI is insecure. Use --password-stdin.") {
		t.Errorf("login -p: exit %d, stderr %q", code, stderr)
	}

	stdout, stderr, code = runIn(t, t.TempDir(), "", "logout", host)
	if code != 0 || !strings.Contains(stdout, "Removing login credentials for "+host) {
		t.Fatalf("logout: exit %d\n%s%s", code, stdout, stderr)
	}
	cfg.Auths, cfg.Other.Keep = nil, false
	b, _ = os.ReadFile(cfgPath)
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg.Auths[host]; ok || cfg.Auths["other.example"].Auth != "eDp5" || cfg.CredHelpers["x.example"] != "y" || !cfg.Other.Keep {
		t.Errorf("after logout:\n%s", b)
	}
	if pushErr, _ := checkPushPull(t, host, "auths"); !strings.Contains(pushErr, "UNAUTHORIZED") {
		t.Errorf("push after logout: want UNAUTHORIZED, got %q", pushErr)
	}
}

// TestLoginMissingHelper: a credsStore whose program is not on PATH fails
// the login with one line naming it, before the registry is asked, and
// leaves config.json alone.
func TestLoginMissingHelper(t *testing.T) {
	cfgPath := writeDockerConfig(t, `{"credsStore":"lbuild-no-such-helper"}`)
	_, stderr, code := runIn(t, t.TempDir(), "pw\n", "login", "-u", "u", "--password-stdin", "127.0.0.1:1")
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "docker-credential-lbuild-no-such-helper (credsStore in "+cfgPath+") is not on PATH") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if b, _ := os.ReadFile(cfgPath); string(b) != `{"credsStore":"lbuild-no-such-helper"}` {
		t.Errorf("config.json changed: %s", b)
	}
}

// TestLogoutKeepsOtherKeys: logout drops the registry's entry, however the
// file spells "auths" (encoding/json matches it case-insensitively), keeps
// the other registries' and the keys docker/cli does not know, and says so
// when there is nothing to erase.
func TestLogoutKeepsOtherKeys(t *testing.T) {
	auth := base64.StdEncoding.EncodeToString([]byte("u:p"))
	cfgPath := writeDockerConfig(t, `{"Auths":{"reg.example:5000":{"auth":"`+auth+`"},"keep.example":{"auth":"`+auth+`"}},"x-other-tool":{"keep":true}}`)
	stdout, stderr, code := runIn(t, t.TempDir(), "", "logout", "https://reg.example:5000/")
	if code != 0 || !strings.Contains(stdout, "Removing login credentials for reg.example:5000") {
		t.Fatalf("logout: exit %d\n%s%s", code, stdout, stderr)
	}
	b, _ := os.ReadFile(cfgPath)
	if bytes.Contains(b, []byte("reg.example:5000")) || !bytes.Contains(b, []byte("keep.example")) || !bytes.Contains(b, []byte(`"x-other-tool"`)) {
		t.Errorf("after logout:\n%s", b)
	}
	stdout, _, code = runIn(t, t.TempDir(), "", "logout", "reg.example:5000")
	if code != 0 || !strings.Contains(stdout, "Not logged in to reg.example:5000") {
		t.Errorf("second logout: exit %d, %q", code, stdout)
	}
}
