package host

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// DefaultResolvConf is the real host's resolver configuration.
const DefaultResolvConf = "/etc/resolv.conf"

// Nameservers returns the nameserver addresses of a resolv.conf file (zones
// dropped, IPv4-mapped addresses unmapped), sorted and without repeats. A
// missing file is the *fs.PathError of os.Open.
func Nameservers(path string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := withFile(path, func(r io.Reader) error {
		return parseResolvConf(r, path, func(a netip.Addr) { out = append(out, a) })
	})
	return dedup(out), err
}

// parseResolvConf calls fn with each valid "nameserver ADDR" of
// resolv.conf(5) text; '#' and ';' start comments.
func parseResolvConf(r io.Reader, path string, fn func(netip.Addr)) error {
	sc := newScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil {
				fn(a.WithZone("").Unmap())
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}
