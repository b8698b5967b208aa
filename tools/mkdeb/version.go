package main

import (
	"fmt"
	"regexp"
	"strings"
)

// debRevision is the Debian revision of every package built here. A
// revision makes the package non-native, which is what it is (the upstream
// source is the git tree, the packaging is added on top) and what lintian
// expects of a package that ships changelog.Debian.gz.
const debRevision = "1"

var (
	// v1.2.3, v1.2.3-rc.1, v1.2.3-4-gabcdef0 (4 commits past the tag).
	describeTag = regexp.MustCompile(`^v?([0-9][0-9A-Za-z.]*)(?:-([0-9A-Za-z.]+?))??(?:-([0-9]+)-g([0-9a-f]+))?$`)
	// abcdef0: no tag in the history (git describe --always).
	describeSHA = regexp.MustCompile(`^[0-9a-f]{4,40}$`)
	// Debian Policy 5.6.12: the upstream part starts with a digit and uses
	// only alphanumerics and . + ~ (a hyphen only because a revision follows).
	debUpstream = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)
)

// debVersion turns `git describe --tags --always --dirty` output into a
// Debian version (upstream-revision) that sorts the way the builds do:
//
//	v1.2.3             -> 1.2.3-1
//	v1.2.3-rc.1        -> 1.2.3~rc.1-1          (before 1.2.3)
//	v1.2.3-4-gabcdef0  -> 1.2.3+git4.gabcdef0-1  (after 1.2.3)
//	abcdef0            -> 0.0.0~gitabcdef0-1     (no tag yet)
//	...-dirty          -> ...+dirty-1            (uncommitted changes)
//	dev                -> 0.0.0~dev-1            (no git: the Makefile's fallback)
func debVersion(describe string) (string, error) {
	d := strings.TrimSpace(describe)
	dirty := false
	if s, ok := strings.CutSuffix(d, "-dirty"); ok {
		d, dirty = s, true
	}
	var up string
	switch {
	case d == "":
		return "", fmt.Errorf("empty version: pass -version \"$(git describe --tags --always --dirty)\"")
	case d == "dev":
		up = "0.0.0~dev"
	case describeSHA.MatchString(d) && !looksLikeVersion(d):
		up = "0.0.0~git" + d
	default:
		m := describeTag.FindStringSubmatch(d)
		if m == nil {
			return "", fmt.Errorf("version %q: not a git describe output this tool understands (vX.Y.Z[-PRE][-N-gSHA][-dirty] or a bare SHA)", describe)
		}
		up = m[1]
		if m[2] != "" {
			up += "~" + m[2]
		}
		if m[3] != "" {
			up += "+git" + m[3] + ".g" + m[4]
		}
	}
	if dirty {
		up += "+dirty"
	}
	if !debUpstream.MatchString(up) {
		return "", fmt.Errorf("version %q gives %q, which is not a valid Debian upstream version", describe, up)
	}
	return up + "-" + debRevision, nil
}

// looksLikeVersion tells a tag such as "1.2" (digits and dots) from an
// abbreviated commit hash made only of digits.
func looksLikeVersion(s string) bool {
	return strings.Contains(s, ".")
}

// goArchToDeb maps GOARCH (and GOARM for arm) to the Debian architecture.
func goArchToDeb(goarch, goarm string) (string, error) {
	switch goarch {
	case "amd64", "arm64", "riscv64", "s390x", "loong64", "ppc64":
		return goarch, nil
	case "386":
		return "i386", nil
	case "ppc64le":
		return "ppc64el", nil
	case "mips64le":
		return "mips64el", nil
	case "mipsle":
		return "mipsel", nil
	case "arm":
		if strings.HasPrefix(goarm, "5") || strings.HasPrefix(goarm, "6") {
			return "armel", nil
		}
		return "armhf", nil
	}
	return "", fmt.Errorf("GOARCH %q has no Debian architecture this tool knows", goarch)
}
