// Package events tells the application of tenants' state changes: a signed
// JSON POST (a webhook) for every auth.StateChange, kept in an outbox until
// it is delivered.
//
// Delivery is at least once: an event is retried with backoff until the
// receiver answers 2xx or the event is MaxAge old, and a receiver may get
// an event twice (an answer lost on the way back, a replica stopped between
// the receiver's answer and its record of it). Receivers deduplicate by the
// event's id.
//
// Across replicas sharing a Redis outbox, one attempt at a time is made
// per event: the replica that made the change sends it at once; a retry,
// or an event left by a replica that stopped, is sent by whichever replica
// claims it first.
package events

import (
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"
)

// Event is the JSON body of a webhook call. It never carries a token.
type Event struct {
	// ID is "evt_" and 32 hex digits, the same on every delivery of the
	// event: receivers deduplicate by it.
	ID string `json:"id"`
	// Type is one of auth's Change constants ("tenant.connected", ...).
	Type   string `json:"type"`
	Tenant string `json:"tenant"`
	// Time is when the change was stored (UTC).
	Time time.Time `json:"time"`
	// Reason says what happened, in short words that hold no secret.
	Reason string `json:"reason"`
}

// SignatureHeader carries the signature of a webhook call:
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" under the
// secret>", the scheme Stripe signs its webhooks with.
const SignatureHeader = "X-Thanksio-Proxy-Signature"

// signature returns the value of SignatureHeader for body sent at t.
func signature(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// newID returns a fresh event id: "evt_" and 128 random bits in hex.
func newID() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	return "evt_" + hex.EncodeToString(b[:])
}
