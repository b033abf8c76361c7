package wg

import (
	"log/slog"
	"testing"
)

func TestUserspaceDevicePublishesItsSystemName(t *testing.T) {
	requireRoot(t)
	name := "zlpf" + randHex(t, 4) + "s"
	d, err := userspaceBackend{}.Open(name, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if d.Name() != name {
		t.Errorf("Name() = %q, want the requested %q", d.Name(), name)
	}
	if got, ok := SystemName(name); !ok || got != name {
		t.Errorf("SystemName(%q) = %q, %v; want the same name on Linux", name, got, ok)
	}
	d.Close()
	if got, ok := SystemName(name); ok {
		t.Errorf("SystemName(%q) = %q after Close; want nothing", name, got)
	}
}
