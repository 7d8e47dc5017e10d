package builder

// The conformance suite: builder/testdata/conformance/<case>/ holds a
// Dockerfile, its context files and want.json, what BuildKit builds from
// them (taken from BuildKit's dockerfile2llb and its integration tests, see
// each case's "why"). One table test builds every case and checks the tree,
// the last layer's entries, the config and which steps a rebuild after an
// edit takes from the cache.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/lbuild/lbuild/internal/imagecfg"
	"github.com/lbuild/lbuild/system"
)

// confCase is a want.json.
type confCase struct {
	Why string `json:"why"` // what BuildKit does, and where that is established
	// Busybox builds local/busybox first (FROM local/busybox); Runc skips
	// the case without runc (it has RUN steps).
	Busybox bool `json:"busybox"`
	Runc    bool `json:"runc"`
	// Setup prepares what git cannot hold: modes (path -> octal), symlinks
	// (path -> target) and hard links (path -> existing path).
	Setup struct {
		Chmod    map[string]string `json:"chmod"`
		Symlink  map[string]string `json:"symlink"`
		Hardlink map[string]string `json:"hardlink"`
		// Tar makes tar archives: name -> (member path -> content); a
		// member ending in "/" is a directory.
		Tar map[string]map[string]string `json:"tar"`
	} `json:"setup"`
	BuildArgs map[string]string `json:"build_args"`
	// Tree is files in the built image's filesystem (absolute paths);
	// Absent those it must not have.
	Tree   map[string]confFile `json:"tree"`
	Absent []string            `json:"absent"`
	// Layer is entries of the image's last layer (tar names).
	Layer  map[string]confFile `json:"layer"`
	Config *confConfig         `json:"config"`
	// History lists strings no history entry may contain.
	HistoryLacks []string `json:"history_lacks"`
	// Rebuilds are builds after an edit, in order, each on the last.
	Rebuilds []confRebuild `json:"rebuilds"`
}

type confFile struct {
	Type     string   `json:"type"` // file, dir, symlink, hardlink (layer only)
	Mode     string   `json:"mode,omitempty"`
	UID      *int     `json:"uid,omitempty"`
	GID      *int     `json:"gid,omitempty"`
	Link     string   `json:"link,omitempty"`     // symlink target, or hard link's tar name
	Content  *string  `json:"content,omitempty"`  // exact content of a file
	Contains []string `json:"contains,omitempty"` // lines the file holds
	Lacks    []string `json:"lacks,omitempty"`    // line prefixes it must not hold
	// SameFile names a path that must be the same inode (hard link).
	SameFile string `json:"same_file,omitempty"`
}

type confConfig struct {
	Env          []string          `json:"env"` // KEY=VALUE entries it must hold
	ExposedPorts []string          `json:"exposed_ports"`
	Labels       map[string]string `json:"labels"`
	WorkingDir   string            `json:"working_dir"`
	User         string            `json:"user"`
	StopSignal   string            `json:"stop_signal"`
	Volumes      []string          `json:"volumes"`
}

type confRebuild struct {
	Name string `json:"name"`
	// Replace edits the Dockerfile: each pair is old, new (old must occur).
	Replace   [][2]string       `json:"replace"`
	Write     map[string]string `json:"write"` // context files to (over)write
	BuildArgs map[string]string `json:"build_args"`
	// Cached maps a step's text as shown to whether it must be CACHED.
	Cached map[string]bool `json:"cached"`
	// Fails: the rebuild must fail with an error holding this.
	Fails string `json:"fails"`
	// SameImage: the rebuild must give the image ID of the build before.
	SameImage bool                `json:"same_image"`
	Config    *confConfig         `json:"config"`
	Tree      map[string]confFile `json:"tree"`
}

