package runc

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// PortMapping publishes a port of a container on the private network on
// the host, as docker run -p does: connections to HostIP:HostPort on the
// host are forwarded by slirp4netns to ContainerPort on the container's
// address (tap0, 10.0.2.100).
type PortMapping struct {
	// HostIP is the host address the port is published on, an IPv4
	// address; ParsePort defaults it to 127.0.0.1.
	HostIP string `json:"hostIP"`
	// HostPort and ContainerPort are the port numbers, 1–65535.
	HostPort      uint16 `json:"hostPort"`
	ContainerPort uint16 `json:"containerPort"`
	// Proto is "tcp" or "udp".
	Proto string `json:"proto"`
}

// DefaultHostIP is the host address ParsePort publishes ports on when the
// spelling names none. Docker's default is 0.0.0.0 (every interface);
// lbuild's is the loopback, so that publishing a port never opens it to
// the network by surprise: write 0.0.0.0:8080:80 to do that.
const DefaultHostIP = "127.0.0.1"

// String is the spelling of docker ps's PORTS column:
// "127.0.0.1:8080->80/tcp".
func (p PortMapping) String() string {
	return fmt.Sprintf("%s:%d->%d/%s", p.HostIP, p.HostPort, p.ContainerPort, p.Proto)
}

// ParsePort parses docker run -p's spelling [IP:]HOSTPORT:CONTAINERPORT[/PROTO]
// (PROTO tcp, the default, or udp). A port range, an IPv6 host address and
// a missing host port (docker's "pick a free one") are errors saying what
// to write.
func ParsePort(s string) (PortMapping, error) {
	bad := func(why string) (PortMapping, error) {
		return PortMapping{}, fmt.Errorf("invalid port mapping %q: %s (want [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp], e.g. 8080:80)", s, why)
	}
	p := PortMapping{HostIP: DefaultHostIP, Proto: "tcp"}
	spec := s
	if i := strings.LastIndexByte(spec, '/'); i >= 0 {
		p.Proto = spec[i+1:]
		spec = spec[:i]
		if p.Proto != "tcp" && p.Proto != "udp" {
			return bad("protocol must be tcp or udp")
		}
	}
	parts := strings.Split(spec, ":")
	switch len(parts) {
	case 2:
	case 3:
		ip, err := netip.ParseAddr(parts[0])
		if err != nil || !ip.Is4() {
			return bad("the host address must be an IPv4 address")
		}
		p.HostIP = ip.String()
		parts = parts[1:]
	default:
		return bad("give a host port and a container port")
	}
	port := func(s string) (uint16, bool) {
		n, err := strconv.ParseUint(s, 10, 16)
		return uint16(n), err == nil && n > 0
	}
	var ok bool
	if p.HostPort, ok = port(parts[0]); !ok {
		return bad("the host port must be a number from 1 to 65535")
	}
	if p.ContainerPort, ok = port(parts[1]); !ok {
		return bad("the container port must be a number from 1 to 65535")
	}
	return p, nil
}

// checkPorts refuses ports on a network that cannot publish them (only
// the private network can) and two mappings of one host port.
func checkPorts(network string, ports []PortMapping) error {
	if len(ports) == 0 {
		return nil
	}
	if network != NetworkPrivate {
		return fmt.Errorf("ports are published only on the default network, not with --network %s (with host the container's ports are the host's already)", network)
	}
	seen := map[string]bool{}
	for _, p := range ports {
		if p.HostIP == "" || p.HostPort == 0 || p.ContainerPort == 0 || (p.Proto != "tcp" && p.Proto != "udp") {
			return fmt.Errorf("invalid port mapping %v", p)
		}
		k := fmt.Sprintf("%s:%d/%s", p.HostIP, p.HostPort, p.Proto)
		if seen[k] {
			return fmt.Errorf("host port %s is published twice", k)
		}
		seen[k] = true
	}
	return nil
}

// apiTimeout bounds one request to slirp4netns's API socket.
const apiTimeout = 10 * time.Second

// addHostfwd asks the slirp4netns listening on API socket sock to forward
// p; its error names the mapping and says why slirp4netns refused it
// (typically the host port is in use).
func addHostfwd(sock string, p PortMapping) error {
	req, err := json.Marshal(map[string]any{
		"execute": "add_hostfwd",
		"arguments": map[string]any{
			"proto": p.Proto, "host_addr": p.HostIP, "host_port": p.HostPort, "guest_port": p.ContainerPort,
		},
	})
	if err != nil {
		return err
	}
	var resp struct {
		Return *json.RawMessage `json:"return"`
		Error  *struct {
			Desc string `json:"desc"`
		} `json:"error"`
	}
	if err := slirpRequest(sock, req, &resp); err != nil {
		return fmt.Errorf("publishing %v: %w", p, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("publishing %v: %s (is the host port in use?)", p, resp.Error.Desc)
	}
	if resp.Return == nil {
		return fmt.Errorf("publishing %v: slirp4netns gave no answer", p)
	}
	return nil
}

// slirpRequest sends one request to slirp4netns's API socket and decodes
// its answer into resp. slirp4netns reads a request until the client
// shuts its side down, then answers and closes.
func slirpRequest(sock string, req []byte, resp any) error {
	c, err := net.DialTimeout("unix", sock, apiTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(apiTimeout))
	if _, err := c.Write(req); err != nil {
		return err
	}
	if err := c.(*net.UnixConn).CloseWrite(); err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(c, 64<<10))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, resp); err != nil {
		return fmt.Errorf("slirp4netns answered %q: %w", strings.TrimSpace(string(b)), err)
	}
	return nil
}
