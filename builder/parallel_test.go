package builder

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// parallelDockerfile has a diamond of stages: base, then a and b on it
// (independent), then the target copying from both and from a stage (c)
// nothing else needs.
const parallelDockerfile = `FROM local/busybox AS base
RUN echo base > /base

FROM base AS a
RUN echo from-a && echo a > /a

FROM base AS b
RUN echo from-b && echo b > /b

FROM local/busybox AS c
COPY data.txt /c

FROM local/busybox
COPY --from=a /a /base /
COPY --from=b /b /b
COPY --from=c /c /c
RUN cat /a /b /c /base
`

// A build with stages in parallel gives the same image, byte for byte, as
// the same build one stage at a time (each in a fresh store: nothing cached).
func TestParallelStagesSameImageAsSerial(t *testing.T) {
	needRunc(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"data.txt": "c\n"})
	var ids []string
	for _, n := range []int{1, 4} {
		r := openRoot(t)
		withBusybox(t, r)
		res, out := mustBuild(t, r, dir, parallelDockerfile, func(o *Options) { o.Parallel = n })
		ids = append(ids, res.Image.ID.String())
		// Steps come in step order, however the stages interleaved.
		for i := 1; i < len(res.Steps); i++ {
			if res.Steps[i].ID <= res.Steps[i-1].ID {
				t.Errorf("parallel=%d: steps out of order: %d after %d", n, res.Steps[i].ID, res.Steps[i-1].ID)
			}
		}
		// Each RUN's output is shown under its own step.
		for _, stage := range []string{"a", "b"} {
			m := regexp.MustCompile(`(?m)^#(\d+) \[` + stage + ` 2/2\] RUN`).FindStringSubmatch(out)
			if m == nil || !regexp.MustCompile(`(?m)^#`+m[1]+` [0-9.]+ from-`+stage+`$`).MatchString(out) {
				t.Errorf("parallel=%d: output of stage %s not under its step:\n%s", n, stage, out)
			}
		}
	}
	if ids[0] != ids[1] {
		t.Errorf("serial build %s, parallel build %s", ids[0], ids[1])
	}
}

// Independent stages run at the same time: each RUN waits (through a
// shared cache mount) until the other has started, which a build of one
// stage after another never gets past (it fails after 60 s instead).
func TestParallelStagesRunAtOnce(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	wait := func(me, other string) string {
		return `RUN --mount=type=cache,id=rendezvous,target=/r touch /r/` + me +
			` && i=0; while [ ! -e /r/` + other + ` ]; do i=$((i+1)); [ $i -lt 600 ] || exit 9; sleep 0.1; done; echo ` + me + ` > /` + me
	}
	df := "FROM local/busybox AS one\n" + wait("one", "two") + "\n\nFROM local/busybox AS two\n" + wait("two", "one") +
		"\n\nFROM local/busybox\nCOPY --from=one /one /one\nCOPY --from=two /two /two\n"
	res, out := mustBuild(t, r, dir, df, func(o *Options) { o.Parallel = 2; o.NoCache = true })
	if res.Image == nil {
		t.Fatalf("no image:\n%s", out)
	}
}

// When a stage fails, the stages building at the same time are stopped
// (their RUN killed: it never gets to its end) and the build reports the
// failure, not the cancellation.
func TestParallelStageFailureCancelsOthers(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	df := `FROM local/busybox AS slow
RUN --mount=type=cache,id=cancel,target=/r touch /r/slow-started && sleep 30 && touch /r/slow-finished

FROM local/busybox AS bad
RUN --mount=type=cache,id=cancel,target=/r i=0; while [ ! -e /r/slow-started ]; do i=$((i+1)); [ $i -lt 600 ] || exit 9; sleep 0.1; done; exit 3

FROM local/busybox
COPY --from=slow /etc/passwd /a
COPY --from=bad /etc/passwd /b
`
	_, out, err := tryBuild(r, dir, df, func(o *Options) { o.Parallel = 2; o.NoCache = true })
	if err == nil {
		t.Fatalf("build succeeded:\n%s", out)
	}
	if !strings.Contains(err.Error(), "exit code 3") {
		t.Errorf("error %q, want the failing stage's (exit code 3)", err)
	}
	ents, _ := filepath.Glob(filepath.Join(r.CacheMountDir(), "*", "slow-*"))
	var seen []string
	for _, e := range ents {
		seen = append(seen, filepath.Base(e))
	}
	if strings.Join(seen, " ") != "slow-started" {
		t.Errorf("cache mount holds %v, want slow-started only (the slow RUN killed)", seen)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.Dir, "snapshots", "active")); len(ents) != 0 {
		t.Errorf("active snapshots left: %d", len(ents))
	}
	if _, out, err := tryBuild(r, t.TempDir(), "FROM local/busybox\nRUN echo after > /after\n"); err != nil {
		t.Fatalf("the store is unusable after the failure: %v\n%s", err, out)
	}
}
