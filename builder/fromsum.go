package builder

// COPY --from=stage keys on the content it copies, as BuildKit's
// content-based cache does: when the stage reruns and the selected files
// come out the same, the COPY and what follows stay cached.

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/internal/fsx"
)

// fromSumDir holds the memo of selection checksums: the file named by
// fromSumName(chain ID, selection) holds the checksum of that selection in
// that filesystem. A chain ID names content, so an entry never goes stale.
func (b *build) fromSumDir() string { return filepath.Join(b.root.Dir, "cache", "fromsums") }

func fromSumName(chainID string, c copySpec) string {
	sel, _ := json.Marshal(struct {
		Srcs, Exclude []string
	}{c.Srcs, c.Exclude})
	return cache.NewKey("", "copy --from selection", chainID, string(sel)).Hex()
}

// memoFromSum returns the remembered checksum of c's selection in the
// filesystem chainID, "" if none is.
func (b *build) memoFromSum(chainID string, c copySpec) string {
	d, err := os.ReadFile(filepath.Join(b.fromSumDir(), fromSumName(chainID, c)))
	if err != nil || len(d) != len("sha256:")+64 {
		return ""
	}
	return string(d)
}

func (b *build) rememberFromSum(chainID string, c copySpec, sum string) {
	dir := b.fromSumDir()
	if err := os.MkdirAll(dir, 0o755); err == nil {
		_ = fsx.WriteFile(filepath.Join(dir, fromSumName(chainID, c)), "", []byte(sum), 0o644)
	}
}

// selectionSum is the checksum of the selected sources of a COPY --from:
// cache.Checksum over the groups' entries (names, types, modes, link
// targets, content), plus each entry's owner, which COPY --from keeps.
func selectionSum(groups []group) (string, error) {
	var all []cache.Entry
	for i, g := range groups {
		for _, e := range g.entries {
			e.Rel = strconv.Itoa(i) + "/" + e.Rel
			all = append(all, e)
		}
	}
	sum, err := cache.Checksum(nil, all)
	if err != nil {
		return "", fmt.Errorf("checksum sources: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(sum))
	var n [8]byte
	for _, e := range all {
		binary.BigEndian.PutUint64(n[:], uint64(len(e.Rel)))
		h.Write(n[:])
		h.Write([]byte(e.Rel))
		if st, ok := e.Info.Sys().(*syscall.Stat_t); ok {
			binary.BigEndian.PutUint32(n[:4], st.Uid)
			binary.BigEndian.PutUint32(n[4:], st.Gid)
			h.Write(n[:])
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
