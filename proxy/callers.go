package proxy

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync/atomic"
)

// CallerKeys says which caller may act for which tenants. It is immutable;
// Callers swaps it whole on reload.
//
// The file (CALLER_KEYS_FILE) has one caller a line: a name, the SHA-256 of
// its key as "sha256:<64 hex digits>", and the tenants it may use, as ids or
// patterns where "*" stands for any run of characters ("*" alone: every
// tenant). Blank lines and lines starting with "#" are ignored:
//
//	# name      key hash                                                                  tenants
//	billing     sha256:5e8848...                                                          acme globex
//	reports     sha256:6b86b2...                                                          eu-* *-test
//
// Keys are random secrets (thanksio-proxy caller-key makes one), so a fast
// hash is enough: nothing can be learnt from it by guessing.
type CallerKeys struct {
	byHash map[[32]byte]*caller
}

type caller struct {
	name     string
	patterns []string
	// inflight counts the caller's requests in flight, for
	// MaxCallerConcurrency. A reload starts new counts; requests in flight
	// then finish on the old ones.
	inflight atomic.Int64
}

// ParseCallerKeys reads a caller keys file. An error names the line.
func ParseCallerKeys(r io.Reader) (*CallerKeys, error) {
	k := &CallerKeys{byHash: make(map[[32]byte]*caller)}
	names := make(map[string]bool)
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 3 {
			return nil, fmt.Errorf("line %d: want a name, a sha256: key hash and at least one tenant pattern", n)
		}
		name, hash, patterns := fields[0], fields[1], fields[2:]
		if names[name] {
			return nil, fmt.Errorf("line %d: caller %q appears twice", n, name)
		}
		hexSum, ok := strings.CutPrefix(hash, "sha256:")
		sum, err := hex.DecodeString(hexSum)
		if !ok || err != nil || len(sum) != sha256.Size {
			return nil, fmt.Errorf("line %d: the key hash must be sha256: and 64 hex digits (never the key itself)", n)
		}
		for _, p := range patterns {
			if !validPattern(p) {
				return nil, fmt.Errorf("line %d: %q is not a tenant id or pattern ([A-Za-z0-9._-] and *)", n, p)
			}
		}
		var key [32]byte
		copy(key[:], sum)
		if _, dup := k.byHash[key]; dup {
			return nil, fmt.Errorf("line %d: caller %q has the same key as another caller", n, name)
		}
		names[name] = true
		k.byHash[key] = &caller{name: name, patterns: patterns}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(k.byHash) == 0 {
		return nil, errors.New("no caller is defined")
	}
	return k, nil
}

// LoadCallerKeys reads the caller keys file at path.
func LoadCallerKeys(path string) (*CallerKeys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseCallerKeys(f)
}

// HashCallerKey returns the line form of key's hash, for the keys file.
func HashCallerKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Len reports how many callers are defined.
func (k *CallerKeys) Len() int { return len(k.byHash) }

// lookup returns the caller holding key.
func (k *CallerKeys) lookup(key string) (*caller, bool) {
	c, ok := k.byHash[sha256.Sum256([]byte(key))]
	return c, ok
}

// allows reports whether the caller may use tenant.
func (c *caller) allows(tenant string) bool {
	for _, p := range c.patterns {
		// A tenant id holds no '/', and a pattern only '*' beside the
		// tenant alphabet (validPattern), so path.Match's '*' is "any run
		// of characters", and it never reports a malformed pattern.
		if ok, _ := path.Match(p, tenant); ok {
			return true
		}
	}
	return false
}

func validPattern(p string) bool {
	if p == "" || len(p) > 128 {
		return false
	}
	return ValidTenant(strings.ReplaceAll(p, "*", "x"))
}

// Callers holds the caller keys in force, swapped whole on reload. It is
// safe for concurrent use.
type Callers struct {
	keys atomic.Pointer[CallerKeys]
}

// NewCallers returns Callers with k in force.
func NewCallers(k *CallerKeys) *Callers {
	c := &Callers{}
	c.keys.Store(k)
	return c
}

// Set puts k in force for the requests that start from now on.
func (c *Callers) Set(k *CallerKeys) { c.keys.Store(k) }

// identify returns the caller whose key was presented.
func (c *Callers) identify(values []string, header string) (*caller, *Error) {
	if len(values) != 1 || values[0] == "" {
		return nil, &Error{Status: 401, Code: CodeInvalidCaller,
			Message: fmt.Sprintf("A caller key is required, once, in the %s header.", header)}
	}
	cl, ok := c.keys.Load().lookup(values[0])
	if !ok {
		return nil, &Error{Status: 401, Code: CodeInvalidCaller, Message: "The caller key is not valid."}
	}
	return cl, nil
}

// notAllowed is the answer to a caller naming a tenant outside its allowance.
var notAllowed = &Error{Status: 403, Code: CodeTenantNotAllowed, Message: "This caller may not act for that tenant."}
