// Package buildertest makes the offline fixtures the builder's tests,
// examples and benchmarks stand on: a busybox base image built by lbuild
// itself from Debian's busybox-static (FROM scratch + COPY rootfs/ /).
package buildertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BusyboxPath is where Debian's busybox-static installs its binary.
const BusyboxPath = "/bin/busybox"

// BusyboxDockerfile builds the base from a context made by BusyboxContext.
const BusyboxDockerfile = `FROM scratch
COPY rootfs/ /
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin
CMD ["sh"]
`

// BusyboxContext writes a build context for a busybox base image into dir:
// rootfs/bin/busybox, a symlink per applet, a minimal /etc (passwd, group
// with root, nobody and an "app" user 1000), /tmp, and the Dockerfile. It
// fails if busybox-static is not installed (apt-get install busybox-static).
func BusyboxContext(dir string) error {
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return fmt.Errorf("read %s: %w (install Debian's busybox-static)", BusyboxPath, err)
	}
	out, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "etc", "tmp", "root", "home/app"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return err
		}
	}
	os.Chmod(filepath.Join(rootfs, "tmp"), 0o1777|os.ModeSticky)
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), bb, 0o755); err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		l := filepath.Join(rootfs, "bin", applet)
		if _, err := os.Lstat(l); err == nil {
			continue
		}
		if err := os.Symlink("busybox", l); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":  "root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(rootfs, name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(BusyboxDockerfile), 0o644)
}
