package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/store"
)

// Outbox keeps events until they are delivered, shared by the replicas that
// use it (store.RedisOutbox), or in this process (store.MemoryOutbox). Each
// entry is due from some time on; Claim takes due entries, each for a lease
// during which no other Claim returns it. Leases and due times are the
// outbox's own clock. Implementations must be safe for concurrent use.
type Outbox interface {
	// Add keeps data under id, claimed by the caller for lease (zero: due
	// at once).
	Add(ctx context.Context, id string, data []byte, lease time.Duration) error
	// Claim takes up to n (at least 1) due entries, each claimed for lease.
	Claim(ctx context.Context, n int, lease time.Duration) ([]store.OutboxItem, error)
	// Retry counts an attempt on the entry and makes it due after after.
	// An entry that is gone is store.ErrNotFound.
	Retry(ctx context.Context, id string, after time.Duration) error
	// Release gives the caller's claim back: the entry is due at once, and
	// no attempt is counted. An entry that is gone is store.ErrNotFound.
	Release(ctx context.Context, id string) error
	// Done removes the entry.
	Done(ctx context.Context, id string) error
}

// Observer is told the outcome of every delivery attempt, for metrics:
// result is "delivered", "failed" (the attempt failed; the event will be
// retried) or "dropped" (the last attempt failed and the event was given
// up). It must be cheap and safe for concurrent use. A nil Observer in
// Config observes nothing.
type Observer interface {
	Delivered(result string)
}

// The defaults of Config, stated once.
const (
	DefaultMaxAge       = 24 * time.Hour
	DefaultPollInterval = time.Second
	DefaultConcurrency  = 4
	DefaultCloseTimeout = 5 * time.Second
)

// Config configures a Dispatcher. Zero values take the documented defaults.
type Config struct {
	// URL receives the events: an absolute http or https URL. Required. It
	// is never logged (it may hold a credential).
	URL string
	// Secret signs every call (SignatureHeader). Required; never logged.
	Secret string
	// Outbox keeps events until they are delivered; share the store's
	// (store.Redis.Outbox) so that events survive a restart and any
	// replica can retry them. Nil means a store.MemoryOutbox of this
	// process: events are lost when it stops.
	Outbox Outbox
	// HTTPClient sends the calls; it never follows a redirect (whatever its
	// CheckRedirect): a 3xx is a failed attempt. Nil means a client with an
	// AttemptTimeout timeout. Whatever its Timeout, an attempt is cut
	// short after AttemptTimeout.
	HTTPClient *http.Client
	// Observer is told every attempt's outcome; nil observes nothing.
	Observer Observer
	// Logger logs failures and drops, never the URL or the secret; nil
	// discards.
	Logger *slog.Logger
	// Now is the clock of event time: an event's Time, its age (MaxAge),
	// the signature's timestamp. Nil means time.Now. Leases, backoff and
	// polling are measured by real timers and the outbox's clock.
	Now func() time.Time
	// MaxAge is how long an event is retried: an attempt that fails once
	// the event is that old drops it. Zero means DefaultMaxAge.
	MaxAge time.Duration
	// PollInterval is how often due events (retries, and events of
	// replicas that stopped) are claimed. Zero means DefaultPollInterval.
	PollInterval time.Duration
	// Concurrency bounds the attempts in flight at once. Zero means
	// DefaultConcurrency.
	Concurrency int
	// CloseTimeout is how long Close waits for attempts in flight before
	// it cuts them short. Zero means DefaultCloseTimeout.
	CloseTimeout time.Duration
}

// Lease is how long a replica holds an event it added or claimed before
// another replica may take it: longer than an attempt (AttemptTimeout), so
// that one attempt at a time is made per event.
const Lease = 30 * time.Second

// AttemptTimeout bounds one delivery attempt.
const AttemptTimeout = 10 * time.Second

// Backoff bounds: the pause after the first failed attempt, doubled after
// each one, with jitter down to half of it, at most retryMax.
const (
	retryFirst = time.Second
	retryMax   = 5 * time.Minute
)

const (
	// outboxTimeout bounds one outbox call.
	outboxTimeout = 2 * time.Second
	// leaseMargin is what must be left of a claim's lease for an attempt
	// to start: past it, another replica may take the event during the
	// attempt, and the attempt is skipped (the event comes back to Claim).
	leaseMargin = 2 * time.Second
	// queueSize bounds events waiting in this process for a sender.
	queueSize = 256
	// maxBody bounds the receiver's answer read (and thrown away) so that
	// the connection can be reused.
	maxBody = 64 << 10
)

