package rootpath

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestResolve(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/bin/sh"), nil, 0o755)
	os.Symlink("usr/bin", filepath.Join(root, "bin"))     // relative
	os.Symlink("/usr", filepath.Join(root, "abs"))        // absolute: inside root
	os.Symlink("../../../etc", filepath.Join(root, "up")) // climbs: stops at root
	os.Symlink("loop", filepath.Join(root, "loop"))
	for _, tc := range []struct {
		in, want string
		missing  bool
		err      error
	}{
		{in: "/bin/sh", want: "usr/bin/sh"},
		{in: "abs/bin/../bin/sh", want: "usr/bin/sh"},
		{in: "/../../usr", want: "usr"},
		{in: "up/passwd", want: "etc/passwd", missing: true},
		{in: "up/passwd", err: fs.ErrNotExist},
		{in: "bin/new/dir", want: "usr/bin/new/dir", missing: true},
		{in: "usr/bin/sh/x", err: syscall.ENOTDIR},
		{in: "loop/x", err: syscall.ELOOP},
		{in: "/", want: ""},
	} {
		got, err := Resolve(root, tc.in, Options{Missing: tc.missing})
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("Resolve(%q) = %q, %v; want error %v", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Resolve(%q, missing=%v) = %q, %v; want %q", tc.in, tc.missing, got, err, tc.want)
		}
	}
	// Visit sees every path reached, through links too, and can stop it.
	var seen []string
	stop := errors.New("stop")
	_, err := Resolve(root, "bin/sh", Options{Visit: func(rel string, last bool) error {
		seen = append(seen, rel)
		if rel == "usr/bin/sh" {
			return stop
		}
		return nil
	}})
	if !errors.Is(err, stop) || len(seen) != 4 || seen[0] != "bin" {
		t.Errorf("visits %q, err %v", seen, err)
	}
	if p, err := Join(root, "/abs/lib"); err != nil || p != filepath.Join(root, "usr/lib") {
		t.Errorf("Join = %q, %v", p, err)
	}
}
