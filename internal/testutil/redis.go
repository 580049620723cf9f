// Redis processes that a test owns, for fault injection.
//
// Each process listens on 127.0.0.1 only, on a port picked at random in
// [MinPort, MaxPort), below the range from which Linux picks the local ports
// of outgoing connections, so that no client connection takes it. A test
// kills, restarts, pauses and resumes only the processes it started, and the
// test's cleanup kills them. redis-server must be on PATH: a test that
// needs it fails without it, it is never skipped.

package testutil

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The ports a server may be given: [MinPort, MaxPort). Linux hands out the
// local ports of outgoing connections from 32768 up, by default.
const (
	MinPort = 10000
	MaxPort = 32767
)

const (
	// startAttempts is how many random ports a server is tried on before
	// the test fails, when each turns out to be taken.
	startAttempts = 10
	// readyTimeout bounds each wait for a process to come up or for
	// replication or Sentinel to reach the state a helper waits for.
	readyTimeout = 10 * time.Second
	// readyPoll is the interval of the waits that no event can end: a
	// server's first answer, a replica's link, Sentinel's view.
	readyPoll = 10 * time.Millisecond
)

// RedisServer is a redis-server process started by StartRedis or
// StartReplica, or the process of a Sentinel. Its methods are safe for
// concurrent use by multiple goroutines; those that can fail end the test
// it was started by with Fatalf, so they belong on that test's goroutine.
type RedisServer struct {
	tb   testing.TB
	dir  string
	log  string   // the file that receives the process's stdout and stderr
	port int      // fixed once the first start succeeded
	argv []string // redis-server's arguments, the same for every restart

	mu   sync.Mutex
	proc *process // nil when killed and not restarted
}

// process is one run of redis-server.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd.Wait has returned
}

// StartRedis starts a redis-server that the test owns, listening on
// 127.0.0.1 on a random free port in [MinPort, MaxPort), with a temporary
// directory of its own (tb.TempDir) as its working directory and
// redis.log there as its log, and returns once it answers PING. By default
// it neither snapshots nor keeps an append-only file (--save "" --appendonly
// no), and starts a replica's sync at once (--repl-diskless-sync-delay 0);
// args are appended to redis-server's command line and so override these
// (for example "--appendonly", "yes"). Every option and every value must be
// a separate argument. The server must not require a password.
//
// When the port turns out to be taken, StartRedis tries another, up to
// startAttempts ports. The test's cleanup kills the server.
func StartRedis(tb testing.TB, args ...string) *RedisServer {
	tb.Helper()
	s := newRedisServer(tb)
	s.start(func(port int) []string {
		argv := []string{
			"--port", strconv.Itoa(port),
			"--bind", "127.0.0.1",
			"--save", "",
			"--appendonly", "no",
			// A replica's first sync would otherwise wait 5 s for
			// others to join it.
			"--repl-diskless-sync-delay", "0",
			"--dir", s.dir,
		}
		return append(argv, args...)
	})
	return s
}

// StartReplica starts, as StartRedis does with args, a redis-server that
// replicates primary, and returns once its link to primary is up
// (master_link_status:up) and it has acknowledged a write: after a full
// sync, a primary streams writes to a replica only once the replica's first
// acknowledgement came (they come every second), so until then a WAIT on the
// primary would find no replica.
func StartReplica(tb testing.TB, primary *RedisServer, args ...string) *RedisServer {
	tb.Helper()
	all := append([]string{"--replicaof", "127.0.0.1", strconv.Itoa(primary.port)}, args...)
	r := StartRedis(tb, all...)
	c := r.Client()
	what := fmt.Sprintf("the replica at %s has its link to %s up", r.Addr(), primary.Addr())
	waitUntil(tb, what, readyTimeout, readyPoll, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		info, err := c.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	// WAIT counts the acknowledgements of this connection's last write.
	conn := primary.Client().Conn()
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := conn.Incr(ctx, "testutil:replica-marker").Err(); err != nil {
		tb.Fatalf("writing to the primary at %s: %v", primary.Addr(), err)
	}
	if n, err := conn.Wait(ctx, 1, readyTimeout).Result(); err != nil || n < 1 {
		tb.Fatalf("the replica at %s did not acknowledge a write within %v: WAIT = %d, %v", r.Addr(), readyTimeout, n, err)
	}
	return r
}

func newRedisServer(tb testing.TB) *RedisServer {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatalf("testutil: redis-server is not on PATH; install it (apt-get install redis-server): %v", err)
	}
	dir := tb.TempDir()
	s := &RedisServer{tb: tb, dir: dir, log: filepath.Join(dir, "redis.log")}
	// Registered after TempDir's own cleanup, so it runs before the
	// directory is removed.
	tb.Cleanup(s.Kill)
	return s
}

