package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// RateRule limits one tenant's upstream calls: at most Limit calls in any
// window of Period. Calls are spaced so that the call that would be the
// Limit+1st in a window goes Guard after that window ends, for the time a
// call takes to reach the upstream varies by a little.
type RateRule struct {
	Limit  int
	Period time.Duration
	Guard  time.Duration
}

// Slot is a place reserved in a tenant's schedule of upstream calls.
type Slot struct {
	// ID names the reservation, for Confirm and Release. It is empty when
	// nothing was reserved.
	ID string
	// Wait is the time from now until the slot comes: 0 means at once.
	// When nothing was reserved, it is when the slot would have come.
	Wait time.Duration
}

// Reserved reports whether the slot was reserved.
func (s Slot) Reserved() bool { return s.ID != "" }

// A schedule is a sliding-window log per tenant: the times of the calls
// sent and of the calls reserved, in order. A call is placed at the
// earliest time that is at least now, not before the last call placed (so
// calls go in the order they were placed), at least Period+Guard after the
// Limit-th call before it, and not inside a pause; so any window of Period
// holds at most Limit calls, whatever the clocks of the callers (the time
// is the schedule's own: Redis's, for RedisSchedule).
//
// A pause (the upstream said the tenant is over its limit) places the
// reservations still to come again, in their order, from the pause's end;
// their waiters learn it when they Confirm. A reservation is never placed
// earlier than it was: the waiters of other replicas, which the pause's
// wake does not reach, sleep until their old slot, and a slot brought
// forward into room that released reservations left would let the calls
// placed after it share its window when it goes late.

// RedisSchedule keeps the tenants' schedules in Redis, shared by every
// replica that uses the same Redis and key prefix. The time is Redis's
// (TIME), so replicas' clocks do not matter. Its keys are
// P{tenant}:rate (a sorted set of the calls, scored by their time in Unix
// milliseconds), P{tenant}:pause (the end of a pause, with a TTL) and
// P{tenant}:dropped (the ids of reservations given up before their
// script ran, for a minute).
// It is safe for concurrent use.
//
// Reserve and Confirm share round trips: the calls made while one is under
// way go together in the next, as one pipeline (see scriptBatch).
type RedisSchedule struct {
	client redis.UniversalClient
	prefix string
	ids    idSource
	batch  *scriptBatch
	rule   atomic.Pointer[ruleArgs] // the last rule Reserve was given
}

// ruleArgs is a rule as the scripts take it, made once for the calls that
// follow: the limiter gives every call the same rule.
type ruleArgs struct {
	rule                 RateRule
	limit, period, guard any
}

// args returns rule as the scripts take it.
func (s *RedisSchedule) args(rule RateRule) *ruleArgs {
	if a := s.rule.Load(); a != nil && a.rule == rule {
		return a
	}
	a := &ruleArgs{rule: rule, limit: rule.Limit, period: rule.Period.Milliseconds(), guard: rule.Guard.Milliseconds()}
	s.rule.Store(a)
	return a
}

// Schedule returns the schedule of upstream calls kept beside r's records.
func (r *Redis) Schedule() *RedisSchedule {
	return &RedisSchedule{client: r.client, prefix: r.prefix, ids: newIDSource(), batch: &scriptBatch{client: r.client}}
}

func (s *RedisSchedule) rateKey(tenant string) string  { return s.prefix + "{" + tenant + "}:rate" }
func (s *RedisSchedule) dropKey(tenant string) string  { return s.prefix + "{" + tenant + "}:dropped" }
func (s *RedisSchedule) pauseKey(tenant string) string { return s.prefix + "{" + tenant + "}:pause" }

// reserveKeys returns the keys of reserveScript for tenant (rateKey,
// pauseKey, dropKey) in one allocation: every call reserves.
func (s *RedisSchedule) reserveKeys(tenant string) []string {
	p := s.prefix
	all := p + "{" + tenant + "}:rate" + p + "{" + tenant + "}:pause" + p + "{" + tenant + "}:dropped"
	rate := len(p) + len(tenant) + len("{}:rate")
	pause := rate + len(p) + len(tenant) + len("{}:pause")
	return []string{all[:rate], all[rate:pause], all[pause:]}
}

