package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"thanksio-proxy/auth"
)

// maxTokenFile bounds THANKSIO_TOKEN_FILE: a token is a few hundred bytes.
const maxTokenFile = 16 << 10

// readTokenFile returns the one token that the file at path holds, without
// surrounding white space (a Secret's file may end with a newline). Its
// errors never hold the file's content.
func readTokenFile(path string) (string, error) {
	// A FIFO or a device would block the open or the read: only a
	// regular file (or a symlink to one, as a mounted Secret is) is read.
	fi, err := os.Stat(path)
	if err == nil && !fi.Mode().IsRegular() {
		return "", errors.New("it must name a regular file (or a symlink to one)")
	}
	f, err := os.Open(path)
	if err != nil {
		// A path without a slash may be the token itself, set here by
		// mistake for THANKSIO_TOKEN: it is not repeated.
		name := path
		if !strings.Contains(path, "/") {
			name = "the file it names"
		}
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%s does not exist", name)
		}
		return "", fmt.Errorf("cannot read %s: %w", name, errors.Unwrap(err))
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("cannot read %s", path)
	}
	if len(b) > maxTokenFile {
		return "", fmt.Errorf("%s is larger than a token can be (%d bytes)", path, maxTokenFile)
	}
	token := strings.TrimSpace(string(b))
	switch {
	case token == "":
		return "", fmt.Errorf("%s is empty", path)
	case !validToken(token):
		return "", fmt.Errorf("%s must hold one token: printable characters without spaces", path)
	}
	return token, nil
}

// validToken reports whether s can be a bearer token: visible ASCII.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// tokenFileCheck is how often THANKSIO_TOKEN_FILE is checked for a change.
const tokenFileCheck = 2 * time.Second

// watchTokenFile reads the token file again whenever its content changes
// (checked every tokenFileCheck: a Kubernetes Secret's update swaps the
// file through a symlink) and hands the new token to static. A file that
// no longer holds a token leaves the previous one in force.
func watchTokenFile(path string, static *auth.StaticTenant, log *slog.Logger) (stop func()) {
	return watchFile(path, tokenFileCheck, nil, func(string) bool {
		token, err := readTokenFile(path)
		if err != nil {
			log.Error("THANKSIO_TOKEN_FILE changed but holds no token; the previous token stays in force", "err", err)
			return false
		}
		static.Set(token)
		log.Info("THANKSIO_TOKEN_FILE changed: its new token is in use", "file", path)
		return true
	})
}