func TestConformance(t *testing.T) {
	cases, err := filepath.Glob("testdata/conformance/*/want.json")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, wantPath := range cases {
		dir := filepath.Dir(wantPath)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var c confCase
			b, err := os.ReadFile(wantPath)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &c); err != nil {
				t.Fatalf("%s: %v", wantPath, err)
			}
			if c.Runc {
				needRunc(t)
			}
			r := openRoot(t)
			if c.Busybox {
				withBusybox(t, r)
			}
			ctxDir := confContext(t, dir, &c)
			res, out := mustBuild(t, r, ctxDir, "", func(o *Options) { o.BuildArgs = c.BuildArgs })
			checkTree(t, r, res, c.Tree, c.Absent)
			if len(c.Layer) > 0 {
				ds := res.Image.Config.RootFS.DiffIDs
				checkLayer(t, layerEntries(t, r, ds[len(ds)-1].String()), c.Layer)
			}
			checkConfig(t, res, c.Config)
			for _, h := range res.Image.Config.History {
				for _, s := range c.HistoryLacks {
					if strings.Contains(h.CreatedBy, s) {
						t.Errorf("history entry %q holds %q", h.CreatedBy, s)
					}
				}
			}
			if t.Failed() {
				t.Logf("build output:\n%s", out)
			}
			prev := res.Image.ID
			for _, rb := range c.Rebuilds {
				df, err := os.ReadFile(filepath.Join(ctxDir, "Dockerfile"))
				if err != nil {
					t.Fatal(err)
				}
				s := string(df)
				for _, p := range rb.Replace {
					if !strings.Contains(s, p[0]) {
						t.Fatalf("rebuild %s: the Dockerfile has no %q", rb.Name, p[0])
					}
					s = strings.Replace(s, p[0], p[1], 1)
				}
				writeFiles(t, ctxDir, rb.Write)
				if rb.Fails != "" {
					_, out, err := tryBuild(r, ctxDir, s, func(o *Options) { o.BuildArgs = rb.BuildArgs })
					if err == nil || !strings.Contains(err.Error(), rb.Fails) {
						t.Errorf("rebuild %s: error %v, want one holding %q\n%s", rb.Name, err, rb.Fails, out)
					}
					continue
				}
				res, out := mustBuild(t, r, ctxDir, s, func(o *Options) { o.BuildArgs = rb.BuildArgs })
				seen := map[string]bool{}
				for _, st := range res.Steps {
					if want, ok := rb.Cached[st.Text]; ok {
						seen[st.Text] = true
						if st.Cached != want {
							t.Errorf("rebuild %s: %q cached %v, want %v", rb.Name, st.Text, st.Cached, want)
						}
					}
				}
				for text := range rb.Cached {
					if !seen[text] {
						t.Errorf("rebuild %s: no step %q", rb.Name, text)
					}
				}
				if rb.SameImage && res.Image.ID != prev {
					t.Errorf("rebuild %s: image %s, want %s", rb.Name, res.Image.ID, prev)
				}
				prev = res.Image.ID
				checkConfig(t, res, rb.Config)
				checkTree(t, r, res, rb.Tree, nil)
				if t.Failed() {
					t.Logf("rebuild %s output:\n%s", rb.Name, out)
				}
			}
		})
	}
}

// confContext copies the case's directory (but want.json) to a temp context
// and applies its setup.
func confContext(t *testing.T, src string, c *confCase) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." || rel == "want.json" {
			return nil
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, members := range c.Setup.Tar {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		keys := slices.Sorted(maps.Keys(members))
		for _, m := range keys {
			hdr := &tar.Header{Name: m, Mode: 0o644, Size: int64(len(members[m])), Typeflag: tar.TypeReg, Uid: 42, Gid: 43}
			if strings.HasSuffix(m, "/") {
				hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
			}
			if err := tw.WriteHeader(hdr); err != nil {
				t.Fatal(err)
			}
			tw.Write([]byte(members[m]))
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, name), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for p, target := range c.Setup.Symlink {
		if err := os.Symlink(target, filepath.Join(dst, p)); err != nil {
			t.Fatal(err)
		}
	}
	for p, existing := range c.Setup.Hardlink {
		if err := os.Link(filepath.Join(dst, existing), filepath.Join(dst, p)); err != nil {
			t.Fatal(err)
		}
	}
	for p, m := range c.Setup.Chmod {
		n, err := strconv.ParseUint(m, 8, 32)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dst, p), os.FileMode(n)); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func checkTree(t *testing.T, r *system.Root, res *Result, tree map[string]confFile, absent []string) {
	t.Helper()
	if len(tree) == 0 && len(absent) == 0 {
		return
	}
	img := res.Image
	root, release, err := r.View(context.Background(), img.Config.RootFS.DiffIDs, img.Layers, fmt.Sprintf("conformance-%d", activeSeq.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	for p, w := range tree {
		hp := filepath.Join(root, p)
		fi, err := os.Lstat(hp)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		typ := "file"
		switch {
		case fi.IsDir():
			typ = "dir"
		case fi.Mode()&os.ModeSymlink != 0:
			typ = "symlink"
		}
		var link, content string
		if typ == "symlink" {
			link, _ = os.Readlink(hp)
		}
		if typ == "file" {
			b, _ := os.ReadFile(hp)
			content = string(b)
		}
		checkFile(t, p, w, typ, int64(fi.Mode().Perm()|fi.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)), int(st.Uid), int(st.Gid), link, content)
		if w.SameFile != "" {
			o, err := os.Lstat(filepath.Join(root, w.SameFile))
			if err != nil || !os.SameFile(fi, o) {
				t.Errorf("%s: not the same file as %s (%v)", p, w.SameFile, err)
			}
		}
	}
	for _, p := range absent {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s exists, want it absent", p)
		}
	}
}

