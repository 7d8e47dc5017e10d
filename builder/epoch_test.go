package builder

import (
	"context"
	"errors"
	"os/exec"
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
