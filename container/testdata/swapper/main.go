// Command swapper is the attacker of TestCommitDiffSymlinkSwapRace, run as a
// container's process: it fills the directory /d with files and then keeps
// exchanging /d, atomically, with a symlink to the host directory os.Args[1]
// (a path that means nothing inside the container, and everything to a
// reader on the host that follows it), until SIGTERM.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: swapper HOST-DIR FILES")
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Args[2])
	check(err)
	check(os.Mkdir("/d", 0o755))
	for i := range n {
		check(os.WriteFile(fmt.Sprintf("/d/f%d", i), []byte("own\n"), 0o644))
	}
	check(os.Symlink(os.Args[1], "/d.lnk"))
	check(os.WriteFile("/ready", nil, 0o644))

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	for {
		select {
		case <-term:
			os.Exit(0)
		default:
		}
		check(unix.Renameat2(unix.AT_FDCWD, "/d", unix.AT_FDCWD, "/d.lnk", unix.RENAME_EXCHANGE))
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "swapper:", err)
		os.Exit(1)
	}
}