// Calls are kept for two periods and a guard: the placing needs one, and
// a pause for others' calls counts the period before a call whose answer
// may come late.
//
// The scripts read the time from Redis: every replica places calls on one
// clock. Redis 5 and later replicate a script's effects, not the script,
// so TIME is allowed. place returns where the schedule KEYS[1] would put
// a call, not before floor.
const schedulePrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function place(floor, limit, period, guard)
  local at = floor
  local n = redis.call('ZCARD', KEYS[1])
  if n >= limit then
    local nth = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
    at = math.max(at, tonumber(nth[2]) + period + guard)
  end
  if n > 0 then
    local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
    at = math.max(at, tonumber(last[2]))
  end
  return at
end
`

var (
	// KEYS[1] the schedule, KEYS[2] the pause, KEYS[3] the ids dropped
	// before their reservation ran; ARGV: limit, period ms, guard ms, max
	// wait ms, the reservation's id, the floor ms (the earliest the
	// caller's own history allows). It returns {1, wait} when it
	// reserved, {0, wait} when the slot would come later than the max
	// wait or the id was dropped (nothing is reserved then).
	reserveScript = redis.NewScript(schedulePrelude + `
local limit, period, guard, maxWait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - 2 * period - guard))
local at = place(math.max(now + tonumber(ARGV[6]), tonumber(redis.call('GET', KEYS[2]) or '0')), limit, period, guard)
if at - now > maxWait or redis.call('SISMEMBER', KEYS[3], ARGV[5]) == 1 then
  return {0, at - now}
end
redis.call('ZADD', KEYS[1], at, ARGV[5])
redis.call('PEXPIRE', KEYS[1], at - now + 2 * period + guard + 1000)
return {1, at - now}
`)

	// KEYS[1] the schedule; ARGV[1] the reservation's id. It returns the
	// wait until the reservation, or -1 when it is gone.
	confirmScript = redis.NewScript(schedulePrelude + `
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not at then
  return -1
end
return math.max(0, tonumber(at) - now)
`)

	// KEYS[1] the schedule, KEYS[2] the pause; ARGV: the pause in ms,
	// limit, period ms, guard ms, "1" when the pause is for calls of
	// others (then it is set only when fewer than limit calls of the
	// schedule went in the period before the call that was answered,
	// sent ARGV[6] ms ago: the upstream's count is not ours). It places
	// the reservations still to come again from the pause's end, none
	// earlier than it was, and returns 1, or 0 when it changed nothing.
	pauseScript = redis.NewScript(schedulePrelude + `
local d, limit, period, guard = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local sent = now - tonumber(ARGV[6])
if ARGV[5] == '1' and redis.call('ZCOUNT', KEYS[1], sent - period, sent) >= limit then
  return 0
end
local till = now + d
if tonumber(redis.call('GET', KEYS[2]) or '0') >= till then
  return 0
end
redis.call('SET', KEYS[2], till, 'PX', d)
local ahead = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local at = till
for i = 1, #ahead, 2 do
  at = math.max(place(till, limit, period, guard), tonumber(ahead[i + 1]))
  redis.call('ZADD', KEYS[1], at, ahead[i])
