package main

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"unicode"
)

// The Debian copyright file (machine-readable format 1.0,
// https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/).
// ctguard itself is Apache-2.0. The binary is statically linked, so the
// Go modules and the Go runtime it was built from are in it too: their
// paragraphs are generated from the binary's build information and each
// module's license file in the module cache, so the file always names what
// the shipped binary really contains.

const copyrightHeader = `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ctguard
Source: %s
Comment: /usr/sbin/ctguard is a statically linked Go program: besides
 ctguard's own code it contains the Go modules and the Go runtime and standard
 library listed below (the "vendor/MODULE/*" patterns name where
 "go mod vendor" would put each module's source), each under its own license.

Files: *
Copyright: %s
License: Apache-2.0
`

const apacheLicense = `License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License");
 you may not use this file except in compliance with the License.
 You may obtain a copy of the License at
 .
 http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS,
 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 See the License for the specific language governing permissions and
 limitations under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0".
`

const mplLicense = `License: MPL-2.0
 This Source Code Form is subject to the terms of the Mozilla Public
 License, v. 2.0. If a copy of the MPL was not distributed with this
 file, You can obtain one at http://mozilla.org/MPL/2.0/.
 .
 On Debian systems, the complete text of the Mozilla Public License,
 Version 2.0 can be found in "/usr/share/common-licenses/MPL-2.0".
`

// licenseFile is one license file found for a bundled component.
type licenseFile struct {
	names  []string // short names: Apache-2.0, Expat, BSD-3-clause...
	text   string
	notice bool // an Apache NOTICE file: copyright lines, no license
}

// component is a paragraph of the copyright file for bundled code.
type component struct {
	files     string // the Files: patterns
	comment   string
	copyright []string
	licenses  []licenseFile
}

// copyrightFile builds the copyright file for the binary at bin. modCache
// is GOMODCACHE and goroot GOROOT of the toolchain that built it.
func copyrightFile(bin, modCache, goroot, source, holder string) (string, error) {
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		return "", fmt.Errorf("copyright: reading the Go build information of %s: %w", bin, err)
	}
	var comps []component

	std, err := readLicenses(goroot)
	if err != nil {
		return "", fmt.Errorf("copyright: the Go runtime's license in GOROOT %s: %w", goroot, err)
	}
	comps = append(comps, component{
		files:     "vendor/go/*",
		comment:   "The Go runtime and standard library, " + bi.GoVersion + ".",
		copyright: copyrightLines(std, "The Go Authors"),
		licenses:  std,
	})

	deps := append([]*debugModule(nil), modules(bi)...)
	sort.Slice(deps, func(i, j int) bool { return deps[i].path < deps[j].path })
	for _, m := range deps {
		dir, err := moduleDir(modCache, m.path, m.version)
		if err != nil {
			return "", fmt.Errorf("copyright: module %s %s is not in the module cache %s (run 'go mod download' in the repository): %w", m.path, m.version, modCache, err)
		}
		lic, err := readLicenses(dir)
		if err != nil {
			return "", fmt.Errorf("copyright: module %s %s: %w", m.path, m.version, err)
		}
		comps = append(comps, component{
			files:     "vendor/" + m.path + "/*",
			comment:   "Go module " + m.path + " " + m.version + ".",
			copyright: copyrightLines(lic, "the authors of "+m.path),
			licenses:  lic,
		})
	}

	var b strings.Builder
	fmt.Fprintf(&b, copyrightHeader, source, holder)
	needMPL := false
	for _, c := range comps {
		b.WriteString("\nFiles: " + c.files + "\n")
		b.WriteString("Copyright: " + strings.Join(c.copyright, "\n "+"") + "\n")
		var names []string
		for _, l := range c.licenses {
			names = append(names, l.names...)
		}
		names = uniq(names)
		// Several license files (a module under two licenses, or a code
		// license plus a notice) all apply: "and".
		b.WriteString("License: " + strings.Join(names, " and ") + "\n")
		b.WriteString("Comment: " + c.comment + "\n")
		for _, l := range c.licenses {
			if l.notice {
				continue
			}
			// The Apache and Mozilla licenses are in common-licenses (the
			// standalone paragraphs below say so); other texts carry their
			// own copyright notices and are copied whole.
			if len(l.names) == 1 && l.names[0] == "Apache-2.0" {
				continue
			}
			if len(l.names) == 1 && l.names[0] == "MPL-2.0" {
				needMPL = true
				continue
			}
			b.WriteString(" .\n The " + strings.Join(l.names, " and ") + " license text of this component:\n .\n")
			b.WriteString(indent(l.text))
		}
	}
	// Files: * (ctguard itself) is Apache-2.0: always needed.
	b.WriteString("\n" + apacheLicense)
	if needMPL {
		b.WriteString("\n" + mplLicense)
	}
	return b.String(), nil
}

