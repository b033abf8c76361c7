package dns

import (
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestRelativeName(t *testing.T) {
	s := newTestServer(t, Config{Zone: "Prod.Local"})
	for _, c := range []struct{ name, rel string }{
		{"web", "web"},
		{"Web.API", "web.api"},
		{"web.prod.local.", "web"},
		{"WEB.Api.Prod.Local.", "web.api"},
		// Without the trailing dot a name is relative, whatever it ends in.
		{"web.prod.local", "web.prod.local"},
	} {
		rel, zone, err := s.RelativeName(c.name)
		if err != nil || rel != c.rel || zone != "prod.local." {
			t.Errorf("RelativeName(%q) = %q, %q, %v; want %q, \"prod.local.\"", c.name, rel, zone, err, c.rel)
		}
	}
	for _, c := range []struct{ name, want string }{
		{"", "empty"},
		{"prod.local.", "zone apex"},
		{"web.other.local.", "outside zone"},
		{"web..api", "empty label"},
		{"we b", "only letters"},
		{strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 60), "253"},
	} {
		rel, zone, err := s.RelativeName(c.name)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("RelativeName(%q) = %q, %q, %v; want an error about %q", c.name, rel, zone, err, c.want)
		}
	}
	if err := s.SetZone("zlayer.local"); err != nil {
		t.Fatal(err)
	}
	// In the parent zone the old zone's label is part of the name.
	if rel, zone, err := s.RelativeName("web.prod.zlayer.local."); err != nil || rel != "web.prod" || zone != "zlayer.local." {
		t.Fatalf("after SetZone: RelativeName = %q, %q, %v", rel, zone, err)
	}
}

// The relative name and the zone RelativeName returns come from the same
// zone even while SetZone moves it: rebuilt into an FQDN they give back the
// name asked for. Callers store the relative name as the key that follows
// zone changes; one made against a zone it was not derived in keeps the old
// zone inside it ("web.prod" in zlayer.local) or is no name in the zone at
// all.
func TestRelativeNameIsConsistentAcrossSetZone(t *testing.T) {
	zones := []string{"prod.zlayer.local.", "zlayer.local.", "other.local."}
	s := newTestServer(t, Config{Zone: zones[0]})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.SetZone(zones[i%len(zones)]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for range 5000 {
		rel, zone, err := s.RelativeName("web")
		if err != nil || rel != "web" || !slices.Contains(zones, zone) {
			t.Fatalf("RelativeName(web) = %q, %q, %v", rel, zone, err)
		}
		name, err := s.CanonicalName("web")
		if err != nil || !slices.Contains(zones, strings.TrimPrefix(name, "web.")) {
			t.Fatalf("CanonicalName(web) = %q, %v", name, err)
		}
		// Inside two of the zones, outside the third; when inside, it
		// must come back whole.
		rel, zone, err = s.RelativeName("web.prod.zlayer.local.")
		switch {
		case err != nil:
			if !strings.Contains(err.Error(), "outside zone") {
				t.Fatalf("RelativeName(web.prod.zlayer.local.): %v", err)
			}
		case rel+"."+zone != "web.prod.zlayer.local.":
			t.Fatalf("RelativeName(web.prod.zlayer.local.) = %q in zone %q: not the name asked for", rel, zone)
		}
	}
}
