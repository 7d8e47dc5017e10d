package cache

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// FuzzNewKey: a key is a pure function of its inputs (same inputs, same
// key), always valid, and another split of the same bytes into parts, or
// another parent, gives another key.
func FuzzNewKey(f *testing.F) {
	f.Add("", "FROM scratch", "linux/amd64", uint(0))
	f.Add("sha256:"+strings.Repeat("a", 64), "RUN echo hi", "parent=sha256:0", uint(3))
	f.Add("x", "", "", uint(1))
	f.Fuzz(func(t *testing.T, parent, a, b string, split uint) {
		k := NewKey(Key(parent), a, b)
		if err := k.Validate(); err != nil {
			t.Fatal(err)
		}
		if k2 := NewKey(Key(parent), a, b); k2 != k {
			t.Fatalf("same inputs, keys %s and %s", k, k2)
		}
		if k.String() != "sha256:"+k.Hex() {
			t.Fatalf("String %q, Hex %q", k.String(), k.Hex())
		}
		s := a + b
		n := int(split % uint(len(s)+1))
		if s[:n] != a {
			if NewKey(Key(parent), s[:n], s[n:]) == k {
				t.Fatalf("(%q,%q) and (%q,%q) give the same key", a, b, s[:n], s[n:])
			}
		}
		if NewKey(Key(parent), s) == k || NewKey(Key(parent+"x"), a, b) == k || NewKey(Key(parent), a, b, "") == k {
			t.Fatal("different inputs give the same key")
		}
	})
}

// FuzzChecksum: the checksum of a tree built from the input is the same
// with and without a file index, unchanged by new timestamps, and changed
// by new content; nothing panics.
func FuzzChecksum(f *testing.F) {
	f.Add([]byte("a\x00hello\x00b\x00\x00sub\x00world"), uint16(0o644))
	f.Add([]byte("x"), uint16(0o4755))
	f.Add([]byte(""), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, mode uint16) {
		dir := t.TempDir()
		var entries []Entry
		var firstFile string
		toks := bytes.Split(data, []byte{0})
		seen := map[string]bool{}
		for i := 0; i+1 < len(toks) && len(entries) < 16; i += 2 {
			name := strings.Map(func(r rune) rune {
				if r == '/' || r < ' ' {
					return '_'
				}
				return r
			}, string(toks[i]))
			if name == "" || name == "." || name == ".." || len(name) > 100 || seen[name] {
				continue
			}
			seen[name] = true
			p := filepath.Join(dir, name)
			perm := os.FileMode(mode)&0o777 | 0o400 // readable, to be hashed
			if err := os.WriteFile(p, toks[i+1], perm); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, perm)
			if firstFile == "" {
				firstFile = p
			}
			entries = append(entries, Entry{Rel: name, Abs: p})
		}
		plain, err := Checksum(nil, entries)
		if err != nil {
			t.Fatal(err)
		}
		x, err := OpenFileIndex(filepath.Join(t.TempDir(), "index"))
		if err != nil {
			t.Fatal(err)
		}
		for range 2 { // a miss, then hits
			if sum, err := Checksum(x, entries); err != nil || sum != plain {
				t.Fatalf("with an index: %s %v, without: %s", sum, err, plain)
			}
		}
		if firstFile == "" {
			return
		}
		later := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		for _, e := range entries {
			os.Chtimes(e.Abs, later, later)
		}
		if sum, err := Checksum(nil, entries); err != nil || sum != plain {
			t.Fatalf("timestamps changed the checksum: %s %v, was %s", sum, err, plain)
		}
		b, _ := os.ReadFile(firstFile)
		if err := os.WriteFile(firstFile, append(b, 'z'), 0); err != nil {
			t.Fatal(err)
		}
		if sum, err := Checksum(nil, entries); err != nil || sum == plain {
			t.Fatalf("new content kept the checksum: %s %v", sum, err)
		}
	})
}

// FuzzDecodeIndex: a file index read back from disk never panics, and what
// it decodes encodes back to the same entries.
func FuzzDecodeIndex(f *testing.F) {
	f.Add(encodeIndex(map[string]fileEntry{"/a/b": {hashedAt: 1, used: 2}})[len(indexMagic):])
	f.Add(encodeIndex(map[string]fileEntry{})[len(indexMagic):])
	f.Fuzz(func(t *testing.T, body []byte) {
		b := append([]byte(indexMagic), body...)
		sum := sha256.Sum256(b)
		m, err := decodeIndex(append(b, sum[:]...))
		if err != nil {
			return
		}
		m2, err := decodeIndex(encodeIndex(m))
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encoded index: %v, %v != %v", err, m2, m)
		}
	})
}

// FuzzRecordGet: a record file holding any bytes reads back as a record or
// an error, never a panic.
func FuzzRecordGet(f *testing.F) {
	k := NewKey("", "x")
	f.Add([]byte(`{"key":"` + string(k) + `","diffID":"sha256:00","created":"2020-01-01T00:00:00Z","createdBy":"RUN x"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := OpenRecords(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(r.Dir(), k.Hex()+".json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		rec, err := r.Get(k)
		if err == nil && rec.Key != k {
			t.Fatalf("record for %s holds %s", k, rec.Key)
		}
	})
}
