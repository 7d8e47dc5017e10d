package snapshot

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLiveSymlinkSwapRace reads a persistent snapshot with DiffLive, Changes
// and Usage while its view keeps exchanging a directory with a symlink to a
// directory outside it (as a running container can, CVE-2018-15664): no read
// may see anything of the outside directory, and each either succeeds or
// fails with one error line. container's TestCommitDiffSymlinkSwapRace does
// the same with a real container.
func TestLiveSymlinkSwapRace(t *testing.T) {
	requireRoot(t)
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) { testLiveSymlinkSwapRace(t, d) })
	}
	// Kernels before 5.6 have no openat2: the lookups go one component at
	// a time (the copy driver's walk uses multi-component lookups only for
	// the lower layers of overlay, so overlay it is).
	t.Run("without-openat2", func(t *testing.T) {
		noOpenat2.Store(true)
		defer noOpenat2.Store(false)
		testLiveSymlinkSwapRace(t, DriverOverlay)
	})
}

func testLiveSymlinkSwapRace(t *testing.T, driver string) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	v, err := s.Prepare(ctx, "ctr", applyBase(t, s), WithPersistent())
	check(t, err)
	defer s.Remove(ctx, "ctr")

	const files = 200
	marker := fmt.Sprintf("outside-%d", os.Getpid())
	outside := filepath.Join(t.TempDir(), "outside")
	big := strings.Repeat(marker, 4096/len(marker))
	check(t, os.Mkdir(outside, 0o755))
	check(t, os.Mkdir(filepath.Join(v, "d"), 0o755))
	mustWrite(t, filepath.Join(outside, "outsideonly"), big, 0o644)
	for i := range files {
		mustWrite(t, filepath.Join(v, "d", fmt.Sprintf("f%d", i)), "own\n", 0o644)
		mustWrite(t, filepath.Join(outside, fmt.Sprintf("f%d", i)), big, 0o644)
	}
	check(t, os.Symlink(outside, filepath.Join(v, "d.lnk")))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(v, "d"), unix.AT_FDCWD, filepath.Join(v, "d.lnk"), unix.RENAME_EXCHANGE)
			if err != nil {
				t.Errorf("swap: %v", err)
				return
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	oneLine := func(what string, i int, err error) {
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s %d: error of more than one line: %q", what, i, err)
		}
	}
	var ok int
	for i := range 30 {
		var b bytes.Buffer
		if err := s.DiffLive(ctx, "ctr", &b); err != nil {
			oneLine("DiffLive", i, err)
		} else {
			ok++
			for _, e := range readTar(t, b.Bytes()) {
				if strings.Contains(e.Name, "outsideonly") || strings.Contains(e.Body, marker) {
					t.Errorf("DiffLive %d holds %s of the outside directory", i, e.Name)
				}
			}
		}
		if changes, err := s.Changes(ctx, "ctr"); err != nil {
			oneLine("Changes", i, err)
		} else {
			ok++
			for _, c := range changes {
				if strings.Contains(c.Path, "outsideonly") {
					t.Errorf("Changes %d lists %s of the outside directory", i, c)
				}
			}
		}
		// Its own files take a few KB; one outside file 4 KB.
		if n, err := s.Usage(ctx, "ctr"); err != nil {
			oneLine("Usage", i, err)
		} else if ok++; n >= 4096 {
			t.Errorf("Usage %d = %d: it counted the outside directory", i, n)
		}
	}
	if ok == 0 {
		t.Error("no read succeeded: nothing was checked")
	}
}
