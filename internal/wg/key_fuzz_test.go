package wg

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseKey: every key ParseKey accepts has one canonical spelling that
// parses back to it, and a refusal is a short UTF-8 sentence that does not
// echo what it was given (a mistyped private key must not end up in a
// log).
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=",
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\r\nHh8=",
		"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8-",
		"", "=", "====", "a", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8fIA==",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			msg := err.Error()
			if !utf8.ValidString(msg) || len(msg) > 400 {
				t.Fatalf("refusal of %q is %d bytes or not UTF-8: %q", s, len(msg), msg)
			}
			// Longer than any fixed text of the message: only an echo
			// could contain it.
			if len(s) > 200 && strings.Contains(msg, s) {
				t.Fatalf("refusal quotes its whole input: %q", msg)
			}
			return
		}
		c := k.String()
		if len(c) != 44 {
			t.Fatalf("canonical form %q of %q is not 44 characters", c, s)
		}
		if back, err := ParseKey(c); err != nil || back != k {
			t.Fatalf("the canonical form %q of %q does not parse back: %v", c, s, err)
		}
	})
}
