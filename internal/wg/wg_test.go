package wg

import (
	"bytes"
	"encoding/base64"
	"log/slog"
	"strings"
	"testing"
)

func TestGenerateKeyIsClampedAndUnique(t *testing.T) {
	a, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatal("two generated keys are equal")
	}
	// Curve25519 clamping, as wg genkey does it.
	if a[0]&7 != 0 || a[31]&0x80 != 0 || a[31]&0x40 == 0 {
		t.Errorf("key %x is not clamped", a)
	}
	back, err := ParseKey(a.String())
	if err != nil || back != a {
		t.Errorf("ParseKey(String()) = %v, %v", back, err)
	}
}

func TestParseKey(t *testing.T) {
	k := keyN(0x5a)
	got, err := ParseKey(k.String())
	if err != nil || got != k {
		t.Fatalf("ParseKey(%q) = %v, %v", k.String(), got, err)
	}

	long := strings.Repeat("A", 300)
	tests := []struct {
		name, in string
		want     []string
		notWant  string
	}{
		{"not base64", "not a key!", []string{`"not a key!"`, "not valid base64"}, ""},
		{"hex instead of base64", hexN(0x5a), []string{"is hex", "standard base64"}, hexN(0x5a)},
		{"31 bytes", base64.StdEncoding.EncodeToString(make([]byte, 31)), []string{"decodes to 31 bytes", "exactly 32 bytes"}, ""},
		{"33 bytes", base64.StdEncoding.EncodeToString(make([]byte, 33)), []string{"decodes to 33 bytes"}, ""},
		{"empty", "", []string{`""`, "decodes to 0 bytes"}, ""},
		{"long input is truncated", long, []string{"(300 bytes)"}, strings.Repeat("A", 13)},
		{"unpadded", strings.TrimRight(k.String(), "="), []string{"not valid base64"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseKey(tt.in)
			if err == nil {
				t.Fatalf("ParseKey(%q) succeeded", tt.in)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if tt.notWant != "" && strings.Contains(err.Error(), tt.notWant) {
				t.Errorf("error %q repeats the whole input", err)
			}
		})
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"zl-overlay0", "wg0", "a", "zl-svc.web_1", "123456789012345"} {
		if err := validateName(ok); err != nil {
			t.Errorf("validateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []struct{ name, want string }{
		{"", "empty"},
		{"1234567890123456", "at most 15 bytes"},
		{".", "not a valid interface name"},
		{"..", "not a valid interface name"},
		{"../../etc/x", "contains '/'"},
		{"a:b", "contains ':'"},
		{"a b", "contains ' '"},
		{"wg\x00", "contains '\\x00'"},
		{"wgé", "contains 'é'"},
	} {
		err := validateName(bad.name)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("validateName(%q) = %v, want an error mentioning %q", bad.name, err, bad.want)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil || o.MTU != DefaultMTU || o.Logger == nil {
		t.Errorf("defaults = %+v, %v", o, err)
	}
	for _, mtu := range []int{-1, 100, 575, 65536} {
		if _, err := (Options{MTU: mtu}).withDefaults(); err == nil || !strings.Contains(err.Error(), "out of range") {
			t.Errorf("MTU %d: err = %v", mtu, err)
		}
	}
	if o, err := (Options{MTU: 1280}).withDefaults(); err != nil || o.MTU != 1280 {
		t.Errorf("MTU 1280: %+v, %v", o, err)
	}
}

func TestNewBackendUnknownMode(t *testing.T) {
	_, err := NewBackend("boringtun", nil)
	if err == nil || !strings.Contains(err.Error(), `unknown wireguard backend "boringtun"`) {
		t.Errorf("err = %v", err)
	}
}

func TestNewBackendUserspace(t *testing.T) {
	var logs bytes.Buffer
	b, err := NewBackend("userspace", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if b.Kind() != KindUserspace {
		t.Errorf("Kind = %q", b.Kind())
	}
	if !strings.Contains(logs.String(), "backend=userspace") {
		t.Errorf("choice not logged: %s", logs.String())
	}
}

// A caller that needs its own packets on the WireGuard port (NAT
// traversal) cannot have the kernel backend, on any kernel: it is refused
// before anything is probed.
func TestNewBackendKernelRefusesOwnBind(t *testing.T) {
	_, err := NewBackendFor("kernel", Needs{OwnBind: true}, slog.New(slog.DiscardHandler))
	for _, want := range []string{`backend "kernel" requested`, "NAT traversal", "STUN", `use "userspace"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to say %q", err, want)
		}
	}
}

func TestOpenRejectsBadInputBeforeTouchingTheSystem(t *testing.T) {
	b, err := NewBackend("userspace", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open("this-name-is-too-long", Options{}); err == nil || !strings.Contains(err.Error(), "at most 15 bytes") {
		t.Errorf("long name: %v", err)
	}
	if _, err := b.Open("zltwmtu", Options{MTU: 10}); err == nil || !strings.Contains(err.Error(), "MTU 10 is out of range") {
		t.Errorf("tiny MTU: %v", err)
	}
}

func TestOwnerMustBeALabelPrefix(t *testing.T) {
	for _, bad := range []string{"zlayer-overlayd", "zlayer-overlayd:", "zlayer-overlayd:abc", "other:abc:", "abc:"} {
		if _, err := (Options{Owner: bad}).withDefaults(); err == nil || !strings.Contains(err.Error(), "label prefix") {
			t.Errorf("Owner %q: err = %v", bad, err)
		}
	}
	if _, err := (Options{Owner: "zlayer-overlayd:0123456789ab:"}).withDefaults(); err != nil {
		t.Errorf("a valid owner was refused: %v", err)
	}
}