// Dispatcher delivers events to the webhook. It implements auth.Notifier:
// give it to auth.Config.Notifier. New starts its senders; Run claims due
// events until its context ends; Close stops it. It is safe for concurrent
// use by multiple goroutines.
type Dispatcher struct {
	target  string
	secret  []byte
	outbox  Outbox
	client  *http.Client
	obs     Observer
	log     *slog.Logger
	now     func() time.Time
	maxAge  time.Duration
	poll    time.Duration
	workers int
	grace   time.Duration

	queue chan *job
	busy  atomic.Int64 // jobs queued or in flight

	mu     sync.Mutex
	closed bool
	local  map[string]*job // events the outbox refused, kept in memory

	ctx    context.Context // ends at Close: no new attempt starts
	stop   context.CancelFunc
	abort  context.CancelFunc // ends attempts in flight, CloseTimeout after Close
	sendTo context.Context
	wg     sync.WaitGroup
	once   sync.Once
}

// job is one event this replica holds.
type job struct {
	id       string
	body     []byte    // the event's JSON, sent as is
	created  time.Time // the event's Time
	attempts int       // failed attempts counted before this one
	stored   bool      // in the outbox, claimed by this replica; else in memory only
	claimed  time.Time // when the claim was taken, by the wall clock
	next     time.Time // memory only: when the next attempt is due, by the wall clock
}

var _ auth.Notifier = (*Dispatcher)(nil)

// New returns a Dispatcher for cfg, with its senders started. The errors
// name the field at fault, never its value.
func New(cfg Config) (*Dispatcher, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("events: the URL must be an absolute http or https URL")
	}
	if cfg.Secret == "" {
		return nil, errors.New("events: a secret is required")
	}
	d := &Dispatcher{
		target:  cfg.URL,
		secret:  []byte(cfg.Secret),
		outbox:  cfg.Outbox,
		obs:     cfg.Observer,
		log:     cfg.Logger,
		now:     cfg.Now,
		maxAge:  cfg.MaxAge,
		poll:    cfg.PollInterval,
		workers: cfg.Concurrency,
		grace:   cfg.CloseTimeout,
		queue:   make(chan *job, queueSize),
		local:   make(map[string]*job),
	}
	if d.outbox == nil {
		d.outbox = store.NewMemoryOutbox()
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: AttemptTimeout}
	}
	cp := *client
	cp.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	d.client = &cp
	if d.obs == nil {
		d.obs = nopObserver{}
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.maxAge <= 0 {
		d.maxAge = DefaultMaxAge
	}
	if d.poll <= 0 {
		d.poll = DefaultPollInterval
	}
	if d.workers <= 0 {
		d.workers = DefaultConcurrency
	}
	if d.grace <= 0 {
		d.grace = DefaultCloseTimeout
	}
	d.ctx, d.stop = context.WithCancel(context.Background())
	d.sendTo, d.abort = context.WithCancel(context.Background())
	for range d.workers {
		d.wg.Go(d.send)
	}
	return d, nil
}

// Notify keeps the change as an event in the outbox, claimed by this
// replica, and hands it to a sender, which posts it at once. When the
// outbox refuses it, the event is logged and delivered from memory (it is
// then lost if this process stops first). It blocks for one outbox write
// at most (bounded by a few seconds). After Close, the event is only added
// to the outbox, due at once, for another replica to send.
func (d *Dispatcher) Notify(c auth.StateChange) {
	at := c.Time
	if at.IsZero() {
		at = d.now()
	}
	ev := Event{ID: newID(), Type: c.Type, Tenant: c.Tenant, Time: at.UTC(), Reason: c.Reason}
	body, err := json.Marshal(ev)
	if err != nil {
		d.log.Error("event could not be encoded", "type", c.Type, "tenant", c.Tenant, "err", err)
		return
	}
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	lease := Lease
	if closed {
		lease = 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), outboxTimeout)
	err = d.outbox.Add(ctx, ev.ID, body, lease)
	cancel()
	j := &job{id: ev.ID, body: body, created: ev.Time, stored: err == nil, claimed: time.Now()}
	switch {
	case err != nil && closed:
		d.log.Error("event lost: the outbox refused it after the dispatcher closed", "event", ev.ID, "type", ev.Type, "tenant", ev.Tenant, "err", err)
		return
	case closed:
		return
	case err != nil:
		d.log.Warn("event kept in memory: the outbox refused it", "event", ev.ID, "type", ev.Type, "tenant", ev.Tenant, "err", err)
	}
	d.hand(j)
}

