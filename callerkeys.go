package main

import (
	"crypto/sha256"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"thanksio-proxy/proxy"
)

// reloadCallerKeys rereads the caller keys file on SIGHUP and whenever its
// content changes (checked every callerKeysCheck): a Kubernetes Secret update
// swaps the mounted file through a symlink, and a distroless container has
// no shell to send a signal from. A file that does not load leaves the
// previous keys in force.
func reloadCallerKeys(path string, callers *proxy.Callers, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	stopWatch := watchFile(path, callerKeysCheck, hup, func(why string) bool {
		keys, err := proxy.LoadCallerKeys(path)
		if err != nil {
			log.Error("caller keys not reloaded; the previous keys stay in force", "file", path, "trigger", why, "err", err)
			return false
		}
		callers.Set(keys)
		log.Info("caller keys reloaded", "file", path, "trigger", why, "callers", keys.Len())
		return true
	})
	return func() { signal.Stop(hup); stopWatch() }
}

// watchFile calls reload, on a goroutine of its own, whenever the content
// of the file at path changes (checked every interval: a Kubernetes
// Secret's update swaps the file through a symlink, and a distroless
// container has no shell to send a signal from), and whenever poke (nil
// for none) receives. why is "file changed" or "SIGHUP". A reload that
// fails (it reports false) is tried once more at the next check: the file
// may have been caught half written, between the check's read and the
// reload's.
func watchFile(path string, interval time.Duration, poke <-chan os.Signal, reload func(why string) bool) (stop func()) {
	done := make(chan struct{})
	last := fileDigest(path)
	retry := false // the last reload failed: try once more
	go func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-poke:
				last = fileDigest(path)
				retry = !reload("SIGHUP")
			case <-tick.C:
				if d := fileDigest(path); d != last || retry {
					last = d
					retry = !reload("file changed") && !retry
				}
			}
		}
	}()
	return func() { close(done) }
}

// callerKeysCheck is how often the caller keys file is checked for changes.
const callerKeysCheck = 5 * time.Second

// fileDigest returns the SHA-256 of the file at path (following symlinks),
// or zero when it cannot be read.
func fileDigest(path string) [32]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(b)
}