// start starts the server on random ports until one is free, with the
// arguments that argv returns for the port, and fails the test after
// startAttempts taken ports or any other failure.
func (s *RedisServer) start(argv func(port int) []string) {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 1; ; attempt++ {
		port := MinPort + rand.IntN(MaxPort-MinPort)
		args := argv(port)
		p, portTaken, err := s.run(port, args)
		if err == nil {
			s.port, s.argv, s.proc = port, args, p
			return
		}
		if !portTaken || attempt == startAttempts {
			s.tb.Fatalf("testutil: starting redis-server (attempt %d): %v", attempt, err)
		}
		s.tb.Logf("testutil: port %d is taken, trying another: %v", port, err)
	}
}

// run starts redis-server with args and waits until it answers on port.
// On failure, the process is gone, and portTaken reports whether it failed
// because the port was in use.
func (s *RedisServer) run(port int, args []string) (p *process, portTaken bool, err error) {
	out, err := os.OpenFile(s.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, false, err
	}
	defer out.Close()
	// Only what this run writes is read back to tell why it failed.
	logStart, err := out.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, false, err
	}
	cmd := exec.Command("redis-server", args...)
	cmd.Dir = s.dir
	// An *os.File, not a pipe: Wait must not wait for the output of
	// children that redis-server forks.
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, false, err
	}
	p = &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	for {
		// The process id tells this server from another one that holds
		// the port: this one will exit, failing to bind.
		if pid, err := probe(addr); err == nil && pid == cmd.Process.Pid {
			return p, false, nil
		}
		select {
		case <-tick.C:
		case <-p.exited:
			log := s.readLog(logStart)
			taken := strings.Contains(log, "Address already in use") ||
				strings.Contains(log, "Could not create server TCP listening socket")
			return nil, taken, fmt.Errorf("redis-server %s on port %d exited (%v); its log:\n%s",
				strings.Join(args, " "), port, cmd.ProcessState, log)
		case <-deadline.C:
			p.kill()
			return nil, false, fmt.Errorf("redis-server %s did not answer PING on %s within %v; its log:\n%s",
				strings.Join(args, " "), addr, readyTimeout, s.readLog(logStart))
		}
	}
}

// readLog returns the log from offset from on, or a note that it could not
// be read.
func (s *RedisServer) readLog(from int64) string {
	f, err := os.Open(s.log)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, from, 1<<20))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// probe sends PING and INFO server to the Redis at addr, over a connection
// of its own (no client pool, whose backoff after failed dials would delay
// the first answer), and returns the process id of the server that answered
// PONG.
func probe(addr string) (pid int, err error) {
	conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(250 * time.Millisecond)); err != nil {
		return 0, err
	}
	if _, err := io.WriteString(conn, "*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"); err != nil {
		return 0, err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "+PONG\r\n" {
		// -LOADING while it reads its data, for one.
		return 0, fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	line, err = r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "$")))
	if !strings.HasPrefix(line, "$") || err != nil || n < 0 {
		return 0, fmt.Errorf("INFO server answered %q", strings.TrimSpace(line))
	}
	info := make([]byte, n)
	if _, err := io.ReadFull(r, info); err != nil {
		return 0, err
	}
	for l := range strings.Lines(string(info)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "process_id:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("INFO server has no process_id")
}

