package store

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// OpenRedisURL returns a go-redis client for the Redis that rawURL names. It
// does not connect: the first command does. Three forms are understood,
// each in a plain and a TLS ("rediss") variant:
//
// Standalone, parsed by go-redis's ParseURL:
//
//	redis://[[user]:password@]host[:port][/db][?option=value...]
//	rediss://...
//
// Cluster, go-redis's ParseClusterURL under a scheme of its own; the seed
// nodes are listed in the host part, or with go-redis's addr parameter, or
// both. A cluster has no database number, so no path is allowed:
//
//	redis+cluster://[[user]:password@]host[:port][,host[:port]...][?addr=host:port...][&option=value...]
//	rediss+cluster://...
//
// Sentinel, built on go-redis's ParseFailoverURL; the Sentinels are listed in
// the host part (or with the addr parameter), the master's name is the first
// path element, and the database number the optional second one. The
// userinfo holds the credentials of the Redis master and replicas; Sentinels
// that require their own take the sentinel_username and sentinel_password
// parameters:
//
//	redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master-name[/db][?option=value...]
//	rediss+sentinel://...
//
// A missing port is 6379, or 26379 for a Sentinel. The options are
// go-redis's URL options (dial_timeout=3s, pool_size=20, ...); see ParseURL,
// ParseClusterURL and ParseFailoverURL. Errors never hold the URL's
// password.
//
// The client does not try go-redis's maintenance notifications (CLIENT
// MAINT_NOTIFICATIONS, Redis Cloud's hand-off of connections before a
// planned failover); go-redis never does on a Sentinel client. In their
// default automatic mode, the first connection that a server without them
// refuses turns them off by writing the client's options, which go-redis
// (v9.23) shares, without a common lock, with every Conn taken from the
// client: two Redis writes that open their connections at once race.
func OpenRedisURL(rawURL string) (redis.UniversalClient, error) {
	opts, err := parseRedisURL(rawURL)
	if err != nil {
		return nil, err
	}
	switch {
	case opts.cluster != nil:
		o := opts.cluster
		o.MaintNotificationsConfig = noMaintNotifications()
		o.ContextTimeoutEnabled = true
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = boundedTimeouts(o.DialTimeout, o.ReadTimeout, o.WriteTimeout)
		return redis.NewClusterClient(o), nil
	case opts.failover != nil:
		o := opts.failover
		o.ContextTimeoutEnabled = true
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = boundedTimeouts(o.DialTimeout, o.ReadTimeout, o.WriteTimeout)
		return redis.NewFailoverClient(o), nil
	default:
		o := opts.standalone
		o.MaintNotificationsConfig = noMaintNotifications()
		o.ContextTimeoutEnabled = true
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = boundedTimeouts(o.DialTimeout, o.ReadTimeout, o.WriteTimeout)
		return redis.NewClient(o), nil
	}
}

// The timeouts a client gets unless its URL sets them (dial_timeout,
// read_timeout, write_timeout). Every call is bounded by its context too
// (ContextTimeoutEnabled): a readiness probe or a request gives up when it
// must, whatever these are. The read timeout outlasts a write's wait for
// its replicas (DefaultDurableTimeout).
const (
	defaultDialTimeout = 2 * time.Second
	defaultIOTimeout   = 3 * time.Second
)

// boundedTimeouts returns the dial, read and write timeouts to use, given
// the ones a URL set (zero: not set).
func boundedTimeouts(dial, read, write time.Duration) (time.Duration, time.Duration, time.Duration) {
	if dial == 0 {
		dial = defaultDialTimeout
	}
	if read == 0 {
		read = defaultIOTimeout
	}
	if write == 0 {
		write = defaultIOTimeout
	}
	return dial, read, write
}

// noMaintNotifications is the configuration that keeps a client from
// trying maintenance notifications.
func noMaintNotifications() *maintnotifications.Config {
	return &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
}

// redisURLOptions is what a Redis URL describes: exactly one field is set.
type redisURLOptions struct {
	standalone *redis.Options
	cluster    *redis.ClusterOptions
	failover   *redis.FailoverOptions
}

func parseRedisURL(rawURL string) (redisURLOptions, error) {
	toParse, hostList := rawURL, ""
	if scheme, _, ok := strings.Cut(rawURL, "://"); ok {
		scheme = strings.ToLower(scheme)
		if strings.HasSuffix(scheme, "+cluster") || strings.HasSuffix(scheme, "+sentinel") {
			toParse, hostList = cutHostList(rawURL)
		}
	}
	u, err := url.Parse(toParse)
	if err != nil {
		// url.Parse's error quotes the URL, password and all.
		return redisURLOptions{}, errors.New("store: redis URL: not a valid URL")
	}
	var opts redisURLOptions
	switch u.Scheme {
	case "redis", "rediss":
		opts.standalone, err = redis.ParseURL(rawURL)
	case "redis+cluster", "rediss+cluster":
		opts.cluster, err = parseClusterURL(u, hostList)
	case "redis+sentinel", "rediss+sentinel":
		opts.failover, err = parseSentinelURL(u, hostList)
	default:
		// The scheme is not echoed: in a mistyped URL it may be anything.
		return redisURLOptions{}, errors.New("store: redis URL: the scheme is none of redis, rediss, redis+cluster, rediss+cluster, redis+sentinel, rediss+sentinel")
	}
	if err != nil {
		return redisURLOptions{}, redact(fmt.Errorf("store: redis URL: %w", err), u)
	}
	return opts, nil
}

