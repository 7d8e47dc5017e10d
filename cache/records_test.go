package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRecordsRoundTrip(t *testing.T) {
	r, err := OpenRecords(filepath.Join(t.TempDir(), "records"))
	if err != nil {
		t.Fatal(err)
	}
	k := NewKey("", "RUN", "make")
	if _, err := r.Get(k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of absent key = %v", err)
	}
	want := &Record{
		Key:       k,
		DiffID:    "sha256:" + strings.Repeat("1", 64),
		Size:      1234,
		Created:   time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		CreatedBy: "RUN make",
		Config:    json.RawMessage(`{"env":["A=1"]}`),
	}
	if err := r.Put(want); err != nil {
		t.Fatal(err)
	}
	got, err := r.Get(k)
	if err != nil {
		t.Fatal(err)
	}
	if got.Key != want.Key || got.DiffID != want.DiffID || got.Size != want.Size ||
		!got.Created.Equal(want.Created) || got.CreatedBy != want.CreatedBy ||
		got.EmptyLayer || string(got.Config) != string(want.Config) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	meta := &Record{Key: NewKey(k, "ENV", "A=1"), Created: time.Now(), CreatedBy: "ENV A=1", EmptyLayer: true}
	if err := r.Put(meta); err != nil {
		t.Fatal(err)
	}
	var walked []Key
	if err := r.Walk(func(rec *Record) error { walked = append(walked, rec.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(walked) != 2 {
		t.Fatalf("Walk saw %v", walked)
	}
	stop := errors.New("stop")
	if err := r.Walk(func(*Record) error { return stop }); err != stop {
		t.Fatalf("Walk error = %v", err)
	}
	if err := r.Delete(k); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete = %v", err)
	}
	if err := r.Delete(k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete = %v", err)
	}
	if _, err := r.Get("sha256:../../etc/passwd"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of invalid key = %v", err)
	}
	if err := r.Put(&Record{Key: "bogus"}); err == nil {
		t.Fatal("Put of invalid key succeeded")
	}
	if ents, _ := os.ReadDir(r.Dir()); len(ents) != 1 {
		t.Fatalf("record dir holds %d files, want 1", len(ents))
	}
}

func TestRecordsCorrupt(t *testing.T) {
	r, err := OpenRecords(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	k := NewKey("", "COPY", ".")
	other := NewKey("", "other")
	if err := r.Put(&Record{Key: k, CreatedBy: "COPY . /app", Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(r.Dir(), k.Hex()+".json"))
	swapped, _ := json.Marshal(&Record{Key: other})
	for name, content := range map[string][]byte{
		"empty":     nil,
		"truncated": good[:len(good)/2],
		"garbage":   []byte("\x00\xff not json"),
		"array":     []byte(`[1,2]`),
		"other key": swapped,
	} {
		if err := os.WriteFile(filepath.Join(r.Dir(), k.Hex()+".json"), content, 0o644); err != nil {
			t.Fatal(err)
		}
		rec, err := r.Get(k)
		if !errors.Is(err, ErrCorrupt) || rec != nil {
			t.Errorf("%s: Get = %v, %v; want ErrCorrupt", name, rec, err)
		}
		n := 0
		if err := r.Walk(func(*Record) error { n++; return nil }); err != nil || n != 0 {
			t.Errorf("%s: Walk = %d records, %v", name, n, err)
		}
	}
	// A Put repairs it.
	if err := r.Put(&Record{Key: k}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(k); err != nil {
		t.Fatal(err)
	}
}

func TestRecordsConcurrentPut(t *testing.T) {
	r, err := OpenRecords(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	k := NewKey("", "RUN", "x")
	big := json.RawMessage(`"` + strings.Repeat("x", 64<<10) + `"`)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// Readers never see a partial record.
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := r.Get(k); err != nil && !errors.Is(err, ErrNotFound) {
					t.Error(err)
					return
				}
			}
		})
	}
	var writers sync.WaitGroup
	for g := range 8 {
		writers.Go(func() {
			for i := range 20 {
				rec := &Record{Key: k, CreatedBy: fmt.Sprintf("%d/%d", g, i), Config: big}
				if err := r.Put(rec); err != nil {
					t.Error(err)
				}
			}
		})
	}
	writers.Wait()
	close(stop)
	wg.Wait()
	if _, err := r.Get(k); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(r.Dir())
	if len(ents) != 1 {
		t.Fatalf("%d files left, want 1 (temp files leaked?)", len(ents))
	}
}

const recordsHelperEnv = "LBUILD_CACHE_RECORDS_HELPER"

// TestHelperPutProcess is run in child processes by
// TestRecordsConcurrentPutProcesses.
func TestHelperPutProcess(t *testing.T) {
	dir := os.Getenv(recordsHelperEnv)
	if dir == "" {
		t.Skip("helper process")
	}
	r, err := OpenRecords(dir)
	if err != nil {
		t.Fatal(err)
	}
	k := NewKey("", "same")
	for i := range 200 {
		if err := r.Put(&Record{Key: k, CreatedBy: fmt.Sprint(os.Getpid(), i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Get(k); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRecordsConcurrentPutProcesses(t *testing.T) {
	dir := t.TempDir()
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPutProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), recordsHelperEnv+"="+dir)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, &out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper: %v\n%s", err, outs[i])
		}
	}
	r, _ := OpenRecords(dir)
	if _, err := r.Get(NewKey("", "same")); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%d files, want 1", len(ents))
	}
}
