package runc

import (
	"strings"
	"testing"
)

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want: the PortMapping's String, or the error's text
	}{
		{"8080:80", "127.0.0.1:8080->80/tcp"},
		{"8080:80/tcp", "127.0.0.1:8080->80/tcp"},
		{"0.0.0.0:53:5353/udp", "0.0.0.0:53->5353/udp"},
		{"10.1.2.3:1:65535", "10.1.2.3:1->65535/tcp"},
		{"80", "give a host port and a container port"},
		{":80", "the host port must be a number from 1 to 65535"},
		{"8080:", "the container port must be a number from 1 to 65535"},
		{"0:80", "the host port must be a number from 1 to 65535"},
		{"8080:65536", "the container port must be a number from 1 to 65535"},
		{"8080-8081:80", "the host port must be a number"},
		{"localhost:8080:80", "the host address must be an IPv4 address"},
		{"::1:8080:80", "give a host port and a container port"},
		{"8080:80/sctp", "protocol must be tcp or udp"},
	} {
		p, err := ParsePort(tc.in)
		got := p.String()
		if err != nil {
			got = err.Error()
			if !strings.HasPrefix(got, `invalid port mapping "`+tc.in+`"`) {
				t.Errorf("ParsePort(%q): error %q does not name the mapping", tc.in, got)
			}
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("ParsePort(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if err := checkPorts(NetworkHost, []PortMapping{{HostIP: "127.0.0.1", HostPort: 1, ContainerPort: 1, Proto: "tcp"}}); err == nil {
		t.Error("ports on the host network were accepted")
	}
	p := PortMapping{HostIP: "127.0.0.1", HostPort: 8080, ContainerPort: 80, Proto: "tcp"}
	if err := checkPorts(NetworkPrivate, []PortMapping{p, p}); err == nil || !strings.Contains(err.Error(), "published twice") {
		t.Errorf("a host port published twice: %v", err)
	}
}