type debugModule struct{ path, version string }

// modules lists the modules linked into the binary, with replacements
// applied (a replaced module's code is the replacement's).
func modules(bi *buildinfo.BuildInfo) []*debugModule {
	var out []*debugModule
	for _, d := range bi.Deps {
		m := d
		if d.Replace != nil {
			m = d.Replace
		}
		out = append(out, &debugModule{path: m.Path, version: m.Version})
	}
	return out
}

// moduleDir is where the module cache keeps path@version (upper-case
// letters are escaped as !lower-case, as in cmd/go).
func moduleDir(cache, path, version string) (string, error) {
	var esc strings.Builder
	for _, r := range path + "@" + version {
		if unicode.IsUpper(r) {
			esc.WriteByte('!')
			esc.WriteRune(unicode.ToLower(r))
			continue
		}
		esc.WriteRune(r)
	}
	dir := filepath.Join(cache, filepath.FromSlash(esc.String()))
	st, err := os.Stat(dir)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%s is not a directory", dir)
	}
	return dir, nil
}

var licenseName = regexp.MustCompile(`(?i)^(licen[cs]e|copying|notice)([.-].*)?$`)

// readLicenses reads and classifies every license file at the top of dir.
func readLicenses(dir string) ([]licenseFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []licenseFile
	found := false
	for _, e := range ents {
		if e.IsDir() || !licenseName.MatchString(e.Name()) {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		text := strings.TrimSpace(strings.ReplaceAll(string(raw), "\r\n", "\n"))
		if strings.HasPrefix(strings.ToUpper(e.Name()), "NOTICE") {
			// Apache NOTICE files: attribution (copyright lines), not a license.
			out = append(out, licenseFile{text: text, notice: true})
			continue
		}
		names := classify(text)
		if len(names) == 0 {
			return nil, fmt.Errorf("%s: license not recognised (teach tools/mkdeb/copyright.go's classify)", filepath.Join(dir, e.Name()))
		}
		out = append(out, licenseFile{names: names, text: text})
		found = true
	}
	if !found {
		return nil, fmt.Errorf("no LICENSE or COPYING file in %s", dir)
	}
	return out, nil
}

// classify names the licenses in a license text, in the copyright format's
// short names (one file may hold several: yaml's has MIT and Apache).
func classify(t string) []string {
	has := func(s string) bool { return strings.Contains(t, s) }
	var out []string
	if has("Apache License") && has("Version 2.0") {
		out = append(out, "Apache-2.0")
	}
	if has("Mozilla Public License") && has("2.0") {
		out = append(out, "MPL-2.0")
	}
	if has("Permission is hereby granted, free of charge") {
		out = append(out, "Expat")
	}
	switch {
	case has("Redistribution and use in source and binary forms") && has("Neither the name"):
		out = append(out, "BSD-3-clause")
	case has("Redistribution and use in source and binary forms"):
		out = append(out, "BSD-2-clause")
	}
	if has("Permission to use, copy, modify, and/or distribute") || has("Permission to use, copy, modify, and distribute") {
		out = append(out, "ISC")
	}
	return out
}

// A "Copyright [(c)] YEAR[-YEAR][,] HOLDER" line.
var copyrightLine = regexp.MustCompile(`(?im)^\s*copyright\s+(?:\(c\)\s*|©\s*)?((?:19|20)\d\d\b.*)$`)

// copyrightLines collects the "Copyright ..." lines of the license texts,
// or names fallback when there are none (the Apache license has none).
func copyrightLines(lics []licenseFile, fallback string) []string {
	var out []string
	for _, l := range lics {
		for _, m := range copyrightLine.FindAllStringSubmatch(l.text, -1) {
			if s := strings.TrimSpace(m[1]); s != "" {
				out = append(out, s)
			}
		}
	}
	out = uniq(out)
	if len(out) == 0 {
		out = []string{fallback}
	}
	return out
}

func uniq(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// indent formats text as a copyright-file continuation: every line starts
// with a space, empty lines are " .".
func indent(text string) string {
	var b bytes.Buffer
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimRight(line, " \t")
		if line == "" {
			b.WriteString(" .\n")
			continue
		}
		b.WriteString(" " + line + "\n")
	}
	return b.String()
}
