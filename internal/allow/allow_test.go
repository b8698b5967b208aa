package allow

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func fixtureList(t *testing.T, ports ...uint16) *List {
	t.Helper()
	l, err := Load(Config{
		ProcRoot:   "testdata/proc",
		ResolvConf: "testdata/resolv.conf",
		SSHPorts:   ports,
		InterfaceAddrs: func() ([]netip.Prefix, error) {
			return []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("2001:db8::1/64")}, nil
		},
		Static: []Entry{
			{Prefix: netip.MustParsePrefix("198.18.0.0/16"), Source: Configured, Detail: "office"},
			{Prefix: netip.MustParsePrefix("198.19.0.7/32"), Source: Runtime, Expires: now.Add(-time.Second)},
			{Prefix: netip.MustParsePrefix("198.19.0.8/32"), Source: Runtime, Expires: now.Add(time.Hour)},
		},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Warnings) != 0 {
		t.Fatalf("warnings: %v", l.Warnings)
	}
	return l
}

func TestCheck(t *testing.T) {
	l := fixtureList(t, 22, 2222)
	cases := []struct {
		ban    string
		source Source // "" = allowed to ban
	}{
		{"127.0.0.1/32", Loopback},
		{"::1/128", Loopback},
		{"::ffff:127.0.0.1/128", Loopback},
		{"169.254.169.254/32", LinkLocal}, // cloud metadata
		{"fe80::1/128", LinkLocal},        //
		{"169.254.0.0/16", LinkLocal},     //
		{"192.0.2.1/32", Local},
		{"192.0.2.2/32", ""},              // a neighbour on the local subnet is not us
		{"192.0.2.0/24", Local},           // covers our own address
		{"::ffff:192.0.2.1/128", Local},   // mapped form of our address
		{"2001:db8::1/128", Local},        //
		{"2001:db8::/32", Local},          // covers it
		{"192.0.2.254/32", Gateway},       // default gateway
		{"198.18.0.1/32", Configured},     // a plain route's next hop is not a default gateway, but the static /16 holds it
		{"2001:db8::fe/128", Gateway},     // IPv6 default gateway
		{"203.0.113.53/32", Resolver},     //
		{"2001:db8::53/128", Resolver},    // zone stripped
		{"198.51.100.23/32", SSH},         // ssh on :22
		{"198.51.100.24/32", SSH},         // ssh on :2222
		{"198.51.100.99/32", ""},          // web client, not ssh
		{"198.51.100.50/32", ""},          // TIME_WAIT, not an open session
		{"2001:db8:f::9/128", SSH},        // v6 ssh peer
		{"2001:db8:f::10/128", ""},        // v6 web client
		{"203.0.113.77/32", SSH},          // v4 peer on a dual-stack socket, unmapped
		{"203.0.113.0/24", Resolver},      // covers the resolver
		{"198.19.0.7/32", ""},             // expired runtime entry
		{"198.19.0.8/32", Runtime},        // live runtime entry
		{"0.0.0.0/0", Loopback},           // covers everything
		{"198.51.100.128/25", ""},         // no entry inside
		{"2001:db8:f::/48", SSH},          // covers the v6 ssh peer
		{"2001:db8:e::/48", ""},           //
		{"::ffff:198.51.100.99/128", ""},  // mapped, not listed
		{"::ffff:198.51.100.23/128", SSH}, // mapped ssh peer
	}
	for _, c := range cases {
		p := netip.MustParsePrefix(c.ban)
		e, hit := l.Check(p)
		s, session := l.Session(p)
		switch {
		case c.source == SSH:
			// An SSH peer is not exempt; a ban covering it keeps the SSH
			// ports open.
			if hit || !session || s.Source != SSH {
				t.Errorf("%s: Check = %v %v, Session = %v %v; want only a session", c.ban, e, hit, s, session)
			}
		case (c.source != "") != hit || (hit && e.Source != c.source):
			t.Errorf("Check(%s) = %v %v, want source %q", c.ban, e, hit, c.source)
		}
	}
}

func TestDefaultSSHPort(t *testing.T) {
	l := fixtureList(t)
	if _, hit := l.Session(netip.MustParsePrefix("198.51.100.24/32")); hit {
		t.Error("peer of port 2222 counted as a session with only port 22 configured")
	}
	if _, hit := l.Session(netip.MustParsePrefix("198.51.100.23/32")); !hit {
		t.Error("peer of port 22 not a session by default")
	}
	if _, hit := l.Check(netip.MustParsePrefix("198.51.100.0/24")); hit {
		t.Error("a session's peer shields its /24 from bans")
	}
}

func TestRefusalMessage(t *testing.T) {
	l := fixtureList(t)
	cases := []struct{ ban, want string }{
		{"192.0.2.254/32", "192.0.2.254 is allowlisted: 192.0.2.254/32 (default gateway)"},
		{"192.0.2.0/24", "192.0.2.0/24 covers allowlisted 192.0.2.1/32 (local address)"},
		{"203.0.113.53/32", "203.0.113.53 is allowlisted: 203.0.113.53/32 (resolver: testdata/resolv.conf)"},
	}
	for _, c := range cases {
		p := netip.MustParsePrefix(c.ban)
		e, hit := l.Check(p)
		if !hit {
			t.Fatalf("%s not refused", c.ban)
		}
		err := error(&Refusal{Target: p, Entry: e})
		if err.Error() != c.want {
			t.Errorf("message %q, want %q", err, c.want)
		}
		if !errors.Is(err, ErrAllowlisted) {
			t.Error("not ErrAllowlisted")
		}
	}
}

func TestMissingSourcesWarnNotFail(t *testing.T) {
	l, err := Load(Config{ProcRoot: t.TempDir(), ResolvConf: "/nonexistent/resolv.conf",
		InterfaceAddrs: func() ([]netip.Prefix, error) { return nil, nil }}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Warnings) != 3 || !strings.Contains(strings.Join(l.Warnings, "\n"), "/nonexistent/resolv.conf") {
		t.Fatalf("warnings = %q", l.Warnings)
	}
	if _, hit := l.Check(netip.MustParsePrefix("127.0.0.53/32")); !hit {
		t.Error("loopback missing when sources fail")
	}
	_, err = Load(Config{InterfaceAddrs: func() ([]netip.Prefix, error) { return nil, errors.New("boom") }}, now)
	if err == nil {
		t.Error("interface listing failure not reported")
	}
}

func TestParsers(t *testing.T) {
	gws, err := DefaultGateways("testdata/proc")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("192.0.2.254"), netip.MustParseAddr("2001:db8::fe")}
	if !slices.Equal(gws, want) {
		t.Errorf("gateways %v, want %v", gws, want)
	}
}
