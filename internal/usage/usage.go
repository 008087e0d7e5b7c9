// Package usage marks errors in a program's flags, arguments or config
// file, so that both programs (registrar and monitor) report them alike:
// exit code 2 for a usage error, 1 for any other failure, 0 for success.
package usage

import (
	"errors"
	"flag"
	"fmt"
)

// Error is a mistake in flags, arguments or a config file.
type Error struct{ Err error }

func (e Error) Error() string { return e.Err.Error() }
func (e Error) Unwrap() error { return e.Err }

// Errorf formats a usage error.
func Errorf(format string, args ...any) error { return Error{fmt.Errorf(format, args...)} }

// Wrap marks err as a usage error; nil stays nil.
func Wrap(err error) error {
	if err == nil {
		return nil
	}
	return Error{err}
}

// ExitCode is the process exit code for the outcome err: 0 for nil or a
// request for help (-h), 2 for a usage error, 1 otherwise.
func ExitCode(err error) int {
	var ue Error
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		return 2
	default:
		return 1
	}
}