// kill kills the process with SIGKILL and waits until it has exited. It
// does nothing more once the process has exited.
func (p *process) kill() {
	// Kill fails, harmlessly, when the process has already been reaped.
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Addr returns the server's address, "127.0.0.1:port".
func (s *RedisServer) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// URL returns the server's URL, "redis://127.0.0.1:port".
func (s *RedisServer) URL() string {
	return "redis://" + s.Addr()
}

// Client returns a go-redis client of the server, with go-redis's default
// options. The test's cleanup closes it.
func (s *RedisServer) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	s.tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Kill kills the server with SIGKILL, as a crash would, and waits until it
// has exited: what it held in memory is lost, and only what it had written
// to an append-only file with --appendonly yes survives a Restart. Kill
// does nothing when the server is not running.
func (s *RedisServer) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *RedisServer) killLocked() {
	if s.proc != nil {
		s.proc.kill()
		s.proc = nil
	}
}

// Restart kills the server if it is running, then starts it again on the
// same port, with the same arguments and directory, and returns once it
// answers PING. It fails the test if the server cannot start, the port
// having been taken meanwhile included: this is the one case in which a
// port is reused, by the test that held it.
func (s *RedisServer) Restart() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
	p, _, err := s.run(s.port, s.argv)
	if err != nil {
		s.tb.Fatalf("testutil: restarting redis-server on %s: %v", s.Addr(), err)
	}
	s.proc = p
}

// Pause stops the server with SIGSTOP: it keeps its connections and its
// port, and answers nothing until Resume. The kernel stops it before it
// runs again, so nothing sent after Pause returns is answered before
// Resume. Pause fails the test if the server is not running.
func (s *RedisServer) Pause() {
	s.tb.Helper()
	s.signal(syscall.SIGSTOP)
}

// Resume continues a server stopped by Pause, with SIGCONT. It fails the
// test if the server is not running.
func (s *RedisServer) Resume() {
	s.tb.Helper()
	s.signal(syscall.SIGCONT)
}

func (s *RedisServer) signal(sig os.Signal) {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		s.tb.Fatalf("testutil: sending %v to the redis-server at %s: it is not running", sig, s.Addr())
	}
	if err := s.proc.cmd.Process.Signal(sig); err != nil {
		s.tb.Fatalf("testutil: sending %v to the redis-server at %s: %v", sig, s.Addr(), err)
	}
}

// Sentinel is a Redis Sentinel started by StartSentinel, monitoring one
// master. The embedded RedisServer is the Sentinel's own process (Addr,
// Kill, Restart, Pause, Resume); its URL is shadowed by Sentinel.URL.
type Sentinel struct {
	*RedisServer
	masterName string
	client     *redis.SentinelClient
}

// StartSentinel starts a Redis Sentinel that the test owns, on 127.0.0.1
// and a random free port as StartRedis does, that monitors primary under
// masterName with a quorum of 1, down-after-milliseconds 1000 and
// failover-timeout 5000. It returns once the Sentinel reports primary as
// the master. masterName must be a non-empty word without '/'. The
// test's cleanup kills the Sentinel.
func StartSentinel(tb testing.TB, primary *RedisServer, masterName string) *Sentinel {
	tb.Helper()
	if masterName == "" || strings.ContainsAny(masterName, "/ \t\r\n\"'") {
		tb.Fatalf("testutil: StartSentinel: master name %q is not a non-empty word without '/'", masterName)
	}
	s := &Sentinel{RedisServer: newRedisServer(tb), masterName: masterName}
	conf := filepath.Join(s.dir, "sentinel.conf")
	s.start(func(port int) []string {
		// Written anew for each port; the Sentinel rewrites it as it
		// learns, and a Restart reads it back.
		text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n"+
			"sentinel monitor %s 127.0.0.1 %d 1\n"+
			"sentinel down-after-milliseconds %[3]s 1000\n"+
			"sentinel failover-timeout %[3]s 5000\n",
			port, s.dir, masterName, primary.port)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			tb.Fatalf("testutil: StartSentinel: %v", err)
		}
		return []string{conf, "--sentinel"}
	})
	s.client = redis.NewSentinelClient(&redis.Options{Addr: s.Addr()})
	tb.Cleanup(func() { _ = s.client.Close() })
	what := fmt.Sprintf("the Sentinel at %s reports %s as the master %s", s.Addr(), primary.Addr(), masterName)
	waitUntil(tb, what, readyTimeout, readyPoll, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		addr, err := s.MasterAddr(ctx)
		return err == nil && addr == primary.Addr()
	})
	return s
}

