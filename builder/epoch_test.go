package builder

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestParseSourceDateEpoch(t *testing.T) {
	for _, tc := range []struct {
		in    string
		want  time.Time
		fixed bool
		bad   bool
	}{
		{in: "0", want: time.Unix(0, 0), fixed: true},
		{in: "1700000000", want: time.Unix(1700000000, 0), fixed: true},
		{in: " 1700000000\n", want: time.Unix(1700000000, 0), fixed: true}, // $(cat file)
		{in: "now"},
		{in: "-1", bad: true},
		{in: "1.5", bad: true},
		{in: "", bad: true},
		{in: "yesterday", bad: true},
		{in: "99999999999999", bad: true},
	} {
		got, fixed, err := ParseSourceDateEpoch(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("%q: err %v, want bad=%v", tc.in, err, tc.bad)
			continue
		}
		if !tc.bad && (fixed != tc.fixed || !got.Equal(tc.want)) {
			t.Errorf("%q: %s fixed=%v, want %s fixed=%v", tc.in, got, fixed, tc.want, tc.fixed)
		}
	}
}

func TestGitCommitTimeOutsideGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	if _, err := gitCommitTime(context.Background(), dir); !errors.Is(err, errNotInGit) {
		t.Errorf("outside a work tree: %v, want errNotInGit", err)
	}
	if out, err := exec.Command("git", "-C", dir, "init", "-q").CombinedOutput(); err != nil {
		t.Fatalf("git init: %v %s", err, out)
	}
	if _, err := gitCommitTime(context.Background(), dir); !errors.Is(err, errNotInGit) {
		t.Errorf("no commits yet: %v, want errNotInGit", err)
	}
	bt, err := resolveBuildTime(context.Background(), "", dir, time.Now)
	if err != nil || !bt.fixed || bt.t.Unix() != 0 {
		t.Errorf("default build time: %+v %v, want 1970-01-01", bt, err)
	}
}

// git is started only where it could find a repository, and then still
// finds it: a context in a subdirectory of a work tree gets HEAD's commit
// time; a bare repository or GIT_DIR also make lbuild ask git.
func TestGitLookupOnlyWhereARepositoryCanBe(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	t.Setenv("GIT_DIR", "")
	os.Unsetenv("GIT_DIR")
	plain := t.TempDir()
	if mayBeInGit(plain) {
		t.Errorf("mayBeInGit(%s) = true for a directory outside any repository", plain)
	}
	work := t.TempDir()
	sub := filepath.Join(work, "app", "ctx")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	git := func(dir string, args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t",
			"GIT_COMMITTER_EMAIL=t@t", "GIT_COMMITTER_DATE=1700000000 +0000", "GIT_AUTHOR_DATE=1700000000 +0000")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	git(work, "init", "-q")
	git(work, "commit", "-q", "--allow-empty", "-m", "x")
	if !mayBeInGit(sub) {
		t.Errorf("mayBeInGit(%s) = false inside a work tree", sub)
	}
	if got, err := gitCommitTime(context.Background(), sub); err != nil || got.Unix() != 1700000000 {
		t.Errorf("commit time from a subdirectory: %v %v, want 1700000000", got, err)
	}
	// A context reached through a symlink: git resolves it.
	link := filepath.Join(t.TempDir(), "proj")
	if err := os.Symlink(filepath.Join(work, "app"), link); err != nil {
		t.Fatal(err)
	}
	if !mayBeInGit(filepath.Join(link, "ctx")) {
		t.Error("mayBeInGit = false for a context reached through a symlink into a work tree")
	}
	if got, err := gitCommitTime(context.Background(), filepath.Join(link, "ctx")); err != nil || got.Unix() != 1700000000 {
		t.Errorf("commit time through a symlink: %v %v, want 1700000000", got, err)
	}
	bare := filepath.Join(t.TempDir(), "r.git")
	git(filepath.Dir(bare), "init", "-q", "--bare", bare)
	if !mayBeInGit(bare) {
		t.Error("mayBeInGit = false in a bare repository")
	}
	t.Setenv("GIT_DIR", filepath.Join(work, ".git"))
	if !mayBeInGit(plain) {
		t.Error("mayBeInGit = false with GIT_DIR set")
	}
}
