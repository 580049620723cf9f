package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLogOutputReachesTheFileByClose(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, closeLog := newLogOutput(f)
	if _, ok := w.(*bufferedOutput); !ok {
		t.Fatalf("a file is not buffered")
	}
	for range 1000 {
		if _, err := w.Write([]byte("a line of the access log\n")); err != nil {
			t.Fatal(err)
		}
	}
	closeLog()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "a line of the access log\n"); n != 1000 {
		t.Errorf("the file holds %d lines after close; want all 1000", n)
	}
}
