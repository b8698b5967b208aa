// Command scanbench measures a full scan of a big conntrack table: it fills
// a throw-away network namespace with ESTABLISHED+ASSURED entries from about
// a thousand sources (over ctnetlink), then times, in the same run and
// interleaved, `ctguard top --json`, `conntrack -L > /dev/null`, and a bare
// netlink dump that discards the bytes (the kernel floor). Each variant runs
// as a fresh process inside the namespace; it reports medians, ratios and
// peak RSS. It never touches the root namespace's table.
//
//	go build -o bin/ctguard ./cmd/ctguard && go run ./tools/scanbench -ctguard bin/ctguard
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ctguard/ctguard/internal/conntrack"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "fill" {
		// scanbench fill NETNS ENTRIES SOURCES: fill an existing namespace
		// (for measurements of the daemon on a table of a given size).
		var n, srcs int
		fmt.Sscan(os.Args[3], &n)
		fmt.Sscan(os.Args[4], &srcs)
		created, err := fill(os.Args[2], n, srcs)
		fmt.Printf("created %d entries from %d sources in %s\n", created, srcs, os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "fill:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "floor" {
		if err := floor(); err != nil {
			fmt.Fprintln(os.Stderr, "floor:", err)
			os.Exit(1)
		}
		return
	}
	entries := flag.Int("entries", 262144, "entries to create")
	sources := flag.Int("sources", 1024, "distinct source addresses")
	runs := flag.Int("runs", 5, "timed runs per variant")
	ctg := flag.String("ctguard", "bin/ctguard", "ctguard binary to time")
	flag.Parse()
	if err := run(*entries, *sources, *runs, *ctg); err != nil {
		fmt.Fprintln(os.Stderr, "scanbench:", err)
		os.Exit(1)
	}
}

func run(entries, sources, runs int, ctg string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (it creates a network namespace)")
	}
	for _, tool := range []string{"ip", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s in PATH", tool)
		}
	}
	if _, err := os.Stat(ctg); err != nil {
		return fmt.Errorf("ctguard binary: %w (build it with make build)", err)
	}
	name := fmt.Sprintf("ctgbench-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	exec.Command("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up").Run()
	exec.Command("ip", "netns", "exec", name, "ip", "addr", "add", "192.0.2.10/24", "dev", "lo").Run()

	t0 := time.Now()
	created, err := fill(name, entries, sources)
	if err != nil {
		return fmt.Errorf("fill: %w", err)
	}
	fmt.Printf("filled namespace %s with %d entries from %d sources in %v\n", name, created, sources, time.Since(t0).Round(time.Millisecond))

	self, err := os.Executable()
	if err != nil {
		return err
	}
	variants := []struct {
		name string
		argv []string
	}{
		{"bare netlink dump (floor)", []string{self, "floor"}},
		{"ctguard top --json", []string{ctg, "top", "--json", "-n", "20"}},
		{"conntrack -L > /dev/null", []string{"conntrack", "-L"}},
	}
	times := make([][]time.Duration, len(variants))
	rss := make([]int64, len(variants))
	for r := 0; r < runs+1; r++ { // the first round warms caches and is not counted
		for i, v := range variants {
			cmd := exec.Command("ip", append([]string{"netns", "exec", name}, v.argv...)...)
			devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			cmd.Stdout, cmd.Stderr = devnull, devnull
			start := time.Now()
			err := cmd.Run()
			d := time.Since(start)
			devnull.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			if r == 0 {
				continue
			}
			times[i] = append(times[i], d)
			if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				rss[i] = max(rss[i], ru.Maxrss)
			}
		}
	}
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	floorMed := med(times[0])
	var lMed time.Duration
	for i := range variants {
		if strings.HasPrefix(variants[i].name, "conntrack -L") {
			lMed = med(times[i])
		}
	}
	fmt.Printf("\n%d entries, %d sources, %d runs each (interleaved), kernel %s, %d CPUs\n\n", created, sources, runs, kernel(), runtime.NumCPU())
	fmt.Println("| variant | median | min | vs floor | vs conntrack -L | peak RSS |")
	fmt.Println("|---|---|---|---|---|---|")
	for i, v := range variants {
		m := med(times[i])
		fmt.Printf("| %s | %v | %v | %.2fx | %.2fx | %.1f MiB |\n", v.name, m.Round(time.Millisecond),
			slices.Min(times[i]).Round(time.Millisecond), float64(m)/float64(floorMed), float64(m)/float64(lMed), float64(rss[i])/1024)
	}
	return nil
}

// fill creates entries in the named namespace from sources addresses in
// 198.18.0.0/15 to 192.0.2.10:443.
func fill(name string, entries, sources int) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return 0, err
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return 0, err
	}
	defer netns.Set(orig)
	c, err := conntrack.Open()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	dst := netip.MustParseAddr("192.0.2.10")
	batch := make([]conntrack.Entry, 0, 4096)
	created := 0
	for i := 0; i < entries; i++ {
		s := i % sources
		src := netip.AddrFrom4([4]byte{198, 18 + byte(s>>16&1), byte(s >> 8), byte(s)})
		port := uint16(1024 + i/sources)
		batch = append(batch, conntrack.Entry{
			Proto:  conntrack.ProtoTCP,
			Orig:   conntrack.Tuple{Src: src, Dst: dst, SrcPort: port, DstPort: 443},
			Reply:  conntrack.Tuple{Src: dst, Dst: src, SrcPort: 443, DstPort: port},
			Status: conntrack.StatusConfirmed | conntrack.StatusSeenReply | conntrack.StatusAssured,
			// Idle for a while, as the incident's bots are.
			Timeout: uint32(432000 - 60 - i%3000), TCPState: conntrack.TCPEstablished, HasTCPState: true,
		})
		if len(batch) == cap(batch) || i == entries-1 {
			n, err := c.Create(context.Background(), batch)
			created += n
			if err != nil {
				return created, err
			}
			batch = batch[:0]
		}
	}
	return created, nil
}

// floor dumps the whole table over a raw netlink socket and discards the
// bytes: what the kernel alone costs.
func floor() error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	req := make([]byte, 20)
	binary := func(b []byte, v uint32, n int) {
		for i := 0; i < n; i++ {
			b[i] = byte(v >> (8 * i))
		}
	}
	binary(req[0:], 20, 4)
	binary(req[4:], 1<<8|1, 2)    // IPCTNL_MSG_CT_GET
	binary(req[6:], 0x1|0x300, 2) // NLM_F_REQUEST|NLM_F_DUMP
	binary(req[8:], 1, 4)         // seq
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	total := 0
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		total += n
		// NLMSG_DONE ends the dump; it is the last message of its datagram.
		for off := 0; off+16 <= n; {
			l := int(uint32(buf[off]) | uint32(buf[off+1])<<8 | uint32(buf[off+2])<<16 | uint32(buf[off+3])<<24)
			typ := uint16(buf[off+4]) | uint16(buf[off+5])<<8
			if typ == 3 {
				return nil
			}
			if typ == 2 {
				return fmt.Errorf("netlink error")
			}
			if l < 16 {
				return fmt.Errorf("bad message")
			}
			off += (l + 3) &^ 3
		}
	}
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}
