package ipam

import (
	"math/big"
	"net/netip"
	"testing"
)

func (x u128) big() *big.Int {
	b := new(big.Int).SetUint64(x.hi)
	b.Lsh(b, 64)
	return b.Or(b, new(big.Int).SetUint64(x.lo))
}

var two128 = new(big.Int).Lsh(big.NewInt(1), 128)

func TestU128ArithmeticMatchesBigInt(t *testing.T) {
	r := newRand(t)
	interesting := []u128{{}, {0, 1}, u128Max, {1, 0}, {0, ^uint64(0)}, {^uint64(0), 0}}
	pick := func() u128 {
		if r.IntN(3) == 0 {
			return interesting[r.IntN(len(interesting))]
		}
		return u128{r.Uint64(), r.Uint64()}
	}
	mod := func(b *big.Int) *big.Int { return b.Mod(b, two128) }
	for range 2000 {
		x, y := pick(), pick()
		n := uint(r.IntN(130))
		checks := []struct {
			name string
			got  u128
			want *big.Int
		}{
			{"add", x.add(y), mod(new(big.Int).Add(x.big(), y.big()))},
			{"sub", x.sub(y), mod(new(big.Int).Sub(x.big(), y.big()))},
			{"shl", x.shl(n), mod(new(big.Int).Lsh(x.big(), n))},
			{"shr", x.shr(n), new(big.Int).Rsh(x.big(), n)},
			{"lowMask", lowMask(n), mod(new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), min(n, 128)), big.NewInt(1)))},
		}
		for _, c := range checks {
			if c.got.big().Cmp(c.want) != 0 {
				t.Fatalf("%s(%x, %x, n=%d) = %x, want %x", c.name, x, y, n, c.got.big(), c.want)
			}
		}
		if got, want := x.cmp(y), x.big().Cmp(y.big()); got != want {
			t.Fatalf("cmp(%v, %v) = %d, want %d", x, y, got, want)
		}
	}
}

func TestU128AddrRoundTrip(t *testing.T) {
	for _, s := range []string{"0.0.0.0", "10.200.3.7", "255.255.255.255", "::", "fd00:200::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::ffff:10.0.0.1"} {
		a := netip.MustParseAddr(s)
		if got := u128FromAddr(a).addr(a.Is4()); got != a {
			t.Errorf("round trip of %s gave %s", a, got)
		}
	}
	if got := u128FromAddr(netip.MustParseAddr("10.0.0.1")); got != (u128{0, 0x0a000001}) {
		t.Errorf("10.0.0.1 = %v", got)
	}
	if got := u128FromAddr(netip.MustParseAddr("fd00::1:2")); got != (u128{0xfd00 << 48, 0x10002}) {
		t.Errorf("fd00::1:2 = %v", got)
	}
}

func TestSaturate64(t *testing.T) {
	if got := (u128{0, 7}).saturate64(); got != 7 {
		t.Errorf("saturate64(7) = %d", got)
	}
	if got := (u128{1, 0}).saturate64(); got != ^uint64(0) {
		t.Errorf("saturate64(2^64) = %d", got)
	}
}
