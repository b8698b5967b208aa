package sockets

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// listenMsg builds the inet_diag_msg of a listener the way the kernel
// sends it: ports big endian, queues native endian.
func listenMsg(family uint8, addr netip.Addr, port uint16, queue, backlog uint32) []byte {
	p := make([]byte, 72)
	p[0], p[1] = family, tcpListen
	binary.BigEndian.PutUint16(p[4:], port)
	if family == unix.AF_INET {
		a := addr.As4()
		copy(p[8:], a[:])
	} else {
		a := addr.As16()
		copy(p[8:], a[:])
	}
	binary.NativeEndian.PutUint32(p[56:], queue)
	binary.NativeEndian.PutUint32(p[60:], backlog)
	return p
}

func TestParseListener(t *testing.T) {
	for _, c := range []struct {
		msg  []byte
		want Listener
		full bool
	}{
		{listenMsg(unix.AF_INET, netip.MustParseAddr("198.51.100.2"), 80, 512, 511),
			Listener{Local: netip.MustParseAddrPort("198.51.100.2:80"), Queue: 512, Backlog: 511}, true},
		{listenMsg(unix.AF_INET6, netip.IPv6Unspecified(), 443, 3, 4096),
			Listener{Local: netip.MustParseAddrPort("[::]:443"), Queue: 3, Backlog: 4096}, false},
		{listenMsg(unix.AF_INET, netip.MustParseAddr("127.0.0.1"), 8080, 0, 0),
			Listener{Local: netip.MustParseAddrPort("127.0.0.1:8080")}, false},
	} {
		got, ok := parseListener(c.msg)
		if !ok || got != c.want || got.Full() != c.full {
			t.Errorf("parseListener = %+v (ok %v, full %v), want %+v (full %v)", got, ok, got.Full(), c.want, c.full)
		}
	}
	est := listenMsg(unix.AF_INET, netip.MustParseAddr("198.51.100.2"), 80, 0, 0)
	est[1] = tcpEstablished
	if _, ok := parseListener(est); ok {
		t.Error("an ESTABLISHED socket parsed as a listener")
	}
	if _, ok := parseListener(est[:60]); ok {
		t.Error("a short message parsed as a listener")
	}
}
