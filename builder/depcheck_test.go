package builder

import (
	"os/exec"
	"strings"
	"testing"
)

// Data flows one way: cmd → builder → parser, cache, snapshot. Nothing below
// the builder may import it (or the CLI), and the packages below must not
// import each other upward.
func TestDependencyDirection(t *testing.T) {
	const mod = "github.com/lbuild/lbuild/"
	forbidden := map[string][]string{
		"parser":           {"builder", "cmd", "cache", "snapshot"},
		"cache":            {"builder", "cmd", "snapshot", "parser"},
		"snapshot":         {"builder", "cmd", "cache", "parser"},
		"cache/store":      {"builder", "cmd", "snapshot", "parser"},
		"cache/transfer":   {"builder", "cmd", "snapshot", "parser"},
		"builder/executor": {"cmd", "parser", "cache", "snapshot"},
	}
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", mod+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if !strings.HasPrefix(dep, mod) || dep == mod+pkg {
				continue
			}
			rel := strings.TrimPrefix(dep, mod)
			for _, b := range bad {
				if rel == b || strings.HasPrefix(rel, b+"/") {
					t.Errorf("%s imports %s: data must flow cmd → builder → parser, cache, snapshot", pkg, rel)
				}
			}
		}
	}
}
