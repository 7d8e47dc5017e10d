package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestCLIBuildExplain(t *testing.T) {
	root := t.TempDir()
	dir := ctxDir(t, "FROM scratch\nARG V=1\nCOPY src /src\nLABEL v=$V\n", map[string]string{"src/a": "a", "src/b": "b"})
	if _, stderr, code := run(t, root, "build", "--progress=plain", dir); code != 0 {
		t.Fatalf("build: %s", stderr)
	}
	os.WriteFile(filepath.Join(dir, "src/a"), []byte("A"), 0o644)
	stdout, stderr, code := run(t, root, "build", "--progress=plain", "--explain=json", "--build-arg", "V=2", dir)
	if code != 0 {
		t.Fatalf("build --explain=json: %s", stderr)
	}
	type change struct{ Path, Change string }
	type arg struct{ Name, Old, New string }
	var steps []struct {
		Step        int      `json:"step"`
		Stage       string   `json:"stage"`
		Instruction string   `json:"instruction"`
		Cached      bool     `json:"cached"`
		Reason      string   `json:"reason"`
		Files       []change `json:"files"`
		Args        []arg    `json:"args"`
		ParentStep  int      `json:"parent_step"`
	}
	if err := json.Unmarshal([]byte(stdout), &steps); err != nil || len(steps) != 4 {
		t.Fatalf("stdout is not the 4 steps as JSON: %v\n%s", err, stdout)
	}
	if s := steps[1]; s.Step != 2 || s.Instruction != "ARG V=2" || !s.Cached || s.Reason != "" {
		t.Errorf("ARG step: %+v", s)
	}
	if s := steps[2]; s.Step != 3 || s.Cached || s.Reason != "files" || !reflect.DeepEqual(s.Files, []change{{"src/a", "modified"}}) {
		t.Errorf("COPY step: %+v", s)
	}
	if s := steps[3]; s.Cached || s.Reason != "arg" || !reflect.DeepEqual(s.Args, []arg{{"V", "1", "2"}}) {
		t.Errorf("LABEL step: %+v", s)
	}
	for _, want := range []string{"#3 MISS files: src/a modified\n", "#4 MISS arg: V 1 → 2\n"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("progress (stderr) lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stdout, "#3") {
		t.Errorf("progress on stdout:\n%s", stdout)
	}

	// --explain (text) prints no JSON; a bad mode is one clear error.
	stdout, stderr, _ = run(t, root, "build", "--progress=plain", "--explain", dir)
	if stdout != "" || !strings.Contains(stderr, "CACHED") {
		t.Errorf("--explain: stdout %q, stderr:\n%s", stdout, stderr)
	}
	_, stderr, code = run(t, root, "build", "--explain=yaml", dir)
	if code == 0 || !strings.Contains(stderr, "--explain=yaml: use --explain or --explain=json") {
		t.Errorf("--explain=yaml: exit %d: %s", code, stderr)
	}
}

// Explanations work on a fresh store that imported the cache of another:
// the steps' input manifests travel with the exported records.
func TestCLIExplainFromImportedCache(t *testing.T) {
	root1, root2 := t.TempDir(), t.TempDir()
	cacheDir := filepath.Join(t.TempDir(), "cache")
	dir := ctxDir(t, "FROM scratch\nCOPY src/ /src/\nLABEL x=y\n", map[string]string{"src/a": "a", "src/b": "b"})
	if _, stderr, code := run(t, root1, "build", "--cache-to", "type=local,dest="+cacheDir, dir); code != 0 {
		t.Fatalf("exporting build: %s", stderr)
	}
	os.WriteFile(filepath.Join(dir, "src/a"), []byte("A"), 0o644)
	os.Remove(filepath.Join(dir, "src/b"))
	os.WriteFile(filepath.Join(dir, "src/c"), []byte("c"), 0o644)
	stdout, stderr, code := run(t, root2, "build", "--progress=plain", "--explain=json", "--cache-from", "type=local,src="+cacheDir, dir)
	if code != 0 {
		t.Fatalf("build on a fresh store: %s", stderr)
	}
	type change struct{ Path, Change string }
	var steps []struct {
		Instruction string   `json:"instruction"`
		Cached      bool     `json:"cached"`
		Reason      string   `json:"reason"`
		Files       []change `json:"files"`
	}
	if err := json.Unmarshal([]byte(stdout), &steps); err != nil || len(steps) != 3 {
		t.Fatalf("stdout is not the 3 steps as JSON: %v\n%s", err, stdout)
	}
	want := []change{{"src/a", "modified"}, {"src/b", "removed"}, {"src/c", "added"}}
	if s := steps[1]; s.Cached || s.Reason != "files" || !reflect.DeepEqual(s.Files, want) {
		t.Errorf("COPY on a fresh store: %+v, want files %v", s, want)
	}
	if s := steps[2]; s.Cached || s.Reason != "parent" {
		t.Errorf("LABEL after it: %+v", s)
	}
}