// parseClusterURL turns the cluster form into go-redis's own cluster URL
// (first seed in the host, the others as addr parameters) and parses that.
func parseClusterURL(u *url.URL, hostList string) (*redis.ClusterOptions, error) {
	if u.Path != "" && u.Path != "/" {
		return nil, errors.New("a cluster URL has no path (a cluster has no database number)")
	}
	hosts, err := splitHosts(hostList, "6379")
	if err != nil {
		return nil, err
	}
	native := *u
	native.Scheme = strings.TrimSuffix(u.Scheme, "+cluster")
	native.Host = hosts[0]
	native.Path = ""
	q := u.Query()
	q["addr"] = append(hosts[1:], q["addr"]...)
	native.RawQuery = q.Encode()
	return redis.ParseClusterURL(native.String())
}

// parseSentinelURL turns the sentinel form into go-redis's own failover URL
// (first Sentinel in the host, the others as addr parameters, the master's
// name as the master_name parameter, no userinfo) and parses that; then it
// sets the credentials, which go-redis's form would give to the Sentinels.
func parseSentinelURL(u *url.URL, hostList string) (*redis.FailoverOptions, error) {
	hosts, err := splitHosts(hostList, "26379")
	if err != nil {
		return nil, err
	}
	path := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(path) > 2 || path[0] == "" {
		return nil, errors.New("a sentinel URL's path is /master-name or /master-name/db")
	}
	q := u.Query()
	for _, name := range []string{"master_name", "db", "username", "password"} {
		if q.Has(name) {
			return nil, fmt.Errorf("option %s is set by the URL's path or userinfo in a sentinel URL", name)
		}
	}
	sentinelUser, sentinelPassword := q.Get("sentinel_username"), q.Get("sentinel_password")
	q.Del("sentinel_username")
	q.Del("sentinel_password")
	q.Set("master_name", path[0])
	q["addr"] = append(hosts[1:], q["addr"]...)
	native := url.URL{
		Scheme:   strings.TrimSuffix(u.Scheme, "+sentinel"),
		Host:     hosts[0],
		RawQuery: q.Encode(),
	}
	if len(path) == 2 {
		if _, err := strconv.Atoi(path[1]); err != nil {
			return nil, fmt.Errorf("invalid database number %q", path[1])
		}
		native.Path = "/" + path[1]
	}
	opts, err := redis.ParseFailoverURL(native.String())
	if err != nil {
		return nil, err
	}
	if u.User != nil {
		opts.Username = u.User.Username()
		opts.Password, _ = u.User.Password()
	}
	opts.SentinelUsername, opts.SentinelPassword = sentinelUser, sentinelPassword
	return opts, nil
}

// cutHostList takes the host list out of a URL of several hosts, which
// url.Parse cannot read (it takes everything after the last colon for the
// port), and returns the URL with one placeholder host in its place, and the
// list.
func cutHostList(rawURL string) (placeheld, hostList string) {
	start := strings.Index(rawURL, "://") + len("://")
	end := len(rawURL)
	if i := strings.IndexAny(rawURL[start:], "/?#"); i >= 0 {
		end = start + i
	}
	authority := rawURL[start:end]
	at := strings.LastIndexByte(authority, '@')
	return rawURL[:start] + authority[:at+1] + "placeholder" + rawURL[end:], authority[at+1:]
}

// splitHosts splits a comma-separated host list, giving each host without a
// port defaultPort.
func splitHosts(list, defaultPort string) ([]string, error) {
	var hosts []string
	for i, h := range strings.Split(list, ",") {
		if h == "" {
			return nil, fmt.Errorf("host %d is empty", i+1)
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil {
			// No port, or a bracketed IPv6 address without one.
			host, port = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), defaultPort
		}
		if n, err := strconv.Atoi(port); host == "" || err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("host %d: no host name or no valid port", i+1)
		}
		hosts = append(hosts, net.JoinHostPort(host, port))
	}
	return hosts, nil
}

// redact returns err, or, if its text holds any password of u (userinfo or
// sentinel_password, as written or unescaped), an error with the same text
// and the passwords blanked out.
func redact(err error, u *url.URL) error {
	var secrets []string
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			secrets = append(secrets, p, url.QueryEscape(p), url.PathEscape(p))
		}
	}
	for _, p := range u.Query()["sentinel_password"] {
		secrets = append(secrets, p, url.QueryEscape(p))
	}
	msg := err.Error()
	redacted := msg
	for _, s := range secrets {
		if s != "" {
			redacted = strings.ReplaceAll(redacted, s, "xxxxx")
		}
	}
	if redacted == msg {
		return err
	}
	return errors.New(redacted)
}
