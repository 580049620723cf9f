package store_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"thanksio-proxy/store"
)

// newKey returns a random sealing key.
func newKey(t testing.TB) []byte {
	t.Helper()
	key := make([]byte, store.KeySize)
	_, _ = rand.Read(key)
	return key
}

// mustSealer returns a Sealer over keys, failing the test if it cannot.
func mustSealer(t testing.TB, keys ...[]byte) *store.Sealer {
	t.Helper()
	s, err := store.NewSealer(keys)
	if err != nil {
		t.Fatalf("NewSealer: %v", err)
	}
	return s
}

func TestSealOpen(t *testing.T) {
	a, b := newKey(t), newKey(t)
	plaintext := []byte(`{"access_token":"secret"}`)
	ad := []byte("acme")

	sealed := mustSealer(t, a).Seal(plaintext, ad)
	if bytes.Contains(sealed, []byte("secret")) {
		t.Fatalf("Seal output holds the plaintext")
	}
	if again := mustSealer(t, a).Seal(plaintext, ad); bytes.Equal(sealed, again) {
		t.Errorf("Seal twice gave the same bytes; want a fresh nonce each time")
	}

	tests := []struct {
		name    string
		sealer  *store.Sealer
		ad      []byte
		wantErr bool
	}{
		{name: "same key", sealer: mustSealer(t, a), ad: ad},
		{name: "key among others, any order", sealer: mustSealer(t, b, a), ad: ad},
		{name: "other key", sealer: mustSealer(t, b), ad: ad, wantErr: true},
		{name: "other additional data", sealer: mustSealer(t, a), ad: []byte("acme2"), wantErr: true},
		{name: "no additional data", sealer: mustSealer(t, a), ad: nil, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.sealer.Open(sealed, tt.ad)
			if tt.wantErr {
				if !errors.Is(err, store.ErrSealed) {
					t.Fatalf("Open = %q, %v; want ErrSealed", got, err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, plaintext) {
				t.Fatalf("Open = %q, %v; want %q", got, err, plaintext)
			}
		})
	}
}

func TestOpenDamaged(t *testing.T) {
	s := mustSealer(t, newKey(t))
	ad := []byte("acme")
	sealed := s.Seal([]byte("a token"), ad)

	// Every truncation, including the empty value and a bare header.
	for n := 0; n < len(sealed); n++ {
		if _, err := s.Open(sealed[:n], ad); !errors.Is(err, store.ErrSealed) {
			t.Errorf("Open(first %d bytes) = %v; want ErrSealed", n, err)
		}
	}
	// Every single flipped bit of every byte position.
	for i := range sealed {
		damaged := bytes.Clone(sealed)
		damaged[i] ^= 0x01
		if _, err := s.Open(damaged, ad); !errors.Is(err, store.ErrSealed) {
			t.Errorf("Open(byte %d flipped) = %v; want ErrSealed", i, err)
		}
	}
	garbage := []struct {
		name string
		in   []byte
	}{
		{name: "nil", in: nil},
		{name: "text", in: []byte(`{"access_token":"x"}`)},
		{name: "unknown format", in: append([]byte{2}, sealed[1:]...)},
		{name: "long zeros", in: make([]byte, 200)},
		{name: "extra byte", in: append(bytes.Clone(sealed), 0)},
	}
	for _, tt := range garbage {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.Open(tt.in, ad); !errors.Is(err, store.ErrSealed) {
				t.Errorf("Open(%s) = %v; want ErrSealed", tt.name, err)
			}
		})
	}
}

func TestNeedsReseal(t *testing.T) {
	a, b := newKey(t), newKey(t)
	underA := mustSealer(t, a).Seal([]byte("x"), nil)
	underB := mustSealer(t, b).Seal([]byte("x"), nil)
	rotated := mustSealer(t, b, a)

	tests := []struct {
		name   string
		sealed []byte
		want   bool
	}{
		{name: "sealed by the first key", sealed: underB, want: false},
		{name: "sealed by an older key", sealed: underA, want: true},
		{name: "not sealed at all", sealed: []byte("plain"), want: true},
		{name: "empty", sealed: nil, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rotated.NeedsReseal(tt.sealed); got != tt.want {
				t.Errorf("NeedsReseal = %v; want %v", got, tt.want)
			}
		})
	}
}

func TestParseKeys(t *testing.T) {
	a, b := newKey(t), newKey(t)
	stdA := base64.StdEncoding.EncodeToString(a)
	stdB := base64.StdEncoding.EncodeToString(b)
	short := base64.StdEncoding.EncodeToString(a[:16])
	long := base64.StdEncoding.EncodeToString(append(bytes.Clone(a), b...))

	tests := []struct {
		name string
		in   string
		want [][]byte
		// wantErr is a part of the expected error; "" means no error.
		wantErr string
		// secret is text of the input that the error must not hold.
		secret string
	}{
		{name: "one key", in: stdA, want: [][]byte{a}},
		{name: "two keys", in: stdB + "," + stdA, want: [][]byte{b, a}},
		{name: "blanks around elements", in: " " + stdA + " , " + stdB + "\n", want: [][]byte{a, b}},
		{name: "url-safe", in: base64.URLEncoding.EncodeToString(a), want: [][]byte{a}},
		{name: "unpadded", in: base64.RawStdEncoding.EncodeToString(a), want: [][]byte{a}},
		{name: "unpadded url-safe", in: base64.RawURLEncoding.EncodeToString(a), want: [][]byte{a}},
		{name: "empty", in: "", wantErr: "no encryption key"},
		{name: "blank", in: "  ", wantErr: "no encryption key"},
		{name: "empty element", in: stdA + ",," + stdB, wantErr: "key 2: empty", secret: stdA},
		{name: "trailing comma", in: stdA + ",", wantErr: "key 2: empty", secret: stdA},
		{name: "too short", in: short, wantErr: "key 1: 16 bytes, want 32", secret: short},
		{name: "too long", in: stdA + "," + long, wantErr: "key 2: 64 bytes, want 32", secret: long},
		{name: "not base64", in: stdA + "," + "s3cr3t!s3cr3t!s3cr3t!s3cr3t!s3cr3t!s3cr3t!s3", wantErr: "key 2: not valid base64", secret: "s3cr3t"},
		{name: "hex, not base64", in: strings.Repeat("ab", 32) + "!", wantErr: "key 1: not valid base64", secret: "abab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := store.ParseKeys(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseKeys = %d keys, nil; want error %q", len(got), tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("ParseKeys error = %q; want it to contain %q", err, tt.wantErr)
				}
				if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
					t.Errorf("ParseKeys error = %q; it holds key material", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKeys: %v", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("ParseKeys = %d keys; want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !bytes.Equal(got[i], tt.want[i]) {
					t.Errorf("ParseKeys key %d differs from the input", i+1)
				}
			}
		})
	}
}

func TestNewSealerRefuses(t *testing.T) {
	tests := []struct {
		name string
		keys [][]byte
	}{
		{name: "no keys", keys: nil},
		{name: "short key", keys: [][]byte{make([]byte, 16)}},
		{name: "second key long", keys: [][]byte{make([]byte, 32), make([]byte, 33)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := store.NewSealer(tt.keys); err == nil {
				t.Errorf("NewSealer = %v, nil; want an error", s)
			}
		})
	}
}
