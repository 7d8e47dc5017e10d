package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/credentials"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/internal/fsx"
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
		Long: `Check the credentials against REGISTRY (default Docker Hub) and store them as
docker login does: with the credential helper the docker config
($DOCKER_CONFIG/config.json, else ~/.docker/config.json) names for REGISTRY
(credHelpers, else credsStore), else in its "auths". lbuild pull and push,
docker, podman and skopeo find them there. Other entries of the file are kept.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			arg := ""
			if len(args) == 1 {
				arg = args[0]
			}
			key, host := registryKey(arg)
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
			// Read the config and find its helper before asking the
			// registry, so a broken config fails without network traffic.
			cf, err := loadDockerConfig()
			if err != nil {
				return fmt.Errorf("login: %w", err)
			}
			if _, _, err := cf.helper(key); err != nil {
				return fmt.Errorf("login: %w", err)
			}
			if err := checkLogin(cmd.Context(), reg, user, password); err != nil {
				return err
			}
			where, err := storeCredentials(cf, key, user, password)
			if err != nil {
				return fmt.Errorf("login: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Login Succeeded (credentials in %s)\n", where)
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

// registryKey maps a login or logout argument to the key docker stores the
// credentials under and the host to check them against: Docker Hub (no
// argument, docker.io, index.docker.io or the legacy index URL) is
// "https://index.docker.io/v1/" at index.docker.io; any other registry is its
// host[:port], with a scheme and path dropped as docker drops them.
func registryKey(arg string) (key, host string) {
	switch strings.TrimSuffix(arg, "/") {
	case "", "docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1", "https://index.docker.io":
		return dockerHubAuthKey, name.DefaultRegistry
	}
	h := credentials.ConvertToHostname(arg)
	return h, h
}

// dockerConfig is the docker config as docker/cli reads it, plus the
// top-level keys of the file that docker/cli's ConfigFile drops (other tools
// keep settings of their own there); its Save writes them back.
type dockerConfig struct {
	*configfile.ConfigFile
	raw map[string]json.RawMessage
}

// configFileKeys are the JSON names of configfile.ConfigFile's fields,
// lowercased: the top-level keys docker/cli reads and writes itself.
var configFileKeys = func() map[string]bool {
	keys := map[string]bool{}
	t := reflect.TypeFor[configfile.ConfigFile]()
	for i := range t.NumField() {
		if n, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); n != "" && n != "-" {
			keys[strings.ToLower(n)] = true
		}
	}
	return keys
}()

// loadDockerConfig reads the docker config from $DOCKER_CONFIG, else
// ~/.docker, with docker's own code, so credsStore and credHelpers are
// honoured as docker honours them. A missing file is an empty config.
func loadDockerConfig() (*dockerConfig, error) {
	dir := os.Getenv("DOCKER_CONFIG")
	if dir == "" {
		dir = config.Dir()
	}
	cf, err := config.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("read the docker config: %w", err)
	}
	c := &dockerConfig{ConfigFile: cf}
	b, err := os.ReadFile(cf.Filename)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read the docker config: %w", err)
	}
	if len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, &c.raw); err != nil {
			return nil, fmt.Errorf("read the docker config: parse %s: %w", cf.Filename, err)
		}
	}
	return c, nil
}

// Save writes the config as docker/cli's ConfigFile.Save does, keeping the
// top-level keys docker/cli does not write. The file is replaced atomically
// and keeps its mode (0600 when new).
func (c *dockerConfig) Save() error {
	var buf bytes.Buffer
	if err := c.SaveToWriter(&buf); err != nil {
		return err
	}
	out := map[string]json.RawMessage{}
	if err := json.Unmarshal(buf.Bytes(), &out); err != nil {
		return err
	}
	kept := false
	for k, v := range c.raw {
		// encoding/json matched k to a field if only its case differs.
		if !configFileKeys[strings.ToLower(k)] {
			out[k], kept = v, true
		}
	}
	if !kept {
		return c.ConfigFile.Save()
	}
	b, err := json.MarshalIndent(out, "", "\t")
	if err != nil {
		return err
	}
	path, perm := c.Filename, os.FileMode(0o600)
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	if fi, err := os.Stat(path); err == nil {
		perm = fi.Mode().Perm()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return fsx.WriteFile(path, "", b, perm)
}

// helper is the credential helper the config names for key: its
// credHelpers entry, else credsStore, else "" (the plain "auths" of the
// file). field says which. It is an error if docker-credential-<helper> is
// not on PATH.
func (c *dockerConfig) helper(key string) (helper, field string, err error) {
	helper, field = c.CredentialHelpers[key], "credHelpers"
	if helper == "" {
		helper, field = c.CredentialsStore, "credsStore"
	}
	if helper == "" {
		return "", "", nil
	}
	prog := "docker-credential-" + helper
	if _, err := exec.LookPath(prog); err != nil {
		return "", "", fmt.Errorf("credential helper %s (%s in %s) is not on PATH: install it or change %s", prog, field, c.Filename, field)
	}
	return helper, field, nil
}

// store is key's credential store, chosen as docker/cli's
// ConfigFile.GetCredentialsStore chooses it, saving the file through
// c.Save.
func (c *dockerConfig) store(key string) (credentials.Store, error) {
	h, _, err := c.helper(key)
	if err != nil {
		return nil, err
	}
	if h != "" {
		return credentials.NewNativeStore(c, h), nil
	}
	return credentials.NewFileStore(c), nil
}

// storeCredentials saves user and password for key where the docker config
// says: a credential helper, else base64 in the "auths" of config.json. It
// returns where they went.
func storeCredentials(c *dockerConfig, key, user, password string) (string, error) {
	st, err := c.store(key)
	if err != nil {
		return "", err
	}
	where := c.Filename
	if h, _, _ := c.helper(key); h != "" {
		where = "docker-credential-" + h
	}
	ac := types.AuthConfig{Username: user, Password: password, ServerAddress: key}
	if err := st.Store(ac); err != nil {
		return "", fmt.Errorf("store the credentials in %s: %w", where, err)
	}
	return where, nil
}

func newLogoutCmd(*globals) *cobra.Command {
	return &cobra.Command{
		Use:   "logout [REGISTRY]",
		Short: "Log out from a registry (erases what lbuild login or docker login stored)",
		Long: `Erase the credentials for REGISTRY (default Docker Hub) from the docker config
