package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrUnconfirmed means a record was written on the primary but not
// confirmed durable within the bound (too few replicas acknowledged it, or
// the local AOF fsync was not confirmed): a failover or a restart could
// still lose it. Treat the write as failed: re-read, and write again.
var ErrUnconfirmed = errors.New("store: write not confirmed durable")

// AutoReplicas, as Redis.MinReplicasAck, asks for one replica's
// acknowledgement when the primary has a replica connected at the time of
// the write, and none otherwise.
const AutoReplicas = -1

// DefaultDurableTimeout is how long a write waits for its acknowledgements
// when Redis.DurableTimeout is zero: longer than a replica's round trip, and
// than the one second an AOF with appendfsync everysec may take to sync.
const DefaultDurableTimeout = 2 * time.Second

// durability is what one write must wait for.
type durability struct {
	replicas int  // WAIT numreplicas
	aof      bool // WAITAOF 1: the local fsync
}

// durableConn returns a connection to the primary that holds key, for a
// write followed by WAIT on the same connection. ok is false for a client
// of another kind (a Ring), whose writes are not waited on.
func (r *Redis) durableConn(ctx context.Context, key string) (conn *redis.Conn, ok bool, err error) {
	switch c := r.client.(type) {
	case *redis.Client:
		return c.Conn(), true, nil
	case *redis.ClusterClient:
		node, err := c.MasterForKey(ctx, key)
		if err != nil {
			return nil, false, err
		}
		return node.Conn(), true, nil
	default:
		return nil, false, nil
	}
}

// needed reads from the primary on conn what a write must wait for. A
// server that refuses an INFO section (a user without @dangerous, which
// holds INFO; a test double) tells nothing of it: it is taken to have no
// replica and no AOF, so only an explicit MinReplicasAck is waited for,
// as before the store waited at all, rather than every write failing.
func (r *Redis) needed(ctx context.Context, conn *redis.Conn) (durability, error) {
	var repl, pers *redis.StringCmd
	// The error of each command is looked at below.
	_, _ = conn.Pipelined(ctx, func(p redis.Pipeliner) error {
		repl = p.Info(ctx, "replication")
		pers = p.Info(ctx, "persistence")
		return nil
	})
	replInfo, err := infoAnswer(repl)
	if err != nil {
		return durability{}, err
	}
	persInfo, err := infoAnswer(pers)
	if err != nil {
		return durability{}, err
	}
	var d durability
	switch {
	case r.MinReplicasAck >= 0:
		d.replicas = r.MinReplicasAck
	case infoInt(replInfo, "connected_slaves") > 0:
		d.replicas = 1
	}
	d.aof = infoInt(persInfo, "aof_enabled") == 1 && !r.noWaitAOF.Load()
	return d, nil
}

// infoAnswer returns the answer of an INFO command: "" when the server
// refused it (an error reply), and the error when it was not answered.
func infoAnswer(cmd *redis.StringCmd) (string, error) {
	info, err := cmd.Result()
	var refused redis.Error
	if errors.As(err, &refused) {
		return "", nil
	}
	return info, err
}

// confirm waits on conn, bounded by DurableTimeout, until the write just
// made there is durable as d asks, and returns ErrUnconfirmed when it is
// not.
func (r *Redis) confirm(ctx context.Context, conn *redis.Conn, d durability) error {
	timeout := r.DurableTimeout
	if timeout <= 0 {
		timeout = DefaultDurableTimeout
	}
	if d.aof {
		// WAITAOF (Redis 7.2 and later) confirms the local fsync and the
		// replicas' in one call.
		res, err := conn.Do(ctx, "WAITAOF", 1, d.replicas, timeout.Milliseconds()).Int64Slice()
		switch {
		case err != nil && isUnknownCommand(err):
			r.noWaitAOF.Store(true) // An older server: WAIT alone, from now on.
		case err != nil:
			return err
		case len(res) != 2:
			return fmt.Errorf("WAITAOF: unexpected answer")
		case res[0] < 1 || res[1] < int64(d.replicas):
			return fmt.Errorf("%w: fsync confirmed %d, replicas %d of %d within %s",
				ErrUnconfirmed, res[0], res[1], d.replicas, timeout)
		default:
			return nil
		}
	}
	if d.replicas == 0 {
		return nil
	}
	n, err := conn.Wait(ctx, d.replicas, timeout).Result()
	if err != nil {
		return err
	}
	if n < int64(d.replicas) {
		return fmt.Errorf("%w: %d of %d replicas acknowledged within %s", ErrUnconfirmed, n, d.replicas, timeout)
	}
	return nil
}

func isUnknownCommand(err error) bool {
	return strings.HasPrefix(err.Error(), "ERR unknown command")
}

// infoInt returns the integer field name of an INFO answer, or 0.
func infoInt(info, name string) int64 {
	for line := range strings.Lines(info) {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":")
		if ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// runDurable runs script on key's primary and waits there until the write
// is durable as MinReplicasAck and the server's AOF setting ask. written
// reports, from the script's answer, whether the script wrote anything (a
// refused condition waits for nothing). The script's answer is returned
// even with an ErrUnconfirmed error.
func (r *Redis) runDurable(ctx context.Context, script *redis.Script, key string, keys []string, written func(int64) bool, args ...any) (int64, error) {
	conn, ok, err := r.durableConn(ctx, key)
	if err != nil {
		return 0, err
	}
	if !ok {
		return script.Run(ctx, r.client, keys, args...).Int64()
	}
	defer conn.Close()
	d, err := r.needed(ctx, conn)
	if err != nil {
		return 0, err
	}
	n, err := script.Run(ctx, conn, keys, args...).Int64()
	if err != nil || !written(n) {
		return n, err
	}
	return n, r.confirm(ctx, conn, d)
}

// randomEpoch returns a fresh random epoch value.
func randomEpoch() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
