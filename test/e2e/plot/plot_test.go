package plot

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
)

func TestWriteSVG(t *testing.T) {
	c := Chart{
		Title: "bots <v4> & friends", AttackFrom: 0, AttackTo: 10,
		Series: []Series{
			{Name: "none", T: []float64{-2, 0, 5, 10}, Fill: []float64{0, 10, 100, 100}, Probe: []float64{100, 100, math.NaN(), 0}},
			{Name: "baseline", T: []float64{-2, 0, 5, 10}, Fill: []float64{0, 5, 40, 47}, Probe: []float64{100, 100, 100, 100}},
		},
		Notes: []string{"none: peak 100%"},
	}
	var b bytes.Buffer
	if err := c.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	// Well-formed XML (titles are escaped).
	d := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	paths := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("invalid SVG: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "path" {
			paths++
		}
	}
	if paths != 4 {
		t.Fatalf("%d paths, want 2 series x 2 panels", paths)
	}
	// The NaN probe splits the line into two segments.
	if !strings.Contains(b.String(), "M") || strings.Count(b.String(), "M") < 5 {
		t.Fatalf("NaN gap not drawn as a break:\n%s", b.String())
	}
	if err := (Chart{}).WriteSVG(io.Discard); err == nil {
		t.Fatal("no error for an empty chart")
	}
	bad := c
	bad.Series = []Series{{Name: "x", T: []float64{1}, Fill: nil, Probe: nil}}
	if err := bad.WriteSVG(io.Discard); err == nil {
		t.Fatal("no error for mismatched series")
	}
}

func TestWrap(t *testing.T) {
	got := wrap("aaa bbb ccc ddd", 8)
	if len(got) != 3 || got[0] != "aaa bbb" || got[1] != "    ccc" {
		t.Fatalf("%q", got)
	}
	if wrap("", 10) != nil {
		t.Fatal("empty string wraps to lines")
	}
}
