package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sync/errgroup"
)

// Entry is one selected source of a COPY/ADD as the builder sees it.
type Entry struct {
	Rel  string      // path as it will land relative to the copy's destination (slash separated)
	Abs  string      // absolute path on the host (to read/stat); a symlink there is never followed
	Info os.FileInfo // Lstat result; nil: Checksum calls os.Lstat(Abs)
}

const checksumDomain = "lbuild checksum v1"

// Checksum returns "sha256:<hex>" over entries in the given order (callers
// sort them; order is significant). Each entry contributes, every field
// length-prefixed: Rel; its file type; its permission bits including
// setuid, setgid and sticky; for a symlink its target; for a device its
// major/minor numbers; for a regular file the sha256 of its content,
// taken from x (nil: hash without an index). Timestamps, inode numbers and
// ownership on the host are left out, so touching or re-checking-out files
// does not change the checksum.
//
// Checksum reads nothing but the entries themselves: a regular file is
// read only if it is one at Abs (a symlink at Abs is an error, whatever
// Info says, not a read of its target), and a symlink contributes only its
// target's name. So a caller that has checked each Abs against what the
// build may see (.dockerignore) knows the checksum depends on nothing else.
//
// Content hashes missing from x are computed in parallel, at most
// runtime.NumCPU() files at a time.
func Checksum(x *FileIndex, entries []Entry) (string, error) {
	sum, _, _, err := checksum(x, entries)
	return sum, err
}

// checksum is Checksum, also returning each entry's stat data and (regular
// files) content sum.
func checksum(x *FileIndex, entries []Entry) (string, []os.FileInfo, [][32]byte, error) {
	infos := make([]os.FileInfo, len(entries))
	sums := make([][32]byte, len(entries))
	var misses []int
	for i, e := range entries {
		fi := e.Info
		if fi == nil {
			var err error
			if fi, err = os.Lstat(e.Abs); err != nil {
				return "", nil, nil, fmt.Errorf("checksum: %w", err)
			}
		}
		infos[i] = fi
		if !fi.Mode().IsRegular() {
			continue
		}
		if x != nil {
			if s, ok := x.lookup(e.Abs, fi); ok {
				sums[i] = s
				continue
			}
		}
		misses = append(misses, i)
	}
	if len(misses) > 0 {
		var g errgroup.Group
		g.SetLimit(runtime.NumCPU())
		for _, i := range misses {
			g.Go(func() error {
				var err error
				if x != nil {
					sums[i], err = x.sum(entries[i].Abs, infos[i])
				} else {
					sums[i], _, _, err = hashFile(entries[i].Abs)
				}
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return "", nil, nil, fmt.Errorf("checksum: %w", err)
		}
	}

	h := sha256.New()
	writeField(h, checksumDomain)
	var num [8]byte
	binary.BigEndian.PutUint64(num[:], uint64(len(entries)))
	h.Write(num[:])
	for i, e := range entries {
		fi := infos[i]
		mode := fi.Mode()
		writeField(h, e.Rel)
		writeField(h, fileType(mode))
		writeField(h, fmt.Sprintf("%04o", unixPerm(mode)))
		switch {
		case mode.IsRegular():
			writeBytes(h, sums[i][:])
		case mode&fs.ModeSymlink != 0:
			target, err := os.Readlink(e.Abs)
			if err != nil {
				return "", nil, nil, fmt.Errorf("checksum: %w", err)
			}
			writeField(h, target)
		case mode&fs.ModeDevice != 0:
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				writeField(h, fmt.Sprintf("%d", st.Rdev))
			}
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), infos, sums, nil
}

func fileType(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "file"
	case m.IsDir():
		return "dir"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "chardev"
	case m&fs.ModeDevice != 0:
		return "blockdev"
	}
	return "other"
}

// unixPerm returns the permission bits of m in unix form (07777).
func unixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}
