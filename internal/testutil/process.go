package testutil

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Process is a program a test started. It is killed when the test ends;
// if the test failed, its output is logged.
type Process struct {
	Name string
	Cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// StartProcess runs bin with args, and env added to this process's
// environment.
func StartProcess(tb testing.TB, name, bin string, env []string, args ...string) *Process {
	tb.Helper()
	p := &Process{Name: name, Cmd: exec.Command(bin, args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout, p.Cmd.Stderr = p.out, p.out
	if err := p.Cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { p.Cmd.Wait(); close(p.done) }()
	tb.Cleanup(func() {
		p.Cmd.Process.Kill()
		<-p.done
		if tb.Failed() {
			tb.Logf("--- output of %s:\n%s", p.Name, p.out)
		}
	})
	return p
}

// Output is what the program wrote to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// Signal sends sig without waiting.
func (p *Process) Signal(sig os.Signal) { p.Cmd.Process.Signal(sig) }

// Kill kills the program without waiting.
func (p *Process) Kill() { p.Cmd.Process.Kill() }

// Wait waits at most d for the program to exit and returns its exit code;
// the test fails if it does not exit in time.
func (p *Process) Wait(tb testing.TB, d time.Duration) int {
	tb.Helper()
	select {
	case <-p.done:
		return p.Cmd.ProcessState.ExitCode()
	case <-time.After(d):
		tb.Fatalf("%s still running after %v; output:\n%s", p.Name, d, p.out)
		return -1
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
