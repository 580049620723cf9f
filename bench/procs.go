//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a process the benchmark started. It is only ever stopped by its
// own PID.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

var (
	procsMu sync.Mutex
	procs   []*proc
)

// startProc starts bin pinned to cores (taskset -c cores) with exactly env
// (nothing of the benchmark's own environment leaks in), its standard output
// and error to a log file in dir: a proxy's access lines cost what writing
// them to a file costs, as a container's go to its log. The file is opened
// for appending, so that truncateLog can empty it while the process writes
// on. taskset execs bin, so the PID is bin's.
func startProc(dir, name, cores string, env []string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("taskset", append([]string{"-c", cores, bin}, args...)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	// The children die with the benchmark, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process and waits for it (SIGKILL after 10 s).
func (p *proc) stop() {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// stopAll stops every process still running, newest first.
func stopAll() {
	procsMu.Lock()
	ps := procs
	procs = nil
	procsMu.Unlock()
	for i := len(ps) - 1; i >= 0; i-- {
		ps[i].stop()
	}
}

// tail returns the last lines of the process's log, for error messages. It
// reads only the end of the file: a proxy's log holds an access line per
// request.
func (p *proc) tail() string {
	f, err := os.Open(p.log)
	if err != nil {
		return ""
	}
	defer f.Close()
	const most = 16 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > most {
		_, _ = f.Seek(-most, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, "\n")
}

// truncateLog empties the process's log (it appends, so it writes on at
// the start of the file): the proxies' access lines would otherwise fill
// the disk with hundreds of megabytes a run, and the kernel's writeback of
// them would count as other work on the machine.
func (p *proc) truncateLog() { _ = os.Truncate(p.log, 0) }

// waitLine waits until a complete line of the process's log satisfies
// match and returns it. It fails when the process exits first, naming
// what it waited for, or when timeout passes.
func (p *proc) waitLine(what string, timeout time.Duration, match func(line string) bool) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		// Checked before the read: a line written just before the exit
		// is still found.
		exited := p.exited()
		b, _ := os.ReadFile(p.log)
		for line := range strings.Lines(string(b)) {
			if l, complete := strings.CutSuffix(line, "\n"); complete && match(l) {
				return l, nil
			}
		}
		if exited {
			return "", fmt.Errorf("%s exited before %s: %s", p.name, what, p.tail())
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s: no %s after %s: %s", p.name, what, timeout, p.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listeningOn reads the line with which bench/upstream and bench/floor say
// where they listen, "listening on ADDR" (the floor adds " ops ADDR" when
// it serves metrics): they bind port 0, and the kernel's choice is known
// only to them.
func listeningOn(line string) (addr, ops string, ok bool) {
	f := strings.Fields(line)
	if len(f) < 3 || f[0] != "listening" || f[1] != "on" {
		return "", "", false
	}
	if len(f) >= 5 && f[3] == "ops" {
		ops = f[4]
	}
	return f[2], ops, true
}

// startedAddrs returns the data plane and ops addresses that the proxy's
// startup line ("thanksio-proxy started", logged by Main.Run once it
// serves, LOG_FORMAT=text) names, or empty strings for another line. The
// proxy listens on port 0 of LISTEN_ADDR and OPS_ADDR; this line is how the
// benchmark learns the ports.
func startedAddrs(line string) (data, ops string) {
	attrs := textAttrs(line)
	if attrs["msg"] != "thanksio-proxy started" {
		return "", ""
	}
	return attrs["listen"], attrs["ops"]
}

// textAttrs returns the attributes of a line of slog's text handler:
// key=value pairs separated by spaces, a value with a space, a quote or an
// equals sign Go-quoted.
func textAttrs(line string) map[string]string {
	attrs := map[string]string{}
	rest := line
	for {
		key, value, ok := strings.Cut(strings.TrimLeft(rest, " "), "=")
		if !ok {
			return attrs
		}
		if strings.HasPrefix(value, `"`) {
			quoted, err := strconv.QuotedPrefix(value)
			if err != nil {
				return attrs
			}
			rest = value[len(quoted):]
			value, _ = strconv.Unquote(quoted)
		} else {
			value, rest, _ = strings.Cut(value, " ")
		}
		attrs[key] = value
	}
}

// waitHTTP waits until url answers 200 or p exits.
func waitHTTP(ctx context.Context, p *proc, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("%s exited: %s", p.name, p.tail())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: %s not ready after %s", p.name, url, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cpuTime returns the user plus system CPU time a process has used, from
// /proc/<pid>/stat (all its threads, living and exited).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/pid/stat")
	}
	// Fields after the command name start at field 3 (state); utime and
	// stime are fields 14 and 15.
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("malformed /proc/pid/stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed /proc/pid/stat")
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// rss returns a process's resident set size (VmRSS) in bytes.
func rss(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmRSS")
}

// metricValues reads unlabelled metrics from a Prometheus text endpoint, in
// the order of names.
func metricValues(ctx context.Context, url string, names ...string) ([]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	vals := make([]float64, len(names))
	found := 0
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for i, name := range names {
			if rest, ok := strings.CutPrefix(line, name+" "); ok {
				if vals[i], err = strconv.ParseFloat(strings.TrimSpace(rest), 64); err != nil {
					return nil, fmt.Errorf("metric %s: %w", name, err)
				}
				found++
			}
		}
	}
	if found != len(names) {
		return nil, fmt.Errorf("metrics %v: not all found at %s", names, url)
	}
	return vals, nil
}

// machineBusy returns the CPU time all CPUs spent busy (user, nice, system,
// and steal: time the hypervisor gave to someone else), from /proc/stat.
// Interrupt time is left out: loopback traffic is the benchmark's own.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("malformed /proc/stat")
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 8} { // user nice system steal
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, errors.New("malformed /proc/stat")
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// oursCPU returns the CPU time used so far by this process and every
// process it started that still runs.
func oursCPU() time.Duration {
	total, _ := cpuTime(os.Getpid())
	procsMu.Lock()
	defer procsMu.Unlock()
	for _, p := range procs {
		if !p.exited() {
			d, _ := cpuTime(p.pid())
			total += d
		}
	}
	return total
}
