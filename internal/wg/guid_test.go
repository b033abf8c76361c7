package wg

import (
	"testing"

	"github.com/google/uuid"
)

func TestAdapterGUIDIsTheRFC4122NameBasedUUID(t *testing.T) {
	ns := uuid.UUID(adapterNamespace)
	for _, name := range []string{"zl-prod-g", "zl-prod-web-d", "zl-4b72278e21-g", ""} {
		got := uuid.UUID(adapterGUID(name))
		want := uuid.NewSHA1(ns, []byte(name))
		if got != want {
			t.Errorf("adapterGUID(%q) = %s, want %s", name, got, want)
		}
		if got.Version() != 5 || got.Variant() != uuid.RFC4122 {
			t.Errorf("adapterGUID(%q) = %s: version %d variant %s, want 5 RFC4122", name, got, got.Version(), got.Variant())
		}
	}
}

func TestAdapterGUIDDistinguishesNames(t *testing.T) {
	seen := map[[16]byte]string{}
	for _, name := range []string{"zl-prod-g", "zl-prod-G", "zl-prod-g ", "zl-prod-d", "zl-test-g"} {
		g := adapterGUID(name)
		if other, dup := seen[g]; dup {
			t.Fatalf("%q and %q share GUID %x", name, other, g)
		}
		seen[g] = name
	}
	if adapterGUID("zl-prod-g") != adapterGUID("zl-prod-g") {
		t.Fatal("adapterGUID is not deterministic")
	}
}

func TestSystemNameFollowsOpenAndClose(t *testing.T) {
	if _, ok := SystemName("zl-sysname-t"); ok {
		t.Fatal("unknown name resolved")
	}
	forget := rememberSystemName("zl-sysname-t", "utun7")
	if got, ok := SystemName("zl-sysname-t"); !ok || got != "utun7" {
		t.Fatalf("SystemName = %q, %v; want utun7, true", got, ok)
	}
	// A newer device of the same name must not be forgotten by the
	// older one's late cleanup.
	forgetNewer := rememberSystemName("zl-sysname-t", "utun9")
	forget()
	if got, ok := SystemName("zl-sysname-t"); !ok || got != "utun9" {
		t.Fatalf("after the old device's cleanup SystemName = %q, %v; want utun9, true", got, ok)
	}
	forgetNewer()
	if _, ok := SystemName("zl-sysname-t"); ok {
		t.Fatal("name still resolves after its device closed")
	}
}
