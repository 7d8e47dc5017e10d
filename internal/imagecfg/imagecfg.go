// Package imagecfg holds what the builder and containers both need to read
// from an image: its environment and config (LookupEnv, SetEnv, Clone) and
// the users and groups of its filesystem (ResolveUser,
// SupplementaryGroups), resolved as docker resolves them.
package imagecfg

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/internal/rootpath"
)

// ResolveUser turns "user[:group]" (names or numbers) into uid and gid using
// the /etc/passwd and /etc/group of the filesystem at root, as docker does: a
// user name takes its primary group from /etc/passwd; a bare uid has gid = uid
// with bareUIDGroup (COPY --chown), else its primary group or 0 (RUN, USER).
func ResolveUser(root, spec string, bareUIDGroup bool) (uid, gid uint32, err error) {
	user, group, hasGroup := strings.Cut(spec, ":")
	if user == "" {
		return 0, 0, fmt.Errorf("invalid user %q: use user[:group] with names or numeric ids", spec)
	}
	if n, err := strconv.ParseUint(user, 10, 32); err == nil {
		uid = uint32(n)
		if bareUIDGroup {
			gid = uid // COPY --chown=1000 means 1000:1000, as BuildKit does
		} else if ent, ok := lookupID(root, "/etc/passwd", uid); ok {
			gid = ent // USER 1000 takes the primary group, or 0
		}
	} else {
		u, g, ok, err := lookupName(root, "/etc/passwd", user)
		if err != nil {
			return 0, 0, err
		}
		if !ok {
			return 0, 0, fmt.Errorf("unknown user %q: no such user in the image's /etc/passwd (use a numeric uid or create the user first)", user)
		}
		uid, gid = u, g
	}
	if hasGroup {
		if n, err := strconv.ParseUint(group, 10, 32); err == nil {
			gid = uint32(n)
		} else {
			g, _, ok, err := lookupName(root, "/etc/group", group)
			if err != nil {
				return 0, 0, err
			}
			if !ok {
				return 0, 0, fmt.Errorf("unknown group %q: no such group in the image's /etc/group (use a numeric gid or create the group first)", group)
			}
			gid = g
		}
	}
	return uid, gid, nil
}

// lookupName finds name in a passwd-style file: fields 3 and 4 (passwd: uid,
// gid) or field 3 (group: gid).
func lookupName(root, file, name string) (id, gid uint32, ok bool, err error) {
	err = scanDB(root, file, func(f []string) bool {
		if f[0] != name || len(f) < 3 {
			return false
		}
		n, e := strconv.ParseUint(f[2], 10, 32)
		if e != nil {
			return false
		}
		id, ok = uint32(n), true
		if len(f) > 3 {
			if g, e := strconv.ParseUint(f[3], 10, 32); e == nil {
				gid = uint32(g)
			}
		}
		return true
	})
	return id, gid, ok, err
}

// lookupID finds the primary gid of uid in /etc/passwd.
func lookupID(root, file string, uid uint32) (uint32, bool) {
	var gid uint32
	found := false
	scanDB(root, file, func(f []string) bool {
		if len(f) < 4 || f[2] != strconv.FormatUint(uint64(uid), 10) {
			return false
		}
		if g, e := strconv.ParseUint(f[3], 10, 32); e == nil {
			gid, found = uint32(g), true
		}
		return true
	})
	return gid, found
}

func scanDB(root, file string, fn func([]string) bool) error {
	p, err := rootpath.Join(root, file)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if fn(strings.Split(line, ":")) {
			return nil
		}
	}
	return sc.Err()
}

// LookupEnv returns the value of k in a KEY=VALUE list (the last one wins).
func LookupEnv(env []string, k string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if n, v, ok := strings.Cut(env[i], "="); ok && n == k {
			return v, true
		}
	}
	return "", false
}

// SetEnv sets k to v in a KEY=VALUE list, in place where k exists.
func SetEnv(env []string, k, v string) []string {
	for i, e := range env {
		if n, _, _ := strings.Cut(e, "="); n == k {
			env[i] = k + "=" + v
			return env
		}
	}
	return append(env, k+"="+v)
}

// Clone returns a deep copy of an image config.
func Clone(c *v1.ConfigFile) *v1.ConfigFile {
	data, err := json.Marshal(c)
	if err != nil {
		panic(err) // a ConfigFile always marshals
	}
	out := &v1.ConfigFile{}
	if err := json.Unmarshal(data, out); err != nil {
		panic(err)
	}
	return out
}

// SupplementaryGroups lists the gids of the groups in /etc/group that name user as a member.
func SupplementaryGroups(root, user string) []uint32 {
	name, _, _ := strings.Cut(user, ":")
	var out []uint32
	scanDB(root, "/etc/group", func(f []string) bool {
		if len(f) < 4 {
			return false
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == name {
				if g, err := strconv.ParseUint(f[2], 10, 32); err == nil {
					out = append(out, uint32(g))
				}
			}
		}
		return false
	})
	return out
}
