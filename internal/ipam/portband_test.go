package ipam

import (
	"errors"
	"testing"
)

func TestPortBand(t *testing.T) {
	b := NewPortBand(51420)
	if first, last, n := b.Range(); first != 51421 || last != 51676 || n != 256 {
		t.Errorf("Range() = %d..%d (%d), want 51421..51676 (256)", first, last, n)
	}
	for i := range 256 {
		p, err := b.Allocate()
		if err != nil || p != 51421+uint16(i) {
			t.Fatalf("Allocate #%d = %d, %v; want %d", i, p, err, 51421+i)
		}
	}
	_, err := b.Allocate()
	if err == nil || err.Error() != "dedicated-overlay port band exhausted (51421..=51676, 256 ports)" || !errors.Is(err, ErrExhausted) {
		t.Errorf("Allocate on a full band: %v", err)
	}
	b.Release(51500)
	b.Release(51430)
	if p, _ := b.Allocate(); p != 51430 {
		t.Errorf("Allocate after releases = %d, want the lowest, 51430", p)
	}
	if p, _ := b.Allocate(); p != 51500 {
		t.Errorf("second Allocate after releases = %d, want 51500", p)
	}
	b.Release(51420) // below the band: nothing happens
	b.Release(51677) // above the band: nothing happens
	if _, err := b.Allocate(); err == nil {
		t.Error("out-of-band releases freed a port")
	}
}

func TestPortBandReserve(t *testing.T) {
	b := NewPortBand(51820) // the request's wg_port, not the reference's 51420
	if err := b.Reserve(51821); err != nil {
		t.Fatal(err)
	}
	if err := b.Reserve(51821); !errors.Is(err, ErrInUse) {
		t.Errorf("reserving twice: %v, want ErrInUse", err)
	}
	if !b.IsUsed(51821) || b.IsUsed(51822) {
		t.Error("IsUsed disagrees with the reservation")
	}
	if p, _ := b.Allocate(); p != 51822 {
		t.Errorf("Allocate after reserving the first port = %d, want 51822", p)
	}
	for _, p := range []uint16{51820, 52077, 0, 65535} {
		if err := b.Reserve(p); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Reserve(%d) outside 51821..=52076: %v, want ErrOutOfRange", p, err)
		}
	}
	if err := b.Reserve(52076); err != nil {
		t.Errorf("Reserve(last port): %v", err)
	}
	b.Release(51821)
	if p, _ := b.Allocate(); p != 51821 {
		t.Errorf("Allocate after Release = %d, want 51821", p)
	}
}

func TestPortBandTruncatedNearTop(t *testing.T) {
	b := NewPortBand(65500)
	if first, last, n := b.Range(); first != 65501 || last != 65535 || n != 35 {
		t.Errorf("Range() = %d..%d (%d), want 65501..65535 (35)", first, last, n)
	}
	var got []uint16
	for {
		p, err := b.Allocate()
		if err != nil {
			if err.Error() != "dedicated-overlay port band exhausted (65501..=65535, 35 ports)" {
				t.Errorf("exhaustion message: %v", err)
			}
			break
		}
		got = append(got, p)
	}
	if len(got) != 35 || got[0] != 65501 || got[34] != 65535 {
		t.Errorf("handed out %d ports %v, want 65501..65535 without wrapping", len(got), got)
	}

	empty := NewPortBand(65535)
	if _, _, n := empty.Range(); n != 0 {
		t.Errorf("band above 65535 holds %d ports", n)
	}
	_, err := empty.Allocate()
	if err == nil || err.Error() != "dedicated-overlay port band exhausted (no ports above 65535)" {
		t.Errorf("Allocate on an empty band: %v", err)
	}
	if err := empty.Reserve(0); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Reserve(0) on an empty band (port 0 = 65535+1 wrapped): %v", err)
	}

	low := NewPortBand(0)
	if p, _ := low.Allocate(); p != 1 {
		t.Errorf("band above 0 starts at %d, want 1", p)
	}
}