// hand gives j to a sender. When the senders are all taken, an event in the
// outbox waits there (its claim runs out, and Claim brings it back), and
// one in memory waits in memory.
func (d *Dispatcher) hand(j *job) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		// Close has drained the queue, or is about to: give it back.
		d.giveBack(j)
		return
	}
	defer d.mu.Unlock()
	d.busy.Add(1) // before a sender can take it and count it done
	select {
	case d.queue <- j:
	default:
		d.busy.Add(-1)
		if !j.stored {
			j.next = time.Now()
			d.keepLocalLocked(j)
		}
	}
}

// maxLocal bounds the events kept in memory while the outbox refuses them:
// past it, new ones are dropped (logged and counted), so that a long
// outage of Redis and of the receiver cannot exhaust memory.
const maxLocal = 10000

// keepLocalLocked keeps j in memory for a later attempt, unless maxLocal
// are kept already. d.mu must be held.
func (d *Dispatcher) keepLocalLocked(j *job) {
	if _, ok := d.local[j.id]; !ok && len(d.local) >= maxLocal {
		d.obs.Delivered("dropped")
		d.log.Error("event dropped: too many events kept in memory while the outbox refuses them", "event", j.id, "kept", len(d.local))
		return
	}
	d.local[j.id] = j
}

// Run claims due events every PollInterval (and once at once) and hands
// them to the senders, until ctx ends or Close is called.
func (d *Dispatcher) Run(ctx context.Context) {
	tick := time.NewTicker(d.poll)
	defer tick.Stop()
	for {
		d.claim()
		select {
		case <-ctx.Done():
			return
		case <-d.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// claim hands the senders as many due events as they can take at once:
// first the events kept in memory (stored in the outbox now if it takes
// them), then the outbox's.
func (d *Dispatcher) claim() {
	room := d.workers - int(d.busy.Load())
	if room <= 0 || d.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, outboxTimeout)
	defer cancel()
	now := time.Now()
	d.mu.Lock()
	var due []*job
	for id, j := range d.local {
		if len(due) < room && !j.next.After(now) {
			due = append(due, j)
			delete(d.local, id)
		}
	}
	d.mu.Unlock()
	for _, j := range due {
		if err := d.outbox.Add(ctx, j.id, j.body, Lease); err == nil {
			j.stored, j.claimed = true, time.Now()
		}
		d.hand(j)
	}
	if room -= len(due); room <= 0 {
		return
	}
	items, err := d.outbox.Claim(ctx, room, Lease)
	if err != nil {
		if d.ctx.Err() == nil {
			d.log.Warn("due events could not be claimed from the outbox", "err", err)
		}
		return
	}
	claimed := time.Now()
	for _, it := range items {
		var ev Event
		if err := json.Unmarshal(it.Data, &ev); err != nil || ev.Time.IsZero() {
			d.log.Error("event dropped: the outbox holds something that is not an event", "event", it.ID)
			d.done(it.ID)
			d.obs.Delivered("dropped")
			continue
		}
		d.hand(&job{id: it.ID, body: it.Data, created: ev.Time, attempts: it.Attempts, stored: true, claimed: claimed})
	}
}

// send is one sender: it attempts the jobs handed to it until Close.
func (d *Dispatcher) send() {
	for {
		select {
		case <-d.ctx.Done():
			return
		case j := <-d.queue:
			if d.ctx.Err() != nil {
				d.giveBack(j)
			} else {
				d.attempt(j)
			}
			d.busy.Add(-1)
		}
	}
}

// attempt posts j once and records the outcome.
func (d *Dispatcher) attempt(j *job) {
	if j.stored && time.Since(j.claimed) > Lease-AttemptTimeout-leaseMargin {
		// Too late for this claim: another replica may take the event
		// during the attempt. It comes back to Claim when the lease ends.
		return
	}
	status, err := d.post(j)
	if err == nil && status/100 == 2 {
		d.done(j.id)
		d.obs.Delivered("delivered")
		return
	}
	if d.sendTo.Err() != nil {
		// Cut short by Close: not an attempt the receiver answered.
		d.giveBack(j)
		return
	}
	reason := "receiver answered " + strconv.Itoa(status)
	if err != nil {
		reason = describe(err)
	}
	n := j.attempts + 1
	if age := d.now().Sub(j.created); age >= d.maxAge {
		d.done(j.id)
		d.obs.Delivered("dropped")
		d.log.Error("event dropped: not delivered in time", "event", j.id, "attempts", n, "age", age.Round(time.Second).String(), "reason", reason)
		return
	}
	after := backoff(n)
	// The retry is recorded before the failure is reported: whoever
	// watches the count finds the event scheduled again.
	defer func() {
		d.obs.Delivered("failed")
		d.log.Warn("event delivery failed; retrying", "event", j.id, "attempt", n, "retry_in", after.Round(time.Millisecond).String(), "reason", reason)
	}()
	if !j.stored {
		j.attempts, j.next = n, time.Now().Add(after)
		d.mu.Lock()
		d.keepLocalLocked(j)
		d.mu.Unlock()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), outboxTimeout)
	defer cancel()
	if err := d.outbox.Retry(ctx, j.id, after); err != nil && !errors.Is(err, store.ErrNotFound) {
		// The claim runs out instead, and the event comes back then.
		d.log.Warn("event retry could not be recorded in the outbox", "event", j.id, "err", err)
	}
}

// post sends j's body, signed, and returns the answer's status.
func (d *Dispatcher) post(j *job) (int, error) {
	ctx, cancel := context.WithTimeout(d.sendTo, AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.target, bytes.NewReader(j.body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "thanksio-proxy")
	req.Header.Set(SignatureHeader, signature(d.secret, d.now(), j.body))
	res, err := d.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, maxBody))
	res.Body.Close()
	return res.StatusCode, nil
}

