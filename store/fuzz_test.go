package store_test

import (
	"bytes"
	"errors"
	"testing"

	"thanksio-proxy/store"
)

// fuzzKey returns a fixed key, so that seals kept in the corpus open in
// later runs.
func fuzzKey(first byte) []byte {
	key := make([]byte, store.KeySize)
	for i := range key {
		key[i] = first + byte(i)
	}
	return key
}

// FuzzOpenSealed opens arbitrary bytes under arbitrary additional data, and
// seals and opens arbitrary plaintexts: Open never panics, every failure
// wraps ErrSealed, a round trip (also through a rotated key) gives the
// plaintext back, and any change of one bit, of the length or of the
// additional data is refused.
func FuzzOpenSealed(f *testing.F) {
	current, retired := fuzzKey(0), fuzzKey(100)
	sealer := mustSealer(f, current, retired) // current seals, both open
	old := mustSealer(f, retired)
	other := mustSealer(f, fuzzKey(200))

	record := []byte(`{"access_token":"at_x","refresh_token":"rt_y","state":"active"}`)
	f.Add(sealer.Seal(record, []byte("acme")), []byte("acme"), record, uint(0))
	f.Add(old.Seal(record, []byte("acme")), []byte("acme"), []byte{}, uint(7))
	f.Add(sealer.Seal(nil, nil), []byte{}, []byte("x"), uint(12345))
	f.Add(sealer.Seal(record, []byte("acme")), []byte("globex"), record, uint(1<<20))
	f.Add(other.Seal(record, []byte("acme")), []byte("acme"), record, uint(3))
	f.Add([]byte{}, []byte{}, []byte{}, uint(0))
	f.Add([]byte{1, 2, 3}, []byte("acme"), []byte("p"), uint(1))
	f.Add(bytes.Repeat([]byte{1}, 33), []byte("acme"), bytes.Repeat([]byte{0xff}, 300), uint(99))

	f.Fuzz(func(t *testing.T, sealed, ad, plaintext []byte, flip uint) {
		// Arbitrary input.
		got, err := sealer.Open(sealed, ad)
		if err != nil {
			if !errors.Is(err, store.ErrSealed) {
				t.Errorf("Open(%x) = %v; want an error wrapping ErrSealed", sealed, err)
			}
			if got != nil {
				t.Errorf("Open(%x) failed yet returned %x", sealed, got)
			}
		} else if len(sealed) != 1+4+12+16+len(got) || sealed[0] != 1 {
			t.Errorf("Open(%x) = %x; a genuine seal is 33 bytes longer than its plaintext, in format 1", sealed, got)
		}
		_ = sealer.NeedsReseal(sealed)

		// Round trips, with the current key and with a retired one.
		for _, s := range []*store.Sealer{sealer, old} {
			out := s.Seal(plaintext, ad)
			back, err := sealer.Open(out, ad)
			if err != nil || !bytes.Equal(back, plaintext) {
				t.Fatalf("Open(Seal(%x)) = %x, %v; want the plaintext", plaintext, back, err)
			}
			if s == sealer && sealer.NeedsReseal(out) || s == old && !sealer.NeedsReseal(out) {
				t.Errorf("NeedsReseal of a value sealed by the %s key is wrong", map[bool]string{true: "current", false: "retired"}[s == sealer])
			}
			if _, err := other.Open(out, ad); !errors.Is(err, store.ErrSealed) {
				t.Errorf("a value opened under a key that did not seal it: %v", err)
			}
		}

		out := sealer.Seal(plaintext, ad)
		refused := func(what string, sealed, ad []byte) {
			t.Helper()
			got, err := sealer.Open(sealed, ad)
			if !errors.Is(err, store.ErrSealed) || got != nil {
				t.Errorf("Open with %s = %x, %v; want an error wrapping ErrSealed", what, got, err)
				return
			}
			if len(plaintext) >= 8 && bytes.Contains([]byte(err.Error()), plaintext) {
				t.Errorf("Open's error %q holds the plaintext", err)
			}
		}
		// One bit of any byte changed.
		damaged := bytes.Clone(out)
		i := int(flip % uint(len(damaged)))
		damaged[i] ^= 1 << ((flip / uint(len(damaged))) % 8)
		refused("one bit changed", damaged, ad)
		refused("the last byte cut", out[:len(out)-1], ad)
		refused("a byte added", append(bytes.Clone(out), 0), ad)
		refused("other additional data", out, append(bytes.Clone(ad), 0))
		if len(ad) > 0 {
			refused("shorter additional data", out, ad[:len(ad)-1])
		}
	})
}
