package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// The argument checks that Memory and Redis share, so that both refuse the
// same calls with the same words.
var (
	errInvalidTenant = errors.New("invalid tenant id")
	errInvalidLimit  = errors.New("limit must be positive")
	errInvalidTTL    = errors.New("ttl must be at least 1ms")
)

// checkTenant refuses tenant ids that would break the key layout: an empty
// id, or one holding a brace (it would move the Redis Cluster hash tag), a
// blank or a control character.
func checkTenant(tenant string) error {
	if tenant == "" {
		return errInvalidTenant
	}
	for i := 0; i < len(tenant); i++ {
		switch c := tenant[i]; {
		case c <= ' ', c == 0x7f, c == '{', c == '}':
			return errInvalidTenant
		}
	}
	return nil
}

func checkLimit(limit int) error {
	if limit < 1 {
		return errInvalidLimit
	}
	return nil
}

// checkTTL refuses ttls that Redis cannot keep: it counts in whole
// milliseconds, and a zero or negative expiry means none.
func checkTTL(ttl time.Duration) error {
	if ttl < time.Millisecond {
		return errInvalidTTL
	}
	return nil
}

// knownStates are the states that CountByState counts, in the order the
// Redis state sets are updated.
var knownStates = []State{StateActive, StateReauthorizationRequired}

// indexedState returns the state rec counts under in the indexes (the
// expiry index and the per-state counts). An empty State counts as
// StateActive, as the token lifecycle treats it; the stored record keeps
// its State as written.
func indexedState(rec TokenRecord) State {
	if rec.State == "" {
		return StateActive
	}
	return rec.State
}

// dueIndexed reports whether rec belongs in the expiry index that DueBefore
// reads: a refreshable token that expires, of a tenant in good health
// (active, or with an empty State).
func dueIndexed(rec TokenRecord) bool {
	return rec.Refreshable() && !rec.Expiry.IsZero() && indexedState(rec) == StateActive
}

// checkCall checks what every per-tenant call needs: a live ctx and a
// valid tenant id.
func checkCall(ctx context.Context, tenant string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return checkTenant(tenant)
}

func checkLockCall(ctx context.Context, tenant string, ttl time.Duration) error {
	if err := checkCall(ctx, tenant); err != nil {
		return err
	}
	return checkTTL(ttl)
}

// checkRestore checks that rec can be written back: a stored version, 1 or
// more.
func checkRestore(tenant string, rec TokenRecord) error {
	if rec.Version < 1 {
		return fmt.Errorf("store: restore %q: version %d is not a stored version", tenant, rec.Version)
	}
	return nil
}

// restoreData checks that rec can be written back and returns its JSON.
func restoreData(tenant string, rec TokenRecord) ([]byte, error) {
	if err := checkRestore(tenant, rec); err != nil {
		return nil, err
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("store: restore %q: encode: %w", tenant, err)
	}
	return data, nil
}
