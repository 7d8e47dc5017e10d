package store

import (
	"math/rand"
	"regexp"
	"strings"
	"testing"
)

// The hand-written checks accept exactly what the documented patterns do.
func TestMetaNamesMatchTheirPatterns(t *testing.T) {
	kindRE := regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	keyRE := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$`)
	cases := []string{"", "a", "sources", "a-1", "-a", "1a", "A", "a_b", "a.b", "é",
		strings.Repeat("a", 32), strings.Repeat("a", 33), strings.Repeat("b", 200), strings.Repeat("b", 201),
		"0123abcdef", ".hidden", "x/y", "x y", "ingest"}
	rng := rand.New(rand.NewSource(1))
	const alphabet = "aZ09-._/ \x00é"
	for i := 0; i < 20000; i++ {
		b := make([]byte, rng.Intn(40))
		for j := range b {
			b[j] = alphabet[rng.Intn(len(alphabet))]
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		if got, want := validMetaKind(s), kindRE.MatchString(s); got != want {
			t.Errorf("validMetaKind(%q) = %v, pattern says %v", s, got, want)
		}
		if got, want := validMetaKey(s), keyRE.MatchString(s); got != want {
			t.Errorf("validMetaKey(%q) = %v, pattern says %v", s, got, want)
		}
	}
}
