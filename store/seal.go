package store

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the length in bytes of every sealing key (AES-256).
const KeySize = 32

// The sealed format: one byte of format version, the 4-byte id of the key
// that sealed, a 12-byte random nonce, then the GCM ciphertext and its
// 16-byte tag.
const (
	sealFormat    byte = 1
	keyIDSize          = 4
	nonceSize          = 12
	tagSize            = 16
	sealHeaderLen      = 1 + keyIDSize
	sealOverhead       = sealHeaderLen + nonceSize + tagSize
)

// ParseKeys parses the value of TOKEN_ENCRYPTION_KEY: a comma-separated list
// of base64 values (standard or URL-safe alphabet, with or without padding),
// each of exactly KeySize bytes. Blanks around an element are ignored. An
// error names the position of the bad element ("key 2: ...") but never holds
// any part of it.
func ParseKeys(s string) ([][]byte, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("store: no encryption key")
	}
	elems := strings.Split(s, ",")
	keys := make([][]byte, 0, len(elems))
	for i, elem := range elems {
		elem = strings.TrimSpace(elem)
		if elem == "" {
			return nil, fmt.Errorf("store: encryption key %d: empty", i+1)
		}
		key, ok := decodeBase64(elem)
		if !ok {
			return nil, fmt.Errorf("store: encryption key %d: not valid base64", i+1)
		}
		if len(key) != KeySize {
			return nil, fmt.Errorf("store: encryption key %d: %d bytes, want %d", i+1, len(key), KeySize)
		}
		keys = append(keys, key)
	}
	return keys, nil
}

// decodeBase64 decodes s in whichever of the four common base64 forms it is
// written. It returns no error value because base64's errors quote the input.
func decodeBase64(s string) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{
		base64.StdEncoding, base64.RawStdEncoding,
		base64.URLEncoding, base64.RawURLEncoding,
	} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, true
		}
	}
	return nil, false
}

// A Sealer encrypts and authenticates small values with AES-256-GCM under a
// list of keys: the first key seals, every key opens. Each sealed value names
// its key by an id derived from the key itself, so the order of the keys in
// the configuration does not matter for opening, and a key can be rotated by
// putting the new one first and keeping the old one until every value has
// been sealed again.
//
// A Sealer is safe for concurrent use by multiple goroutines.
type Sealer struct {
	// keys holds one entry per configured key; keys[0] seals.
	keys []sealKey
}

type sealKey struct {
	id   [keyIDSize]byte
	aead cipher.AEAD
}

// NewSealer returns a Sealer over keys, each of KeySize bytes; keys[0] seals.
// It returns an error when keys is empty or a key has the wrong length.
func NewSealer(keys [][]byte) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("store: no encryption key")
	}
	s := &Sealer{keys: make([]sealKey, 0, len(keys))}
	for i, key := range keys {
		if len(key) != KeySize {
			return nil, fmt.Errorf("store: encryption key %d: %d bytes, want %d", i+1, len(key), KeySize)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("store: encryption key %d: %w", i+1, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("store: encryption key %d: %w", i+1, err)
		}
		s.keys = append(s.keys, sealKey{id: keyID(key), aead: aead})
	}
	return s, nil
}

// keyID returns the id that sealed values carry for key: the first bytes of
// its SHA-256, which identify the key without revealing it.
func keyID(key []byte) [keyIDSize]byte {
	sum := sha256.Sum256(key)
	return [keyIDSize]byte(sum[:keyIDSize])
}

// Seal encrypts plaintext with the first key, binding additionalData to it:
// Open must be given the same additionalData. Every call uses a fresh random
// nonce, so sealing the same plaintext twice gives different results.
func (s *Sealer) Seal(plaintext, additionalData []byte) []byte {
	k := s.keys[0]
	out := make([]byte, sealHeaderLen+nonceSize, sealOverhead+len(plaintext))
	out[0] = sealFormat
	copy(out[1:sealHeaderLen], k.id[:])
	nonce := out[sealHeaderLen:]
	// crypto/rand.Read never fails; it crashes the program if the system's
	// random source does.
	_, _ = rand.Read(nonce)
	return k.aead.Seal(out, nonce, plaintext, additionalData)
}

// Open decrypts sealed, which Seal made with any of the Sealer's keys and the
// same additionalData. Every failure (a truncated or altered value, an
// unknown format, a key that is not configured, other additional data)
// returns an error wrapping ErrSealed; the error never holds key material or
// plaintext.
func (s *Sealer) Open(sealed, additionalData []byte) ([]byte, error) {
	if len(sealed) < sealOverhead {
		return nil, fmt.Errorf("sealed value too short: %w", ErrSealed)
	}
	if sealed[0] != sealFormat {
		return nil, fmt.Errorf("unknown sealed format %d: %w", sealed[0], ErrSealed)
	}
	id := [keyIDSize]byte(sealed[1:sealHeaderLen])
	nonce := sealed[sealHeaderLen : sealHeaderLen+nonceSize]
	ciphertext := sealed[sealHeaderLen+nonceSize:]
	known := false
	for _, k := range s.keys {
		// Ids are short, so two keys may share one: try each that matches.
		if k.id != id {
			continue
		}
		known = true
		if plaintext, err := k.aead.Open(nil, nonce, ciphertext, additionalData); err == nil {
			return plaintext, nil
		}
	}
	if !known {
		return nil, fmt.Errorf("sealed with a key that is not configured: %w", ErrSealed)
	}
	return nil, fmt.Errorf("sealed value does not authenticate: %w", ErrSealed)
}

// NeedsReseal reports whether sealed was not sealed by the first key (the
// one that seals now), so that a re-seal pass should open it and seal it
// again. A value that is not in the sealed format at all also needs it.
func (s *Sealer) NeedsReseal(sealed []byte) bool {
	if len(sealed) < sealHeaderLen || sealed[0] != sealFormat {
		return true
	}
	return [keyIDSize]byte(sealed[1:sealHeaderLen]) != s.keys[0].id
}
