package packaging

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const plistPath = "launchd/com.zlayer.overlayd.plist"

// decodePlist reads an XML property list into Go values (map[string]any,
// []any, string, int64, bool), failing on anything the format does not
// allow — a plutil -lint without plutil.
func decodePlist(r io.Reader) (any, error) {
	d := xml.NewDecoder(r)
	d.Strict = true
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("no <plist> element: %w", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if se.Name.Local != "plist" {
				return nil, fmt.Errorf("root element is <%s>, not <plist>", se.Name.Local)
			}
			v, err := plistValue(d)
			if err != nil {
				return nil, err
			}
			if err := plistEnd(d, "plist"); err != nil {
				return nil, err
			}
			return v, nil
		}
	}
}

// next returns the next start or end element, skipping whitespace and
// comments; other character data is an error.
func next(d *xml.Decoder) (xml.Token, error) {
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement, xml.EndElement:
			return t, nil
		case xml.CharData:
			if strings.TrimSpace(string(t)) != "" {
				return nil, fmt.Errorf("stray text %q", strings.TrimSpace(string(t)))
			}
		}
	}
}

func plistEnd(d *xml.Decoder, name string) error {
	tok, err := next(d)
	if err != nil {
		return err
	}
	if e, ok := tok.(xml.EndElement); !ok || e.Name.Local != name {
		return fmt.Errorf("expected </%s>, got %v", name, tok)
	}
	return nil
}

// plistValue reads one value element.
func plistValue(d *xml.Decoder) (any, error) {
	tok, err := next(d)
	if err != nil {
		return nil, err
	}
	se, ok := tok.(xml.StartElement)
	if !ok {
		return nil, fmt.Errorf("expected a value, got %v", tok)
	}
	return plistElement(d, se)
}

// plistElement reads the value whose start element was just read.
func plistElement(d *xml.Decoder, se xml.StartElement) (any, error) {
	switch se.Name.Local {
	case "dict":
		m := map[string]any{}
		for {
			tok, err := next(d)
			if err != nil {
				return nil, err
			}
			if e, ok := tok.(xml.EndElement); ok && e.Name.Local == "dict" {
				return m, nil
			}
			k, ok := tok.(xml.StartElement)
			if !ok || k.Name.Local != "key" {
				return nil, fmt.Errorf("dict: expected <key>, got %v", tok)
			}
			var key string
			if err := d.DecodeElement(&key, &k); err != nil {
				return nil, err
			}
			if _, dup := m[key]; dup {
				return nil, fmt.Errorf("dict: key %q twice", key)
			}
			v, err := plistValue(d)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			m[key] = v
		}
	case "array":
		var a []any
		for {
			tok, err := next(d)
			if err != nil {
				return nil, err
			}
			if e, ok := tok.(xml.EndElement); ok && e.Name.Local == "array" {
				return a, nil
			}
			el, ok := tok.(xml.StartElement)
			if !ok {
				return nil, fmt.Errorf("array: unexpected %v", tok)
			}
			v, err := plistElement(d, el)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
		}
	case "true", "false":
		if err := plistEnd(d, se.Name.Local); err != nil {
			return nil, err
		}
		return se.Name.Local == "true", nil
	case "string":
		var s string
		return s, d.DecodeElement(&s, &se)
	case "integer":
		var s string
		if err := d.DecodeElement(&s, &se); err != nil {
			return nil, err
		}
		return strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	}
	return nil, fmt.Errorf("<%s> is not a value this plist should use", se.Name.Local)
}

func TestLaunchdPlist(t *testing.T) {
	f, err := os.Open(plistPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v, err := decodePlist(f)
	if err != nil {
		t.Fatalf("%s is not a valid property list: %v", plistPath, err)
	}
	top, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("top level is %T, not a dict", v)
	}
	want := map[string]any{
		"Label":     "com.zlayer.overlayd", // what the main daemon kickstarts
		"RunAtLoad": true,
		"KeepAlive": true,
		"UserName":  "root",
	}
	for k, w := range want {
		if top[k] != w {
			t.Errorf("%s = %v, want %v", k, top[k], w)
		}
	}
	args, _ := top["ProgramArguments"].([]any)
	if len(args) == 0 || filepath.Base(fmt.Sprint(args[0])) != "zlayer-overlayd" {
		t.Errorf("ProgramArguments %v must run a binary named zlayer-overlayd", args)
	}
	var hasDataDir bool
	for i, a := range args {
		if a == "--data-dir" && i+1 < len(args) && strings.HasPrefix(fmt.Sprint(args[i+1]), "/") {
			hasDataDir = true
		}
		if a == "--service" {
			t.Error("--service is for the Windows SCM")
		}
	}
	if !hasDataDir {
		t.Errorf("ProgramArguments %v must pass --data-dir with an absolute path, the main daemon's", args)
	}
	for _, k := range []string{"StandardOutPath", "StandardErrorPath"} {
		if p, _ := top[k].(string); !strings.HasPrefix(p, "/") {
			t.Errorf("%s = %v: launchd needs an absolute path, or the log is lost", k, top[k])
		}
	}
	if ex, _ := top["ExitTimeOut"].(int64); ex < 10 {
		t.Errorf("ExitTimeOut = %v: a graceful stop needs time before SIGKILL", top["ExitTimeOut"])
	}
}

func TestPlistDecoderRejectsBrokenFiles(t *testing.T) {
	for name, doc := range map[string]string{
		"unclosed":      `<plist><dict><key>Label</key><string>x</string></plist>`,
		"key without v": `<plist><dict><key>Label</key></dict></plist>`,
		"dup key":       `<plist><dict><key>A</key><true/><key>A</key><false/></dict></plist>`,
		"unknown type":  `<plist><dict><key>A</key><real>1.5</real></dict></plist>`,
		"stray text":    `<plist><dict>oops<key>A</key><true/></dict></plist>`,
		"bad integer":   `<plist><dict><key>A</key><integer>ten</integer></dict></plist>`,
		"not a plist":   `<dict></dict>`,
		"key in array":  `<plist><array><key>A</key></array></plist>`,
	} {
		if v, err := decodePlist(strings.NewReader(doc)); err == nil {
			t.Errorf("%s: decoded %v", name, v)
		}
	}
}
