package system

import (
	"context"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/cache"
)

// Fsck verifies the root: every blob against its digest, every image's
// blobs, every step record's layer blob, every unpacked layer's files and
// parent. It returns one line per problem. With repair it removes what is
// corrupt or dangling (corrupt blobs, incomplete image entries, records
// naming missing layers, broken unpacked layers and those standing on
// them), so the next build makes them again; it waits for running builds.
func (r *Root) Fsck(ctx context.Context, repair bool) ([]string, error) {
	if repair {
		release, err := r.exclusive(false)
		if err != nil {
			return nil, err
		}
		defer release()
	}
	problems, err := r.Store.Verify(repair)
	if err != nil {
		return problems, err
	}
	err = r.Records.Walk(func(rec *cache.Record) error {
		if rec.DiffID == "" {
			return nil
		}
		h, err := v1.NewHash(rec.DiffID)
		if err == nil && r.Store.HasBlob(h) {
			return nil
		}
		problems = append(problems, fmt.Sprintf("step record %s (%s): its layer %s is missing", rec.Key, rec.CreatedBy, rec.DiffID))
		if repair {
			return r.Records.Delete(rec.Key)
		}
		return nil
	})
	if err != nil {
		return problems, err
	}
	corrupt, err := r.Records.Corrupt()
	if err != nil {
		return problems, err
	}
	for _, k := range corrupt {
		problems = append(problems, fmt.Sprintf("step record %s: corrupt (not a record lbuild can read)", k))
		if repair {
			if err := r.Records.Delete(k); err != nil && !errors.Is(err, cache.ErrNotFound) {
				return problems, err
			}
		}
	}
	bad, err := r.Snaps.Check()
	if err != nil {
		return problems, err
	}
	broken := map[string]bool{}
	for _, p := range bad {
		problems = append(problems, fmt.Sprintf("layer snapshot %s: %s", p.Name, p.Err))
		broken[p.Name] = true
	}
	if repair && len(bad) > 0 {
		if _, _, err := r.Snaps.Prune(ctx, func(n string) bool { return !broken[n] }, false); err != nil {
			return problems, err
		}
	}
	return problems, nil
}