// URL returns the URL of the monitored master through this Sentinel, in
// the form store.OpenRedisURL reads: "redis+sentinel://127.0.0.1:port/name".
func (s *Sentinel) URL() string {
	return "redis+sentinel://" + s.Addr() + "/" + s.masterName
}

// MasterName returns the name under which the Sentinel monitors its master.
func (s *Sentinel) MasterName() string {
	return s.masterName
}

// MasterAddr returns the address ("host:port") that the Sentinel reports
// for its master.
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	hostPort, err := s.client.GetMasterAddrByName(ctx, s.masterName).Result()
	if err != nil {
		return "", fmt.Errorf("testutil: SENTINEL get-master-addr-by-name %s: %w", s.masterName, err)
	}
	if len(hostPort) != 2 {
		return "", fmt.Errorf("testutil: SENTINEL get-master-addr-by-name %s answered %q", s.masterName, hostPort)
	}
	return net.JoinHostPort(hostPort[0], hostPort[1]), nil
}

// Failover makes the Sentinel fail its master over (SENTINEL FAILOVER),
// waits until it has switched to the promoted replica, and returns that
// replica's address. The master needs a replica that the Sentinel knows.
// Failover fails tb when the switch has not happened within 10 s or ctx
// ends first.
func (s *Sentinel) Failover(tb testing.TB, ctx context.Context) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	switched := s.subscribeSwitches(tb, ctx)
	defer switched.Close()
	old, err := s.MasterAddr(ctx)
	if err != nil {
		tb.Fatalf("testutil: Failover: %v", err)
	}
	// The Sentinel answers NOGOODSLAVE until it has heard from a replica,
	// and no event says when it has: retry.
	for {
		err := s.client.Failover(ctx, s.masterName).Err()
		if err == nil {
			break
		}
		if !strings.HasPrefix(err.Error(), "NOGOODSLAVE") {
			tb.Fatalf("testutil: SENTINEL FAILOVER %s: %v", s.masterName, err)
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("testutil: SENTINEL FAILOVER %s: %v (%v)", s.masterName, err, context.Cause(ctx))
		case <-time.After(readyPoll):
		}
	}
	for {
		addr := s.nextSwitch(tb, ctx, switched, "the failover of "+old)
		if addr != old {
			return addr
		}
	}
}

// WaitMaster waits until the Sentinel reports addr ("host:port") as the
// master's address, and fails tb if it does not within 10 s.
func (s *Sentinel) WaitMaster(tb testing.TB, addr string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	switched := s.subscribeSwitches(tb, ctx)
	defer switched.Close()
	if got, err := s.MasterAddr(ctx); err == nil && got == addr {
		return
	}
	for {
		if s.nextSwitch(tb, ctx, switched, addr+" as the master") == addr {
			return
		}
	}
}

// subscribeSwitches subscribes to the Sentinel's +switch-master events and
// returns once the subscription is in place, so that no switch after it is
// missed.
func (s *Sentinel) subscribeSwitches(tb testing.TB, ctx context.Context) *redis.PubSub {
	tb.Helper()
	ps := s.client.Subscribe(ctx, "+switch-master")
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		tb.Fatalf("testutil: subscribing to the Sentinel's +switch-master: %v", err)
	}
	return ps
}

// nextSwitch waits for the next +switch-master event of this Sentinel's
// master and returns the new master's address; it fails tb, saying it was
// waiting for what, when ctx ends first.
func (s *Sentinel) nextSwitch(tb testing.TB, ctx context.Context, ps *redis.PubSub, what string) string {
	tb.Helper()
	for {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			tb.Fatalf("testutil: waiting for %s on the Sentinel at %s: %v", what, s.Addr(), err)
		}
		// "<master name> <old ip> <old port> <new ip> <new port>"
		f := strings.Fields(msg.Payload)
		if len(f) == 5 && f[0] == s.masterName {
			return net.JoinHostPort(f[3], f[4])
		}
	}
}
