package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// dockerHubAuthKey is the key docker uses for Docker Hub in config.json.
const dockerHubAuthKey = "https://index.docker.io/v1/"

func newLoginCmd(g *globals) *cobra.Command {
	var (
		user, password string
		passwordStdin  bool
		insecure       []string
	)
	cmd := &cobra.Command{
		Use:   "login [flags] [REGISTRY]",
		Short: "Log in to a registry (writes the docker config, as docker login does)",
		Long: `Check the credentials against REGISTRY (default Docker Hub) and store them in
the "auths" of the docker config ($DOCKER_CONFIG/config.json, else
~/.docker/config.json), where lbuild pull and push, docker, podman and skopeo
find them. Other entries of the file are kept.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			host := name.DefaultRegistry
			if len(args) == 1 {
				host = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSuffix(args[0], "/"), "https://"), "http://")
			}
			var opts []name.Option
			for _, h := range insecure {
				if h == host {
					opts = append(opts, name.Insecure)
				}
			}
			reg, err := name.NewRegistry(host, opts...)
			if err != nil {
				return fmt.Errorf("login: %w", err)
			}
			in := bufio.NewReader(cmd.InOrStdin())
			if passwordStdin && password != "" {
				return errors.New("login: --password and --password-stdin are mutually exclusive")
			}
			if user == "" {
				if passwordStdin {
					return errors.New("login: --password-stdin needs --username")
				}
				fmt.Fprint(cmd.ErrOrStderr(), "Username: ")
				line, err := in.ReadString('\n')
				if err != nil && line == "" {
					return fmt.Errorf("login: read username: %w", err)
				}
				user = strings.TrimSpace(line)
			}
			switch {
			case passwordStdin:
				b, err := io.ReadAll(in)
				if err != nil {
					return fmt.Errorf("login: read password: %w", err)
				}
				password = strings.TrimRight(string(b), "\r\n")
			case password == "":
				if password, err = readPassword(cmd, in); err != nil {
					return err
				}
			default:
				fmt.Fprintln(cmd.ErrOrStderr(), "WARNING! Using --password via the CLI is insecure. Use --password-stdin.")
			}
			if user == "" || password == "" {
				return errors.New("login: username and password are required")
			}
			if err := checkLogin(cmd.Context(), reg, user, password); err != nil {
				return err
			}
			path, err := writeDockerAuth(reg, user, password)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Login Succeeded (credentials in %s)\n", path)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&user, "username", "u", "", "user name")
	f.StringVarP(&password, "password", "p", "", "password (prefer --password-stdin)")
	f.BoolVar(&passwordStdin, "password-stdin", false, "read the password from stdin")
	f.StringArrayVar(&insecure, "insecure-registry", nil, "registry HOST[:PORT] to reach over plain http or unverified TLS (repeatable)")
	return cmd
}

// readPassword prompts on the terminal with echo off.
func readPassword(cmd *cobra.Command, in *bufio.Reader) (string, error) {
	f, ok := cmd.InOrStdin().(*os.File)
	if !ok || !isTerminal(f) {
		return "", errors.New("login: no password: pass --password-stdin (stdin is not a terminal)")
	}
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return "", fmt.Errorf("login: %w", err)
	}
	noEcho := *old
	noEcho.Lflag &^= unix.ECHO
	noEcho.Lflag |= unix.ICANON | unix.ISIG
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &noEcho); err != nil {
		return "", fmt.Errorf("login: %w", err)
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
	fmt.Fprint(cmd.ErrOrStderr(), "Password: ")
	line, err := in.ReadString('\n')
	fmt.Fprintln(cmd.ErrOrStderr())
	if err != nil && line == "" {
		return "", fmt.Errorf("login: read password: %w", err)
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// checkLogin authenticates against reg's /v2/ endpoint: for a token
// registry the token exchange must accept the credentials, for a basic-auth
// one the GET must.
func checkLogin(ctx context.Context, reg name.Registry, user, password string) error {
	auth := &authn.Basic{Username: user, Password: password}
	rt, err := transport.NewWithContext(ctx, reg, auth, remote.DefaultTransport, nil)
	if err != nil {
		return fmt.Errorf("login to %s: %w", reg.RegistryStr(), err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, reg.Scheme()+"://"+reg.RegistryStr()+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return fmt.Errorf("login to %s: %w", reg.RegistryStr(), err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("login to %s: unauthorized: wrong username or password", reg.RegistryStr())
	}
	return fmt.Errorf("login to %s: unexpected status %s", reg.RegistryStr(), resp.Status)
}

// dockerConfigPath is where docker keeps config.json.
func dockerConfigPath() (string, error) {
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		return filepath.Join(d, "config.json"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("login: find the docker config: %w", err)
	}
	return filepath.Join(home, ".docker", "config.json"), nil
}

// writeDockerAuth sets auths[registry].auth in the docker config, keeping
// every other field, through a temp file and a rename (mode 0600).
func writeDockerAuth(reg name.Registry, user, password string) (string, error) {
	path, err := dockerConfigPath()
	if err != nil {
		return "", err
	}
	cfg := map[string]json.RawMessage{}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if len(strings.TrimSpace(string(b))) > 0 {
			if err := json.Unmarshal(b, &cfg); err != nil {
				return "", fmt.Errorf("login: parse %s: %w", path, err)
			}
		}
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("login: %w", err)
	}
	auths := map[string]json.RawMessage{}
	if raw, ok := cfg["auths"]; ok {
		if err := json.Unmarshal(raw, &auths); err != nil {
			return "", fmt.Errorf("login: parse %s: auths: %w", path, err)
		}
	}
	key := reg.RegistryStr()
	if key == name.DefaultRegistry {
		key = dockerHubAuthKey
	}
	entry, _ := json.Marshal(map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password))})
	auths[key] = entry
	if cfg["auths"], err = json.Marshal(auths); err != nil {
		return "", err
	}
	out, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("login: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config.json.tmp-*")
	if err != nil {
		return "", fmt.Errorf("login: %w", err)
	}
	_, err = tmp.Write(append(out, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("login: write %s: %w", path, err)
	}
	return path, nil
}