func checkLayer(t *testing.T, es []entry, want map[string]confFile) {
	t.Helper()
	for name, w := range want {
		e, ok := find(es, name)
		if !ok {
			t.Errorf("layer lacks %s (has %v)", name, names(es))
			continue
		}
		typ := map[byte]string{'0': "file", '5': "dir", '2': "symlink", '1': "hardlink"}[e.typ]
		checkFile(t, name, w, typ, e.mode, e.uid, e.gid, e.link, e.body)
	}
}

func checkFile(t *testing.T, p string, w confFile, typ string, mode int64, uid, gid int, link, content string) {
	t.Helper()
	if w.Type != "" && w.Type != typ {
		t.Errorf("%s: type %s, want %s", p, typ, w.Type)
	}
	if w.Mode != "" {
		m := fmt.Sprintf("%04o", os.FileMode(mode)&0o7777)
		if mode&^0o7777 != 0 { // Go file mode bits (from Lstat)
			fm := os.FileMode(mode)
			n := int64(fm.Perm())
			if fm&os.ModeSetuid != 0 {
				n |= 0o4000
			}
			if fm&os.ModeSetgid != 0 {
				n |= 0o2000
			}
			if fm&os.ModeSticky != 0 {
				n |= 0o1000
			}
			m = fmt.Sprintf("%04o", n)
		}
		if m != w.Mode {
			t.Errorf("%s: mode %s, want %s", p, m, w.Mode)
		}
	}
	if w.UID != nil && *w.UID != uid {
		t.Errorf("%s: uid %d, want %d", p, uid, *w.UID)
	}
	if w.GID != nil && *w.GID != gid {
		t.Errorf("%s: gid %d, want %d", p, gid, *w.GID)
	}
	if w.Link != "" && w.Link != link {
		t.Errorf("%s: link %q, want %q", p, link, w.Link)
	}
	if w.Content != nil && *w.Content != content {
		t.Errorf("%s: content %q, want %q", p, content, *w.Content)
	}
	for _, l := range strings.Split(content, "\n") {
		for _, prefix := range w.Lacks {
			if strings.HasPrefix(l, prefix) {
				t.Errorf("%s: holds the line %q", p, l)
			}
		}
	}
	for _, l := range w.Contains {
		if !slices.Contains(strings.Split(content, "\n"), l) {
			t.Errorf("%s: no line %q in %q", p, l, content)
		}
	}
}

func checkConfig(t *testing.T, res *Result, w *confConfig) {
	t.Helper()
	if w == nil {
		return
	}
	c := res.Image.Config.Config
	for _, e := range w.Env {
		k, v, _ := strings.Cut(e, "=")
		if got, ok := imagecfg.LookupEnv(c.Env, k); !ok || got != v {
			t.Errorf("config env %s=%q, want %q (env %v)", k, got, v, c.Env)
		}
	}
	for _, p := range w.ExposedPorts {
		if _, ok := c.ExposedPorts[p]; !ok {
			t.Errorf("config exposes %v, want %s", c.ExposedPorts, p)
		}
	}
	for k, v := range w.Labels {
		if c.Labels[k] != v {
			t.Errorf("label %s=%q, want %q", k, c.Labels[k], v)
		}
	}
	if w.WorkingDir != "" && c.WorkingDir != w.WorkingDir {
		t.Errorf("workdir %q, want %q", c.WorkingDir, w.WorkingDir)
	}
	if w.User != "" && c.User != w.User {
		t.Errorf("user %q, want %q", c.User, w.User)
	}
	if w.StopSignal != "" && c.StopSignal != w.StopSignal {
		t.Errorf("stop signal %q, want %q", c.StopSignal, w.StopSignal)
	}
	for _, v := range w.Volumes {
		if _, ok := c.Volumes[v]; !ok {
			t.Errorf("volumes %v, want %s", c.Volumes, v)
		}
	}
}
