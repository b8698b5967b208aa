// Package human formats and parses durations the one way ctguard shows
// them to people: at most two units, largest first, no spaces ("7d",
// "2h", "14m46s", "1d12h", "250ms"), and reads back the same forms plus
// everything time.ParseDuration takes.
package human

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const day = 24 * time.Hour

// Duration renders d to at most two units: days, hours, minutes, seconds;
// below a second in whole milliseconds ("0s" for zero or less). The
// second unit is truncated, never rounded up past the first.
func Duration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		if d < time.Millisecond {
			return d.String()
		}
		return strconv.FormatInt(int64(d/time.Millisecond), 10) + "ms"
	}
	s := int64(d.Round(time.Second) / time.Second)
	units := []struct {
		n    int64
		name string
	}{{s / 86400, "d"}, {s % 86400 / 3600, "h"}, {s % 3600 / 60, "m"}, {s % 60, "s"}}
	var b strings.Builder
	shown := 0
	for i, u := range units {
		if shown == 0 && u.n == 0 {
			continue
		}
		if shown == 1 && u.n == 0 {
			break
		}
		b.WriteString(strconv.FormatInt(u.n, 10))
		b.WriteString(u.name)
		shown++
		if shown == 2 || i == len(units)-1 {
			break
		}
	}
	return b.String()
}

// ErrSyntax is a duration that does not parse; ErrRange one that parses
// but is longer than a time.Duration holds (about 292 years).
var (
	ErrSyntax = errors.New("not a duration (e.g. 90s, 30m, 12h, 7d, 1d12h)")
	ErrRange  = errors.New("too long for a duration")
)

// goDuration is the shape time.ParseDuration accepts.
var goDuration = regexp.MustCompile(`^[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$`)

// maxDays keeps a day count from overflowing time.Duration.
const maxDays = int64(1<<63-1) / int64(day)

// ParseDuration reads "7d", "1d12h", "2d30m" and every form of
// time.ParseDuration ("90s", "1h30m", "250ms").
func ParseDuration(s string) (time.Duration, error) {
	str := strings.TrimSpace(s)
	var days int64
	if i := strings.IndexByte(str, 'd'); i >= 0 {
		n, err := strconv.ParseInt(str[:i], 10, 64)
		switch {
		case errors.Is(err, strconv.ErrRange) && n > 0, err == nil && n > maxDays:
			return 0, fmt.Errorf("%q: %w", s, ErrRange)
		case err != nil || n < 0 || i == 0:
			return 0, fmt.Errorf("%q: %w", s, ErrSyntax)
		}
		days, str = n, str[i+1:]
		if str == "" {
			return time.Duration(days) * day, nil
		}
		if str[0] == '-' || str[0] == '+' {
			return 0, fmt.Errorf("%q: %w", s, ErrSyntax)
		}
	}
	d, err := time.ParseDuration(str)
	if err != nil {
		if goDuration.MatchString(str) {
			return 0, fmt.Errorf("%q: %w", s, ErrRange) // well formed: it overflowed
		}
		return 0, fmt.Errorf("%q: %w", s, ErrSyntax)
	}
	if days > 0 {
		if d < 0 {
			return 0, fmt.Errorf("%q: %w", s, ErrSyntax)
		}
		total := time.Duration(days) * day
		if d > time.Duration(1<<63-1)-total {
			return 0, fmt.Errorf("%q: %w", s, ErrRange)
		}
		d += total
	}
	return d, nil
}

// Time renders a moment for people: RFC 3339 in the local zone, to the
// second ("2026-12-03T15:31:28+01:00", or "...Z" on a UTC host).
func Time(t time.Time) string { return t.Local().Format(time.RFC3339) }