end
redis.call('PEXPIRE', KEYS[1], at - now + 2 * period + guard + 1000)
return 1
`)
)

// Reserve places a call for tenant under rule, no earlier than floor from
// now, and returns its slot, or, when the slot would come later than
// maxWait from now, reserves nothing and returns when it would have come.
func (s *RedisSchedule) Reserve(ctx context.Context, tenant string, rule RateRule, maxWait, floor time.Duration) (Slot, error) {
	if err := checkRule(tenant, rule); err != nil {
		return Slot{}, fmt.Errorf("store: reserve %q: %w", tenant, err)
	}
	id := s.ids.next()
	a := s.args(rule)
	// The floor is rounded up to the script's milliseconds: one that ends
	// a pause must not let the call go inside it.
	floorMs := (max(0, floor) + time.Millisecond - 1).Milliseconds()
	cmd, sent, err := s.batch.run(ctx, reserveScript, s.reserveKeys(tenant),
		a.limit, a.period, a.guard, maxWait.Milliseconds(), id, floorMs)
	var res []int64
	if err == nil {
		res, err = cmd.Int64Slice()
	}
	if err != nil {
		if sent {
			// The script may still run (it was sent, and the answer is
			// what did not come): drop its id, whichever runs first.
			go s.drop(tenant, id)
		}
		return Slot{}, fmt.Errorf("store: reserve %q: %w", tenant, err)
	}
	if len(res) != 2 {
		return Slot{}, fmt.Errorf("store: reserve %q: unexpected answer %v", tenant, res)
	}
	slot := Slot{Wait: time.Duration(res[1]) * time.Millisecond}
	if res[0] == 1 {
		slot.ID = id
	}
	return slot, nil
}

// Confirm returns the time left until the reservation id of tenant comes,
// which a pause may have moved since it was made: 0 means it is the call's
// turn now. It returns ErrNotFound when the reservation is gone (Redis lost
// its data, or the key expired).
func (s *RedisSchedule) Confirm(ctx context.Context, tenant, id string) (time.Duration, error) {
	cmd, _, err := s.batch.run(ctx, confirmScript, []string{s.rateKey(tenant)}, id)
	var ms int64
	if err == nil {
		ms, err = cmd.Int64()
	}
	if err != nil {
		return 0, fmt.Errorf("store: confirm %q: %w", tenant, err)
	}
	if ms < 0 {
		return 0, fmt.Errorf("store: confirm %q: %w", tenant, ErrNotFound)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// Release gives back a reservation whose call will not be sent.
func (s *RedisSchedule) Release(ctx context.Context, tenant, id string) error {
	if err := s.client.ZRem(ctx, s.rateKey(tenant), id).Err(); err != nil {
		return fmt.Errorf("store: release %q: %w", tenant, err)
	}
	return nil
}

// Pause holds tenant's calls for d from now, and places the reservations
// still to come again from its end, none earlier than it was. With others
// set, the pause is for calls that others made on the same account: it is
// set only when fewer than rule.Limit of the schedule's calls went in the
// rule.Period before the call that was answered, sent took ago. It reports
// whether it set or lengthened a pause.
func (s *RedisSchedule) Pause(ctx context.Context, tenant string, rule RateRule, d time.Duration, others bool, took time.Duration) (bool, error) {
	if err := checkRule(tenant, rule); err != nil {
		return false, fmt.Errorf("store: pause %q: %w", tenant, err)
	}
	if d < time.Millisecond {
		return false, nil
	}
	flag := "0"
	if others {
		flag = "1"
	}
	n, err := pauseScript.Run(ctx, s.client, []string{s.rateKey(tenant), s.pauseKey(tenant)},
		d.Milliseconds(), rule.Limit, rule.Period.Milliseconds(), rule.Guard.Milliseconds(), flag,
		max(0, took).Milliseconds()).Int64()
	if err != nil {
		return false, fmt.Errorf("store: pause %q: %w", tenant, err)
	}
	return n == 1, nil
}

// dropScript takes back a reservation whose Reserve did not answer: it
// removes the id from the schedule and marks it dropped for a minute, so
// that the reservation's script, if it runs later, reserves nothing.
// KEYS[1] the schedule, KEYS[2] the dropped ids; ARGV[1] the id.
var dropScript = redis.NewScript(`
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], 60000)
return 1
`)

// drop runs dropScript for id of tenant, trying again every second for a
// minute while Redis does not answer.
func (s *RedisSchedule) drop(tenant, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for dropScript.Run(ctx, s.client, []string{s.rateKey(tenant), s.dropKey(tenant)}, id).Err() != nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// checkRule refuses a tenant id that cannot be a key, and a rule that
// admits nothing.
func checkRule(tenant string, rule RateRule) error {
	if err := checkTenant(tenant); err != nil {
		return err
	}
	if rule.Limit < 1 || rule.Period < time.Millisecond || rule.Guard < 0 {
		return errors.New("invalid rate rule")
	}
	return nil
}

// idSource names reservations: a random prefix drawn once, and a counter,
// unique across replicas without a random draw per call.
type idSource struct {
	prefix string
	n      *atomic.Uint64
}

func newIDSource() idSource {
	return idSource{prefix: randomEpoch()[:12] + ":", n: new(atomic.Uint64)}
}

func (s idSource) next() string {
	var b [24]byte
	return s.prefix + string(strconv.AppendUint(b[:0], s.n.Add(1), 36))
}
