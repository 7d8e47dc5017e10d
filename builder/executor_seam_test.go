package builder

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/lbuild/lbuild/builder/executor"
	"github.com/lbuild/lbuild/system"
)

// fakeExecutor "runs" a RUN step by writing its argv into the rootfs.
type fakeExecutor struct{ runs [][]string }

func (f *fakeExecutor) Run(ctx context.Context, rootfs string, meta executor.Meta) error {
	f.runs = append(f.runs, meta.Args)
	return os.WriteFile(filepath.Join(rootfs, "ran"), []byte(meta.Args[len(meta.Args)-1]), 0o644)
}

// Options.Executor replaces the OCI runtime: the builder hands it each RUN's
// final argv and commits what it wrote, with no runc involved.
func TestExecutorSeam(t *testing.T) {
	r, err := system.Open(t.TempDir(), system.WithSnapshotter("copy"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fake := &fakeExecutor{}
	res, _, err := tryBuild(r, dir, "FROM scratch\nRUN echo hi\n", func(o *Options) { o.Executor = fake })
	if err != nil {
		t.Fatal(err)
	}
	if len(fake.runs) != 1 || fake.runs[0][len(fake.runs[0])-1] != "echo hi" {
		t.Fatalf("fake executor ran %q", fake.runs)
	}
	es := layerEntries(t, r, res.Steps[len(res.Steps)-1].DiffID)
	if e, ok := find(es, "ran"); !ok || e.body != "echo hi" {
		t.Errorf("RUN layer entries %v", names(es))
	}
}
