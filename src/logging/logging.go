// Package logging builds the processes' zerolog loggers and turns the
// standard library's log lines into events.
package logging

import (
	"io"
	"log"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// New builds a process logger: JSON lines, or with format "console" a
// human-readable form without colours, at level.
func New(out io.Writer, format string, level zerolog.Level) zerolog.Logger {
	if format == "console" {
		out = zerolog.ConsoleWriter{Out: out, NoColor: true, TimeFormat: time.RFC3339Nano}
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger()
}

// StdLogger returns a *log.Logger whose every line becomes one event at
// level: for http.Server's ErrorLog and promhttp's, which report what they
// dropped through a standard logger.
func StdLogger(logger zerolog.Logger, level zerolog.Level) *log.Logger {
	return log.New(lineWriter{logger: logger, level: level}, "", 0)
}

type lineWriter struct {
	logger zerolog.Logger
	level  zerolog.Level
}

func (w lineWriter) Write(p []byte) (int, error) {
	w.logger.WithLevel(w.level).Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
