package store

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestMeta(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Meta("sources", "abc"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing record: %v, want ErrNotFound", err)
	}
	if keys, err := s.MetaKeys("sources"); err != nil || len(keys) != 0 {
		t.Fatalf("MetaKeys of an empty kind: %v %v", keys, err)
	}
	for _, kv := range [][2]string{{"b.gzip-6.json", "1"}, {"a", "2"}, {"a", "3"}} {
		if err := s.SetMeta("sources", kv[0], []byte(kv[1])); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := s.Meta("sources", "a"); err != nil || string(b) != "3" {
		t.Errorf("Meta = %q, %v; want the last value", b, err)
	}
	if keys, _ := s.MetaKeys("sources"); !reflect.DeepEqual(keys, []string{"a", "b.gzip-6.json"}) {
		t.Errorf("MetaKeys = %v", keys)
	}
	// The on-disk place is part of the contract (older lbuild wrote there).
	if b, err := os.ReadFile(filepath.Join(s.Dir(), ".sources", "a")); err != nil || string(b) != "3" {
		t.Errorf("record file: %q %v", b, err)
	}
	// Nothing left behind in .ingest.
	if ents, _ := os.ReadDir(filepath.Join(s.Dir(), ingestDir)); len(ents) != 0 {
		t.Errorf(".ingest not empty: %v", ents)
	}
	for _, bad := range [][2]string{{"ingest", "x"}, {"Sources", "x"}, {"", "x"}, {"a/b", "x"}, {"sources", "../x"}, {"sources", ".x"}, {"sources", ""}, {"sources", "a/b"}} {
		if err := s.SetMeta(bad[0], bad[1], []byte("v")); err == nil {
			t.Errorf("SetMeta(%q, %q) accepted", bad[0], bad[1])
		}
		if _, err := s.Meta(bad[0], bad[1]); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Meta(%q, %q): %v, want an invalid-name error", bad[0], bad[1], err)
		}
	}
	// GC leaves records alone.
	if _, err := s.GC(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Meta("sources", "a"); err != nil {
		t.Errorf("after GC: %v", err)
	}
}
