package main

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/system"
)

// runTransferCmd runs one subcommand with args against root and returns its
// stdout.
func runTransferCmd(t *testing.T, newCmd func(*globals) *cobra.Command, root string, stdin string, args ...string) (string, error) {
	t.Helper()
	g := &globals{root: root, snapshotter: "copy"}
	cmd := newCmd(g)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.Execute()
	return out.String(), err
}

func transferTestImage(t *testing.T, root, ref string) {
	t.Helper()
	r, err := system.Open(root, system.WithSnapshotter("copy"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	content := []byte("hello from a layer\n")
	tw.WriteHeader(&tar.Header{Name: "hello.txt", Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(1, 0)})
	tw.Write(content)
	tw.Close()
	h, n, err := r.Store.PutBlob(&buf)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{h}}}
	img, err := r.Store.WriteImage(cfg, []v1.Descriptor{{MediaType: types.OCIUncompressedLayer, Digest: h, Size: n}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Store.Tag(ref, img); err != nil {
		t.Fatal(err)
	}
}

func TestTransferCommands(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	remoteRef := u.Host + "/cli/app:1"

	root := t.TempDir()
	transferTestImage(t, root, "app:1")

	out, err := runTransferCmd(t, newPushCmd, root, "", "app:1", remoteRef, "--compression", "zstd")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	if !strings.Contains(out, ": Pushed") || !strings.Contains(out, "1: digest: sha256:") {
		t.Errorf("push output:\n%s", out)
	}
	r, err := system.Open(root, system.WithSnapshotter("copy"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := r.Store.Resolve("app:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runTransferCmd(t, newPushCmd, root, "", img.ID.Hex[:12]); err == nil || !strings.Contains(err.Error(), "name the destination") {
		t.Errorf("push of an ID without REF: %v", err)
	}
	if _, err := runTransferCmd(t, newPushCmd, root, "", "app:1", remoteRef, "--compression", "lz4"); err == nil {
		t.Error("push --compression lz4 succeeded")
	}

	root2 := t.TempDir()
	out, err = runTransferCmd(t, newPullCmd, root2, "", remoteRef)
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	if !strings.Contains(out, ": Pull complete") {
		t.Errorf("pull output:\n%s", out)
	}

	archive := filepath.Join(t.TempDir(), "app.tar")
	if out, err := runTransferCmd(t, newSaveCmd, root2, "", remoteRef, "-o", archive); err != nil {
		t.Fatalf("save: %v\n%s", err, out)
	}
	root3 := t.TempDir()
	out, err = runTransferCmd(t, newLoadCmd, root3, "", "-i", archive)
	if err != nil {
		t.Fatalf("load: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Loaded image: "+remoteRef) {
		t.Errorf("load output:\n%s", out)
	}

	if _, err := runTransferCmd(t, newPullCmd, root2, "", "127.0.0.1:1/nothing:here"); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("pull from a closed port: %v", err)
	}
	if _, err := runTransferCmd(t, newSaveCmd, root2, "", "no-such-image", "-o", archive); err == nil {
		t.Error("save of an unknown image succeeded")
	}
	if _, err := runTransferCmd(t, newLoadCmd, root3, "not a tar"); err == nil {
		t.Error("load of garbage succeeded")
	}
}

func TestLogin(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != "alice" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	dir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dir)
	cfgPath := filepath.Join(dir, "config.json")
	os.WriteFile(cfgPath, []byte(`{"auths":{"other.example":{"auth":"eDp5"}},"credHelpers":{"x":"y"}}`), 0o600)

	if _, err := runTransferCmd(t, newLoginCmd, t.TempDir(), "wrong\n", "-u", "alice", "--password-stdin", host); err == nil || !strings.Contains(err.Error(), "wrong username or password") {
		t.Errorf("login with a wrong password: %v", err)
	}
	out, err := runTransferCmd(t, newLoginCmd, t.TempDir(), "s3cret\n", "-u", "alice", "--password-stdin", host)
	if err != nil {
		t.Fatalf("login: %v\n%s", err, out)
	}
	var cfg struct {
		Auths       map[string]struct{ Auth string }
		CredHelpers map[string]string
	}
	b, _ := os.ReadFile(cfgPath)
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if got := cfg.Auths[host].Auth; got != base64.StdEncoding.EncodeToString([]byte("alice:s3cret")) {
		t.Errorf("auths[%s] = %q\n%s", host, got, b)
	}
	if cfg.Auths["other.example"].Auth != "eDp5" || cfg.CredHelpers["x"] != "y" {
		t.Errorf("other entries lost:\n%s", b)
	}
}
