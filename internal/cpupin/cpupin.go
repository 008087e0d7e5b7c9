// Package cpupin runs the benchmark tools pinned to one CPU, so that the
// servers they measure and the load they make do not share a core: the
// tool re-executes itself under taskset once, and remembers in an
// environment variable that it did (and how many CPUs the machine has,
// which the pinned process no longer sees).
package cpupin

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
)

// Pin is one tool's pinning: Env is its environment variable, CPU the
// core the tool itself runs on once pinned.
type Pin struct {
	Env string
	CPU int
}

// Self re-executes this program on p.CPU with taskset, unless it already
// runs pinned. It returns only when it does not re-execute: with ok and
// done (what the table says) when pinned, else with a note saying why not
// (no taskset, one CPU, exec failed).
func (p Pin) Self(done string) (note string, ok bool) {
	if p.Pinned() {
		return done, true
	}
	ts, err := exec.LookPath("taskset")
	if err != nil {
		return "NOT pinned: taskset not found (apt-get install util-linux)", false
	}
	if runtime.NumCPU() < 2 {
		return "NOT pinned: fewer than 2 CPUs", false
	}
	self, err := os.Executable()
	if err != nil {
		return "NOT pinned: " + err.Error(), false
	}
	os.Setenv(p.Env, strconv.Itoa(runtime.NumCPU()))
	err = syscall.Exec(ts, append([]string{ts, "-c", strconv.Itoa(p.CPU), self}, os.Args[1:]...), os.Environ())
	os.Unsetenv(p.Env)
	return fmt.Sprintf("NOT pinned: exec taskset: %v", err), false
}

// Pinned reports whether this process runs pinned (Self re-executed it).
func (p Pin) Pinned() bool { return os.Getenv(p.Env) != "" }

// MachineCPUs is the number of CPUs of the machine, also once pinned.
func (p Pin) MachineCPUs() int {
	if n, err := strconv.Atoi(os.Getenv(p.Env)); err == nil {
		return n
	}
	return runtime.NumCPU()
}

// Command is exec.Command(bin, args...) on cpu when this process runs
// pinned (taskset execs bin, so the process's pid is bin's), else as is.
func (p Pin) Command(cpu int, bin string, args ...string) *exec.Cmd {
	if p.Pinned() {
		return exec.Command("taskset", append([]string{"-c", strconv.Itoa(cpu), bin}, args...)...)
	}
	return exec.Command(bin, args...)
}