($DOCKER_CONFIG/config.json, else ~/.docker/config.json) or from the credential
helper it names (credsStore, credHelpers), as docker logout does.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			arg := ""
			if len(args) == 1 {
				arg = args[0]
			}
			key, _ := registryKey(arg)
			cf, err := loadDockerConfig()
			if err != nil {
				return fmt.Errorf("logout: %w", err)
			}
			// docker also erases the keys older clients wrote with a scheme.
			keys := []string{key}
			if key != dockerHubAuthKey {
				keys = append(keys, "http://"+key, "https://"+key)
			}
			// A key's credentials are erased from the store the config names
			// for it; an entry only in "auths" (written before a helper was
			// configured) is dropped from the file.
			var erase []credentials.Store
			var erased []string
			for _, k := range keys {
				st, err := cf.store(k)
				if err != nil {
					return fmt.Errorf("logout: %w", err)
				}
				ac, err := st.Get(k)
				if err != nil {
					return fmt.Errorf("logout: read the credentials for %s: %w", k, err)
				}
				if _, inFile := cf.GetAuthConfigs()[k]; ac.Username == "" && ac.Password == "" && ac.IdentityToken == "" {
					if !inFile {
						continue
					}
					st = credentials.NewFileStore(cf)
				}
				erase, erased = append(erase, st), append(erased, k)
			}
			if len(erase) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "Not logged in to %s\n", key)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Removing login credentials for %s\n", key)
			for i, st := range erase {
				if err := st.Erase(erased[i]); err != nil {
					return fmt.Errorf("logout: erase the credentials for %s: %w", erased[i], err)
				}
			}
			return nil
		},
	}
}
