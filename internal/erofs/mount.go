package erofs

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Mount mounts image (a file Build wrote) read-only at target, with tar (the
// file Build read) as its device 1. Both files must stay unchanged while
// mounted. It needs CAP_SYS_ADMIN and a kernel with file-backed EROFS mounts
// (see Supported). A tar whose size is not the one image was built from is
// refused.
func Mount(image, tar, target string) error {
	if err := checkPair(image, tar); err != nil {
		return err
	}
	fd, err := unix.Fsopen("erofs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("mount erofs %s: fsopen: %w", image, err)
	}
	defer unix.Close(fd)
	for _, kv := range [][2]string{{"source", image}, {"device", tar}} {
		if err := unix.FsconfigSetString(fd, kv[0], kv[1]); err != nil {
			return fmt.Errorf("mount erofs %s: set %s=%s: %w", image, kv[0], kv[1], err)
		}
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("mount erofs %s with device %s: %w (dmesg may say more)", image, tar, err)
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY)
	if err != nil {
		return fmt.Errorf("mount erofs %s: fsmount: %w", image, err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount erofs %s on %s: %w", image, target, err)
	}
	return nil
}

// checkPair checks that image is an image Build wrote and tar has the size
// of the tar it was built from.
func checkPair(image, tar string) error {
	f, err := os.Open(image)
	if err != nil {
		return fmt.Errorf("mount erofs: %w", err)
	}
	defer f.Close()
	b := make([]byte, slotOffset+slotSize)
	if _, err := io.ReadFull(f, b); err != nil {
		return fmt.Errorf("mount erofs %s: not an image of a layer tar: %w", image, err)
	}
	le := binary.LittleEndian
	if le.Uint32(b[superOffset:]) != superMagic || le.Uint16(b[superOffset+86:]) != 1 {
		return fmt.Errorf("mount erofs %s: not an image of a layer tar", image)
	}
	blocks := int64(le.Uint32(b[slotOffset+64:])) | int64(le.Uint16(b[slotOffset+72:]))<<32
	st, err := os.Stat(tar)
	if err != nil {
		return fmt.Errorf("mount erofs %s: %w", image, err)
	}
	if got := (st.Size() + blkSize - 1) >> blkBits; got != blocks {
		return fmt.Errorf("mount erofs %s: %s has %d blocks, the image was built from a tar of %d: rebuild the image from this tar", image, tar, got, blocks)
	}
	return nil
}

// Unmount unmounts what Mount mounted at target.
func Unmount(target string) error {
	if err := unix.Unmount(target, 0); err != nil {
		return fmt.Errorf("unmount erofs %s: %w", target, err)
	}
	return nil
}

var probe struct {
	once sync.Once
	ok   bool
	err  error
}

// Supported reports whether this kernel mounts the images Build writes (and
// this process may mount them). It probes once per process, by building and
// mounting a tiny image in a temporary directory below dir, and remembers
// the answer; ProbeError says why a probe failed.
func Supported(dir string) bool {
	probe.once.Do(func() {
		probe.err = doProbe(dir)
		probe.ok = probe.err == nil
	})
	return probe.ok
}

// ProbeError returns why Supported answered false (nil if it answered true
// or has not probed).
func ProbeError() error { return probe.err }

func doProbe(dir string) (err error) {
	tmp, err := os.MkdirTemp(dir, "erofs-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	const content = "erofs tar index probe\n"
	tw.WriteHeader(&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "d/f", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))})
	tw.Write([]byte(content))
	tw.Close()
	tarPath, imgPath, mnt := filepath.Join(tmp, "layer.tar"), filepath.Join(tmp, "layer.erofs"), filepath.Join(tmp, "mnt")
	var img bytes.Buffer
	if err := Build(&img, bytes.NewReader(tb.Bytes())); err != nil {
		return err
	}
	if err := os.WriteFile(tarPath, tb.Bytes(), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(imgPath, img.Bytes(), 0o600); err != nil {
		return err
	}
	if err := os.Mkdir(mnt, 0o700); err != nil {
		return err
	}
	if err := Mount(imgPath, tarPath, mnt); err != nil {
		return err
	}
	defer func() {
		if uerr := Unmount(mnt); err == nil {
			err = uerr
		}
	}()
	got, err := os.ReadFile(filepath.Join(mnt, "d", "f"))
	if err != nil {
		return fmt.Errorf("read probe file: %w", err)
	}
	if string(got) != content {
		return fmt.Errorf("probe file reads %q, want %q", got, content)
	}
	return nil
}
