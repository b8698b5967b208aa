package host

import (
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// LocalAddrs lists the addresses of this network namespace's interfaces,
// with their prefix lengths (IPv4 ones unmapped).
//
// With the real /proc the kernel is asked over rtnetlink (as
// net.InterfaceAddrs does), in the calling thread's network namespace: it
// costs one small dump, where reading the IPv4 local routes from
// /proc/net/fib_trie means printing the whole routing table. Under any other
// procfs root (a fixture tree, another process's /proc/PID) that tree's
// net/fib_trie (the IPv4 "/32 host LOCAL" leaves, as /32 prefixes) and
// net/if_inet6 stand in for it, so that fixture trees carry their own
// addresses.
func (fs FS) LocalAddrs() ([]netip.Prefix, error) {
	if fs.live() {
		return interfaceAddrs()
	}
	var out []netip.Prefix
	fib := fs.Net("fib_trie")
	errFib := withFile(fib, func(r io.Reader) error {
		return parseFibTrie(r, fib, func(a netip.Addr) { out = append(out, netip.PrefixFrom(a, 32)) })
	})
	inet6 := fs.Net("if_inet6")
	_ = withFile(inet6, func(r io.Reader) error { // no IPv6 in the tree: no IPv6 addresses
		return parseIfInet6(r, inet6, func(p netip.Prefix) { out = append(out, p) })
	})
	if len(out) == 0 && errFib != nil {
		return nil, fmt.Errorf("local addresses: %w", errFib)
	}
	return out, nil
}

func interfaceAddrs() ([]netip.Prefix, error) {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list local addresses: %w", err)
	}
	out := make([]netip.Prefix, 0, len(ifas))
	for _, ifa := range ifas {
		n, ok := ifa.(*net.IPNet)
		if !ok {
			continue
		}
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		ones, bits := n.Mask.Size()
		switch {
		case bits == 0: // a non-canonical mask: the address is ours all the same
			ones = a.BitLen()
		case a.Is4() && bits == 128:
			ones -= 96
		}
		if p := netip.PrefixFrom(a, ones); p.IsValid() {
			out = append(out, p)
		} else {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out, nil
}

// maxFibAddrs bounds the local IPv4 addresses taken from one fib_trie.
const maxFibAddrs = 65536

// parseFibTrie calls fn with each local IPv4 address of /proc/net/fib_trie
// text, once: a "|-- ADDR" leaf followed by a "/32 host LOCAL" line. It
// streams: on a router with a full routing table the file is large.
func parseFibTrie(r io.Reader, path string, fn func(netip.Addr)) error {
	var leaf netip.Addr
	seen := map[netip.Addr]bool{}
	return scanLines(r, path, func(f []string) {
		switch {
		case len(f) == 2 && f[0] == "|--":
			leaf, _ = netip.ParseAddr(f[1])
		case len(f) >= 3 && f[0] == "/32" && f[1] == "host" && f[2] == "LOCAL":
			if leaf.Is4() && !seen[leaf] && len(seen) < maxFibAddrs {
				seen[leaf] = true
				fn(leaf)
			}
		}
	})
}

// parseIfInet6 calls fn with each address of /proc/net/if_inet6 text: 32
// hex digits in network order, then the interface index, the prefix length
// (hex), scope, flags and the interface name.
func parseIfInet6(r io.Reader, path string, fn func(netip.Prefix)) error {
	return scanLines(r, path, func(f []string) {
		if len(f) < 1 || len(f[0]) != 32 {
			return
		}
		b, err := hex.DecodeString(f[0])
		if err != nil {
			return
		}
		a := netip.AddrFrom16([16]byte(b))
		bits := 128
		if len(f) >= 3 {
			if n, err := strconv.ParseUint(f[2], 16, 8); err == nil && n <= 128 {
				bits = int(n)
			}
		}
		fn(netip.PrefixFrom(a, bits))
	})
}
