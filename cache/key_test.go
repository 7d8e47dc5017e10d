package cache

import (
	"strings"
	"testing"
)

func TestNewKey(t *testing.T) {
	root := NewKey("", "FROM", "alpine@sha256:abc")
	if err := root.Validate(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(root), "sha256:") || len(root.Hex()) != 64 {
		t.Fatalf("key %q", root)
	}
	if NewKey("", "FROM", "alpine@sha256:abc") != root {
		t.Fatal("NewKey is not deterministic")
	}
	keys := map[Key]string{}
	add := func(name string, k Key) {
		t.Helper()
		if prev, ok := keys[k]; ok {
			t.Errorf("%s and %s collide: %s", prev, name, k)
		}
		keys[k] = name
	}
	add("root", root)
	add("ab,c", NewKey(root, "ab", "c"))
	add("a,bc", NewKey(root, "a", "bc"))
	add("abc", NewKey(root, "abc"))
	add("abc,''", NewKey(root, "abc", ""))
	add("'',abc", NewKey(root, "", "abc"))
	add("none", NewKey(root))
	add("''", NewKey(root, ""))
	add("other parent", NewKey(NewKey("", "FROM", "debian"), "ab", "c"))
	add("empty parent", NewKey("", "ab", "c"))
	// The parent is a field too: moving bytes between it and a part differs.
	add("parent-shift", NewKey(Key(string(root)+"a"), "b", "c"))
	add("parent-shift2", NewKey(root, "ab", "c", ""))
	// Order of parts matters.
	add("c,ab", NewKey(root, "c", "ab"))
}

func TestKeyValidate(t *testing.T) {
	for _, k := range []Key{"", "sha256:", "sha256:abc", "md5:" + Key(strings.Repeat("a", 64)),
		"sha256:" + Key(strings.Repeat("A", 64)), "sha256:../" + Key(strings.Repeat("a", 61))} {
		if k.Validate() == nil {
			t.Errorf("Validate(%q) = nil", k)
		}
	}
}
