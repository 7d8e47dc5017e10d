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
	"strconv"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/lbuild/lbuild/cache"
)

// The checksum of a selection is remembered as a cache record (no layer;
// Config holds the checksum) under fromSumKey(chain ID, selection): a chain
// ID names content, so the record never goes stale, a fully cached build
// reads it instead of unpacking the stage, and --cache-to exports it with
// the steps' records (so a build from an imported cache needs no unpacking
// either).
func fromSumKey(chainID string, c copySpec) cache.Key {
	sel, _ := json.Marshal(struct {
		Srcs, Exclude []string
	}{c.Srcs, c.Exclude})
	return cache.NewKey("", "copy --from selection checksum", chainID, string(sel))
}

type fromSumState struct {
	Sum string `json:"fromSum"`
}

// memoFromSum returns the remembered checksum of c's selection in the
// filesystem chainID, "" if none is.
func (b *build) memoFromSum(chainID string, c copySpec) string {
	key := fromSumKey(chainID, c)
	rec, err := b.record(key, false, nil)
	if err != nil || rec == nil {
		return ""
	}
	var st fromSumState
	if json.Unmarshal(rec.Config, &st) != nil || len(st.Sum) != len("sha256:")+64 {
		return ""
	}
	b.noteRecord(rec)
	b.noteMemo(key)
	return st.Sum
}

func (b *build) rememberFromSum(chainID string, c copySpec, sum string) {
	j, _ := json.Marshal(fromSumState{Sum: sum})
	rec := &cache.Record{Key: fromSumKey(chainID, c), Created: b.time.t, CreatedBy: "COPY --from selection checksum", EmptyLayer: true, Config: j}
	if err := b.root.Records.Put(rec); err != nil {
		logrus.Debugf("remember COPY --from checksum: %v", err)
		return
	}
	b.noteRecord(rec)
	b.noteMemo(rec.Key)
}

// noteMemo remembers a COPY --from checksum record the build used (stages
// may build at once: b.mu guards memoKeys).
func (b *build) noteMemo(k cache.Key) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.memoKeys = append(b.memoKeys, k)
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
