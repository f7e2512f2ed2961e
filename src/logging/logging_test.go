package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestNew(t *testing.T) {
	cases := []struct {
		name, format string
		level        zerolog.Level
		want         []string
		wantNot      []string
	}{
		{"json at info drops debug", "json", zerolog.InfoLevel, []string{`"level":"info"`, `"message":"Shown."`, `"time":`}, []string{"Hidden."}},
		{"console without colours", "console", zerolog.DebugLevel, []string{"INF Shown.", "DBG Hidden."}, []string{"\x1b["}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			l := New(&out, c.format, c.level)
			l.Info().Msg("Shown.")
			l.Debug().Msg("Hidden.")
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range c.wantNot {
				if strings.Contains(out.String(), w) {
					t.Errorf("output holds %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestStdLogger(t *testing.T) {
	var out bytes.Buffer
	l := StdLogger(zerolog.New(&out), zerolog.WarnLevel)
	l.Printf("http: TLS handshake error from %s: EOF\n", "127.0.0.1:1")
	var ev map[string]string
	if err := json.Unmarshal(out.Bytes(), &ev); err != nil {
		t.Fatalf("not one JSON event: %v\n%s", err, out.String())
	}
	if ev["level"] != "warn" || ev["message"] != "http: TLS handshake error from 127.0.0.1:1: EOF" {
		t.Fatalf("event %v", ev)
	}
}
