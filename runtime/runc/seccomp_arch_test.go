package runc

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestRunnableArchesDropsOnlyX32(t *testing.T) {
	docker := []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	if got := runnableArches(docker, true); !slices.Equal(got, docker) {
		t.Errorf("x32 runs: %v, want %v", got, docker)
	}
	if got, want := runnableArches(docker, false), []specs.Arch{specs.ArchX86_64, specs.ArchX86}; !slices.Equal(got, want) {
		t.Errorf("no x32: %v, want %v", got, want)
	}
	if docker[2] != specs.ArchX32 {
		t.Error("runnableArches changed its argument")
	}
	arm := []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	if got := runnableArches(arm, false); !slices.Equal(got, arm) {
		t.Errorf("arm64: %v, want %v", got, arm)
	}
}

// The spec's profile keeps the 32-bit x86 ABI (i386 binaries run in
// containers as under docker) and leaves out x32 exactly when this kernel
// cannot run it.
func TestSpecSeccompArchitectures(t *testing.T) {
	s, err := generateSpec("/rootfs", t.TempDir(), &Meta{Args: []string{"true"}}, wantNofile)
	if err != nil {
		t.Fatal(err)
	}
	arches := s.Linux.Seccomp.Architectures
	if len(arches) == 0 {
		t.Skip("no architectures in the profile for this machine")
	}
	if slices.Contains(arches, specs.ArchX86_64) && !slices.Contains(arches, specs.ArchX86) {
		t.Errorf("profile lost the i386 ABI: %v", arches)
	}
	if has := slices.Contains(arches, specs.ArchX32); has != x32Runs() {
		t.Errorf("x32 in the profile: %v, kernel runs x32: %v (%v)", has, x32Runs(), arches)
	}
	u, err := generateSpec("/rootfs", t.TempDir(), &Meta{Args: []string{"true"}, SeccompUnconfined: true}, wantNofile)
	if err != nil {
		t.Fatal(err)
	}
	if u.Linux.Seccomp != nil {
		t.Error("unconfined spec has a profile")
	}
}

// A 32-bit x86 program (Go's 386 port: its system calls go through the
// i386 ABI) runs under the default profile: the i386 architecture stays in
// the filter whatever is trimmed for speed.
func TestRunI386ProgramUnderSeccomp(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go toolchain to build a 386 program")
	}
	src := t.TempDir()
	prog := "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\tb, err := os.ReadFile(\"/etc/hostname\")\n\tfmt.Printf(\"i386 pid %d %v %d\\n\", os.Getpid(), err, len(b))\n}\n"
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module i386\n\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, rootfs := newRunc(t), newRootfs(t)
	bin := filepath.Join(rootfs, "bin", "i386prog")
	cmd := exec.Command(goBin, "build", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOARCH=386", "CGO_ENABLED=0", "GOFLAGS=", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("cannot build a 386 program here: %v: %s", err, out)
	}
	if out, err := exec.Command(bin).CombinedOutput(); err != nil {
		t.Skipf("this kernel runs no i386 programs: %v: %s", err, out)
	}
	out := mustRun(t, r, rootfs, Meta{Args: []string{"/bin/i386prog"}})
	if !strings.HasPrefix(out, "i386 pid 1 <nil> ") {
		t.Errorf("386 program under the default profile: got %q", out)
	}
}

// The x32 probe runs only where it is safe: on amd64, with no seccomp
// filter on lbuild itself (a filter without x32 would kill the thread).
func TestX32ProbeOnlyWhenUnfiltered(t *testing.T) {
	for _, c := range []struct {
		arch, mode string
		probed     bool
		want       bool
	}{
		{"amd64", "0", true, false}, // unfiltered: the probe decides
		{"amd64", "2", false, true}, // under a filter: keep x32, no probe
		{"amd64", "", false, true},  // status unreadable: same
		{"arm64", "0", false, true}, // not amd64: nothing to drop
	} {
		probed := false
		got := x32Decide(c.arch, c.mode, func() bool { probed = true; return false })
		if got != c.want || probed != c.probed {
			t.Errorf("x32Decide(%s, %q) = %v (probed %v), want %v (probed %v)", c.arch, c.mode, got, probed, c.want, c.probed)
		}
	}
	if m := seccompMode(); m != "0" && m != "1" && m != "2" {
		t.Errorf("seccompMode() = %q, want 0, 1 or 2", m)
	}
}
