// Package depcheck holds the test that keeps lbuild's data flowing one way.
package depcheck

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/lbuild/lbuild/"

// allowed lists, for every package of the module, the packages of the
// module it may import directly (internal/... is open to everyone below
// cmd). The arrows:
//
//	cmd/lbuild → builder, container, transfer, system, store, …
//	builder → parser, cache, system, transfer, builder/executor → runtime/runc
//	container → system, runtime/runc
//	system → store, cache, snapshot
//	transfer → store
//	remotecache → store, cache, transfer (cmd/lbuild wires it into builder)
//
// container and builder never import each other; only builder/executor
// and container import the runtime driver; nothing imports cmd.
var allowed = map[string][]string{
	"parser":              {},
	"store":               {},
	"snapshot":            {},
	"cache":               {},
	"runtime/runc":        {},
	"system":              {"store", "cache", "snapshot"},
	"transfer":            {"store"},
	"remotecache":         {"store", "cache", "transfer", "snapshot"},
	"builder/progress":    {},
	"builder/executor":    {"runtime/runc"},
	"builder/buildertest": {},
	"builder":             {"parser", "cache", "store", "snapshot", "system", "transfer", "builder/executor", "builder/progress"},
	"container":           {"system", "store", "snapshot", "runtime/runc"},
	"cmd/lbuild":          {"builder", "builder/progress", "container", "system", "store", "transfer", "parser", "cache", "snapshot", "remotecache"},
	"examples":            {},
}

// leaves are the internal helpers that import no other package of lbuild;
// outside imports bounds, for some of them, what they may import besides the
// standard library (by import path prefix).
var (
	leaves        = []string{"internal/fsx", "internal/compression", "internal/erofs"}
	outsideImport = map[string][]string{
		"internal/erofs": {"golang.org/x/sys/"},
	}
)

func TestDependencyDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg := strings.TrimPrefix(f[0], mod)
		seen[pkg] = true
		internal := strings.HasPrefix(pkg, "internal/")
		ok, known := allowed[pkg]
		if !known && !internal {
			t.Errorf("package %s is not in depcheck's table: add it with the packages it may import", pkg)
			continue
		}
		for _, imp := range f[1:] {
			dep, ours := strings.CutPrefix(imp, mod)
			if !ours {
				if allow, bounded := outsideImport[pkg]; bounded && strings.Contains(strings.Split(imp, "/")[0], ".") &&
					!slices.ContainsFunc(allow, func(p string) bool { return strings.HasPrefix(imp, p) }) {
					t.Errorf("%s imports %s: it may import only the standard library and %v", pkg, imp, allow)
				}
				continue
			}
			switch {
			case strings.HasPrefix(dep, "cmd/"):
				t.Errorf("%s imports %s: nothing imports the CLI", pkg, dep)
			case strings.HasPrefix(dep, "internal/"):
				if internal && !strings.HasPrefix(pkg, "internal/") {
					t.Errorf("%s imports %s", pkg, dep)
				}
				if slices.Contains(leaves, pkg) && !slices.Contains(leaves, dep) {
					t.Errorf("%s imports %s: the leaf helpers import no other package of lbuild", pkg, dep)
				}
			case internal:
				t.Errorf("%s imports %s: internal helpers sit below every package of lbuild", pkg, dep)
			case !slices.Contains(ok, dep):
				t.Errorf("%s imports %s: not one of the arrows %s may follow (%v)", pkg, dep, pkg, ok)
			}
		}
	}
	for pkg := range allowed {
		if !seen[pkg] {
			t.Errorf("depcheck's table names %s, which no longer exists", pkg)
		}
	}
}
