package auth

import "time"

// Notifier is told of tenants' state changes, for the application (the
// events webhook). Notify is called after the change is stored, by the
// replica that stored it, once per change across replicas; it must not
// block long (it runs inside the token lifecycle, sometimes under a
// tenant's refresh lock) and must be safe for concurrent use. A nil
// Notifier in Config tells nobody.
type Notifier interface {
	Notify(StateChange)
}

// StateChange is one change of a tenant's state. It carries no token.
type StateChange struct {
	Tenant string
	// Type is one of the Change constants.
	Type string
	// Reason says what happened, in short words that hold no secret.
	Reason string
	// Time is when the change was stored, by Config.Now.
	Time time.Time
}

// The types of StateChange.
const (
	// ChangeConnected: a token was imported through the admin API, or the
	// account owner completed the OAuth connect flow.
	ChangeConnected = "tenant.connected"
	// ChangeReauthorizationRequired: thanks.io refused the refresh token as
	// revoked; the account owner must connect again.
	ChangeReauthorizationRequired = "tenant.reauthorization_required"
	// ChangeRefreshFailing: RefreshFailingAfter consecutive refreshes of the
	// tenant failed (the token endpoint down or refusing the client, not a
	// revocation).
	ChangeRefreshFailing = "tenant.refresh_failing"
	// ChangeRecovered: a refresh succeeded after ChangeRefreshFailing.
	ChangeRecovered = "tenant.recovered"
	// ChangeDeleted: the tenant was forgotten.
	ChangeDeleted = "tenant.deleted"
)

// RefreshFailingAfter is how many consecutive failed refreshes of a tenant,
// counted in its record across replicas, make it refresh_failing.
const RefreshFailingAfter = 3

// notify tells the Notifier, if any, of a change just stored.
func (t *Tokens) notify(tenant, typ, reason string) {
	if t.cfg.Notifier == nil {
		return
	}
	t.cfg.Notifier.Notify(StateChange{Tenant: tenant, Type: typ, Reason: reason, Time: t.now()})
}
