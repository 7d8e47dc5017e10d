package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/store"
	"github.com/lbuild/lbuild/transfer"
)

func newSaveCmd(g *globals) *cobra.Command {
	var (
		output      string
		format      string
		compression string
	)
	cmd := &cobra.Command{
		Use:   "save [flags] IMAGE...",
		Short: "Write images to a docker-archive or OCI archive",
		Long: `Write images to one tar archive, each blob once.

--format docker (default) writes what docker load, podman load and skopeo's
docker-archive: read (manifest.json next to an OCI layout, as docker 25+
writes it); --format oci writes an OCI archive (skopeo's oci-archive:).
Layers are written as stored unless --compression is given. A name keeps its
tag in the archive; an image given by ID is saved untagged.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := transfer.ParseFormat(format)
			if err != nil {
				return err
			}
			var opts []transfer.Opt
			if cmd.Flags().Changed("compression") {
				if _, err := transfer.ParseCompression(compression); err != nil {
					return err
				}
				opts = append(opts, transfer.WithCompression(compression))
			}
			if output == "" || output == "-" {
				if isTerminal(os.Stdout) {
					return errors.New("save: refusing to write an archive to a terminal: pass -o FILE")
				}
			}
			r, err := g.open()
			if err != nil {
				return err
			}
			imgs := make([]*store.Image, len(args))
			refs := make([]string, len(args))
			for i, a := range args {
				if imgs[i], err = resolve(r.Store, a); err != nil {
					return err
				}
				if hasRef(imgs[i], a) {
					refs[i] = store.NormalizeRef(a)
				}
			}
			if output == "" || output == "-" {
				return transfer.Save(cmd.Context(), r.Store, imgs, refs, cmd.OutOrStdout(), f, opts...)
			}
			if err := saveFile(cmd.Context(), r.Store, imgs, refs, output, f, opts...); err != nil {
				return fmt.Errorf("save %s: %w", output, err)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&output, "output", "o", "", "archive to write (default: stdout, unless it is a terminal)")
	fl.StringVar(&format, "format", "docker", "archive format: docker or oci")
	fl.StringVar(&compression, "compression", "", "compress uncompressed layers: gzip[,level=N] or zstd[,level=N] (default: as stored)")
	return cmd
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// saveFile writes an archive of imgs to path, beside it first and renamed
// into place, so a failed save leaves no partial archive under that name.
func saveFile(ctx context.Context, st *store.Store, imgs []*store.Image, refs []string, path string, f transfer.Format, opts ...transfer.Opt) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	err = transfer.Save(ctx, st, imgs, refs, tmp, f, opts...)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	return err
}
