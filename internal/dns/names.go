package dns

import (
	"fmt"
	"strings"
)

const (
	maxLabelLen = 63
	// maxNameLen is the longest name in presentation form without the
	// trailing dot (RFC 1035 allows 255 octets on the wire, which is 253
	// characters of text).
	maxNameLen = 253
)

// canonicalZone validates a zone given with or without a trailing dot and
// returns it lower-cased with exactly one trailing dot.
func canonicalZone(zone string) (string, error) {
	z := strings.ToLower(strings.TrimSuffix(zone, "."))
	if z == "" {
		return "", fmt.Errorf("dns: zone %q is empty or the root; give the cluster zone, e.g. \"prod.local\"", zone)
	}
	if err := checkLabels(z, "zone "+quote(zone)); err != nil {
		return "", err
	}
	if len(z) > maxNameLen {
		return "", fmt.Errorf("dns: zone %q is %d characters long; the limit is %d", zone, len(z), maxNameLen)
	}
	if z == "arpa" || strings.HasSuffix(z, ".arpa") {
		return "", fmt.Errorf("dns: zone %q is inside arpa; reverse zones come from Config.ReversePrefixes", zone)
	}
	return z + ".", nil
}

// relativeName maps a caller's name to its lower-case form relative to
// origin (a canonical zone). Relative names ("web", "web.api") are inside
// the zone; absolute names (trailing dot) must be below the zone apex.
func relativeName(name, origin string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("dns: name is empty; give a name such as \"web\" inside zone %q", origin)
	}
	lower := strings.ToLower(name)
	rel := lower
	if strings.HasSuffix(lower, ".") {
		switch {
		case lower == origin:
			return "", fmt.Errorf("dns: name %q is the zone apex; register a name inside zone %q", name, origin)
		case strings.HasSuffix(lower, "."+origin):
			rel = lower[:len(lower)-len(origin)-1]
		default:
			return "", fmt.Errorf("dns: name %q is outside zone %q; use a relative name or one ending in %q", name, origin, "."+origin)
		}
	}
	if err := checkLabels(rel, "name "+quote(name)); err != nil {
		return "", err
	}
	if err := checkFits(rel, origin); err != nil {
		return "", fmt.Errorf("dns: name %q: %w", name, err)
	}
	return rel, nil
}

// checkFits reports whether rel under origin stays within the name length
// limit (rel + "." + origin without its trailing dot).
func checkFits(rel, origin string) error {
	if n := len(rel) + len(origin); n > maxNameLen {
		return fmt.Errorf("%q under zone %q would be %d characters long; the limit is %d", rel, origin, n, maxNameLen)
	}
	return nil
}

// checkLabels validates a dot-separated name without trailing dot: no empty
// labels, labels of at most 63 characters made of letters, digits, hyphens
// and underscores.
func checkLabels(s, what string) error {
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			c := s[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("dns: %s contains %q; only letters, digits, '-' and '_' are allowed in labels", what, string(rune(c)))
			}
			continue
		}
		switch l := i - start; {
		case l == 0:
			return fmt.Errorf("dns: %s has an empty label (leading, trailing or doubled dot)", what)
		case l > maxLabelLen:
			return fmt.Errorf("dns: %s has label %q of %d characters; the limit is %d", what, s[start:i], l, maxLabelLen)
		}
		start = i + 1
	}
	return nil
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// inZone reports whether the lower-case FQDN name is origin or below it.
// Names with escapes (a literal dot inside a label) take the careful path.
func inZone(name, origin string) bool {
	if len(name) < len(origin) || name[len(name)-len(origin):] != origin {
		return false
	}
	if len(name) == len(origin) {
		return true
	}
	if name[len(name)-len(origin)-1] != '.' {
		return false
	}
	if strings.IndexByte(name, '\\') >= 0 {
		return isEscapedSubdomain(name, origin)
	}
	return true
}

// isEscapedSubdomain decides zone membership for names containing escapes,
// where the dot before origin might be an escaped literal dot.
func isEscapedSubdomain(name, origin string) bool {
	cut := len(name) - len(origin) - 1 // index of the dot before origin
	backslashes := 0
	for i := cut - 1; i >= 0 && name[i] == '\\'; i-- {
		backslashes++
	}
	return backslashes%2 == 0
}

// lowerASCII returns s lower-cased, without allocating when it already is.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// parentName returns the name with its first label removed ("a.b." → "b.").
// Escaped dots are respected.
func parentName(name string) (string, bool) {
	for i := 0; i < len(name); i++ {
		switch name[i] {
		case '\\':
			i++
		case '.':
			if i+1 >= len(name) {
				return "", false
			}
			return name[i+1:], true
		}
	}
	return "", false
}