// describe says why a call failed without the URL, which may hold a
// credential.
func describe(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return "receiver timed out"
		}
		return "receiver unreachable: " + ue.Err.Error()
	}
	return "request failed"
}

// backoff is the pause after n failed attempts (n ≥ 1): retryFirst doubled
// for each failure after the first, at most retryMax, with jitter down to
// half of it.
func backoff(n int) time.Duration {
	d := retryFirst
	for ; n > 1 && d < retryMax; n-- {
		d *= 2
	}
	d = min(d, retryMax)
	return d/2 + rand.N(d/2+1)
}

// done removes a delivered or dropped event from the outbox. A failure
// leaves it to be sent again: at least once.
func (d *Dispatcher) done(id string) {
	d.mu.Lock()
	delete(d.local, id)
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), outboxTimeout)
	defer cancel()
	if err := d.outbox.Done(ctx, id); err != nil {
		d.log.Warn("delivered event could not be removed from the outbox; it may be sent again", "event", id, "err", err)
	}
}

// giveBack returns an event this replica holds but will not attempt: its
// claim, given back, makes it due at once for another replica; one kept in
// memory is added to the outbox, due at once.
func (d *Dispatcher) giveBack(j *job) {
	ctx, cancel := context.WithTimeout(context.Background(), outboxTimeout)
	defer cancel()
	if j.stored {
		if time.Since(j.claimed) > Lease-leaseMargin {
			// The claim may have run out and another replica taken the
			// event: releasing it would end that replica's claim. It
			// comes back to Claim when the lease ends.
			return
		}
		if err := d.outbox.Release(ctx, j.id); err != nil && !errors.Is(err, store.ErrNotFound) {
			d.log.Warn("event claim could not be given back; another replica takes it when the lease ends", "event", j.id, "err", err)
		}
		return
	}
	if err := d.outbox.Add(ctx, j.id, j.body, 0); err != nil {
		d.log.Error("event lost: the outbox refused it at shutdown", "event", j.id, "err", err)
	}
}

// Close stops the Dispatcher: no attempt starts any more, attempts in
// flight get up to CloseTimeout to finish (then they are cut short), and the
// events this replica holds are given back to the outbox, due at once, so
// that another replica sends them without waiting for their lease to end.
// Run returns. Notify still works after Close, adding events to the outbox
// for other replicas. Close is idempotent.
func (d *Dispatcher) Close() {
	d.once.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.mu.Unlock()
		d.stop()
		stopped := make(chan struct{})
		go func() {
			d.wg.Wait()
			close(stopped)
		}()
		timer := time.NewTimer(d.grace)
		select {
		case <-stopped:
		case <-timer.C:
			d.abort()
			<-stopped
		}
		timer.Stop()
		d.abort()
	drain:
		for {
			select {
			case j := <-d.queue:
				d.busy.Add(-1)
				d.giveBack(j)
			default:
				break drain
			}
		}
		d.mu.Lock()
		local := d.local
		d.local = map[string]*job{}
		d.mu.Unlock()
		for _, j := range local {
			d.giveBack(j)
		}
	})
}

type nopObserver struct{}

func (nopObserver) Delivered(string) {}
