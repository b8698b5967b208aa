package human

import (
	"errors"
	"testing"
	"time"
)

func TestDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                               "0s",
		-time.Second:                    "0s",
		500 * time.Microsecond:          "500µs",
		250 * time.Millisecond:          "250ms",
		time.Second:                     "1s",
		45 * time.Second:                "45s",
		90 * time.Second:                "1m30s",
		14*time.Minute + 46*time.Second: "14m46s",
		time.Hour:                       "1h",
		2 * time.Hour:                   "2h",
		2*time.Hour + 30*time.Second:    "2h",
		14*time.Hour + 8*time.Minute + 5*time.Second: "14h8m",
		7 * day:                 "7d",
		36 * time.Hour:          "1d12h",
		day + 30*time.Minute:    "1d",
		30 * day:                "30d",
		1500 * time.Millisecond: "2s",
	} {
		if got := Duration(d); got != want {
			t.Errorf("Duration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for s, want := range map[string]time.Duration{
		"7d":     7 * day,
		"1d12h":  36 * time.Hour,
		"2d30m":  2*day + 30*time.Minute,
		"90s":    90 * time.Second,
		"1h30m":  90 * time.Minute,
		"250ms":  250 * time.Millisecond,
		" 2h ":   2 * time.Hour,
		"0":      0,
		"14m46s": 14*time.Minute + 46*time.Second,
	} {
		got, err := ParseDuration(s)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "d", "x", "7", "-1d", "1d-2h", "1d+2h", "1.5d", "1dd", "h"} {
		if _, err := ParseDuration(s); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseDuration(%q): err %v, want ErrSyntax", s, err)
		}
	}
	for _, s := range []string{"99999999999d", "999999999999999999999d", "106751d23h59m59s", "9999999999h"} {
		if _, err := ParseDuration(s); !errors.Is(err, ErrRange) {
			t.Errorf("ParseDuration(%q): err %v, want ErrRange", s, err)
		}
	}
}

// Every rendering of a whole number of seconds reads back to itself when
// nothing was truncated (two units or fewer).
func TestRoundTrip(t *testing.T) {
	for _, d := range []time.Duration{time.Second, 59 * time.Second, time.Minute, 61 * time.Minute, 25 * time.Hour, 30 * day, 2*day + 3*time.Hour} {
		got, err := ParseDuration(Duration(d))
		if err != nil || got != d {
			t.Errorf("ParseDuration(Duration(%v)) = %v, %v", d, got, err)
		}
	}
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"7d", "1d12h", "90s", "1h30m", "250ms", "-5s", "1d-1h", "9223372036854775807ns"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		// What parses renders without panicking, and a non-negative
		// result renders as something that parses again.
		out := Duration(d)
		if d >= 0 {
			if _, err := ParseDuration(out); err != nil {
				t.Fatalf("ParseDuration(%q) = %v renders %q, which does not parse: %v", s, d, out, err)
			}
		}
	})
}
