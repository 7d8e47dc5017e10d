package remotecache

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/docker/go-units"
)

// Spec is one --cache-from or --cache-to, in BuildKit's spelling:
// type=local,src=DIR (from) or type=local,dest=DIR (to), and
// type=registry,ref=HOST/REPO:TAG; a --cache-to also takes max-size=SIZE
// and mounts=true.
type Spec struct {
	Type    string // "local" or "registry"
	Dir     string // local: the cache directory
	Ref     string // registry: the tag the cache manifest is under
	MaxSize int64  // --cache-to: bound in bytes (0 = DefaultMaxSize)
	Mounts  bool   // --cache-to: export RUN cache mounts too
}

// String names the cache in messages.
func (s Spec) String() string {
	if s.Type == "registry" {
		return s.Ref
	}
	return s.Dir
}

// ParseSpec reads one --cache-from (to false) or --cache-to (to true).
func ParseSpec(spec string, to bool) (Spec, error) {
	flag := "--cache-from"
	if to {
		flag = "--cache-to"
	}
	var s Spec
	for _, part := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok && len(strings.Split(spec, ",")) == 1 && !strings.Contains(spec, "=") {
			// A bare ref, as docker build --cache-from REF takes it.
			s.Type, s.Ref = "registry", spec
			break
		}
		switch {
		case k == "type":
			s.Type = v
		case k == "src" && !to, k == "dest" && to:
			s.Dir = v
		case k == "ref":
			s.Ref = v
		case k == "max-size" && to:
			n, err := units.RAMInBytes(v)
			if err != nil || n <= 0 {
				return Spec{}, fmt.Errorf("%s %s: max-size=%s is not a size (e.g. 500MB, 10GB)", flag, spec, v)
			}
			s.MaxSize = n
		case k == "mounts" && to:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return Spec{}, fmt.Errorf("%s %s: mounts=%s: want true or false", flag, spec, v)
			}
			s.Mounts = b
		case k == "mode" && to && v == "max":
			// BuildKit's mode=max is what lbuild always exports.
		default:
			return Spec{}, fmt.Errorf("%s %s: unknown field %q (use %s)", flag, spec, k, usage(to))
		}
	}
	switch s.Type {
	case "local":
		if s.Dir == "" {
			return Spec{}, fmt.Errorf("%s %s: type=local needs %s=DIR", flag, spec, map[bool]string{false: "src", true: "dest"}[to])
		}
	case "registry":
		if s.Ref == "" {
			return Spec{}, fmt.Errorf("%s %s: type=registry needs ref=HOST/REPO:TAG", flag, spec)
		}
	default:
		return Spec{}, fmt.Errorf("%s %s: unknown type %q (use %s)", flag, spec, s.Type, usage(to))
	}
	return s, nil
}

func usage(to bool) string {
	if to {
		return "type=local,dest=DIR[,max-size=SIZE][,mounts=true] or type=registry,ref=HOST/REPO:TAG[,max-size=SIZE][,mounts=true]"
	}
	return "type=local,src=DIR or type=registry,ref=HOST/REPO:TAG"
}
