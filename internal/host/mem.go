package host

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MemTotal reads the RAM size in bytes (MemTotal of meminfo).
func (fs FS) MemTotal() (uint64, error) {
	path := fs.Proc("meminfo")
	data, err := ReadSmall(path)
	if err != nil {
		return 0, err
	}
	n, err := parseMeminfo(data)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// parseMeminfo returns MemTotal in bytes.
func parseMeminfo(data []byte) (uint64, error) {
	sc := lines(data)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "MemTotal:" {
			continue
		}
		n, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("MemTotal %q: %w", f[1], err)
		}
		mult := uint64(1)
		if len(f) >= 3 {
			switch strings.ToLower(f[2]) {
			case "kb":
				mult = 1024
			default:
				return 0, fmt.Errorf("MemTotal unit %q: want kB", f[2])
			}
		}
		if n == 0 || n > (1<<62)/mult {
			return 0, fmt.Errorf("MemTotal %d: out of range", n)
		}
		return n * mult, nil
	}
	return 0, errors.New("no MemTotal line")
}

// Slab is the conntrack cache's line of slabinfo.
type Slab struct {
	Name         string `json:"name"`
	ActiveObjs   uint64 `json:"active_objs"`
	ObjSize      uint64 `json:"objsize"`
	ObjPerSlab   uint64 `json:"objperslab"`
	PagesPerSlab uint64 `json:"pagesperslab"`
}

// ObjCost is the memory one object really takes, slab packing included:
// a slab of pagesperslab pages holds objperslab objects.
func (s Slab) ObjCost(pageSize uint64) uint64 {
	if s.ObjPerSlab == 0 || s.PagesPerSlab == 0 {
		return s.ObjSize
	}
	c := s.PagesPerSlab * pageSize / s.ObjPerSlab
	if c < s.ObjSize {
		return s.ObjSize
	}
	return c
}

// ConntrackSlab reads the conntrack object cache's line of slabinfo. The
// file is root-only (0400): reading it fails with the *fs.PathError of
// package os, while a file without the line is another error.
func (fs FS) ConntrackSlab() (Slab, error) {
	path := fs.Proc("slabinfo")
	data, err := ReadSmall(path)
	if err != nil {
		return Slab{}, err
	}
	s, err := parseSlabinfo(data)
	if err != nil {
		return Slab{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// isConntrackSlab matches the conntrack object cache: "nf_conntrack" on
// current kernels, "nf_conntrack_<hex netns pointer>" on old ones that had a
// cache per namespace. It must not match nf_conntrack_expect.
func isConntrackSlab(name string) bool {
	if name == "nf_conntrack" {
		return true
	}
	rest, ok := strings.CutPrefix(name, "nf_conntrack_")
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.ParseUint(rest, 16, 64)
	return err == nil
}

// parseSlabinfo finds the conntrack cache in slabinfo (version 2.x:
// name active_objs num_objs objsize objperslab pagesperslab : ...).
func parseSlabinfo(data []byte) (Slab, error) {
	sc := lines(data)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || !isConntrackSlab(f[0]) {
			continue
		}
		var v [5]uint64
		ok := true
		for i := range v {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				ok = false
				break
			}
			v[i] = n
		}
		// An object bigger than 1 MiB or smaller than the tuple hash it
		// embeds is not a conntrack entry: a corrupted line.
		if !ok || v[2] < 64 || v[2] > 1<<20 || v[4] > 1024 {
			continue
		}
		return Slab{Name: f[0], ActiveObjs: v[0], ObjSize: v[2], ObjPerSlab: v[3], PagesPerSlab: v[4]}, nil
	}
	return Slab{}, errors.New("no nf_conntrack cache line")
}
