package app

import (
	"fmt"

	"github.com/go-logr/logr"
	"github.com/rs/zerolog"
	"k8s.io/klog/v2"
)

// routeKlog sends what client-go logs (informer and leader election
// messages) through the process logger as JSON, instead of klog's text
// lines on stderr. Only errors and klog's level 0 pass: the rest is
// client-go's debugging.
func routeKlog(logger zerolog.Logger) {
	klog.SetLogger(logr.New(klogSink{logger: logger.With().Str("component", "client-go").Logger()}))
}

type klogSink struct {
	logger zerolog.Logger
}

func (s klogSink) Init(logr.RuntimeInfo)  {}
func (s klogSink) Enabled(level int) bool { return level == 0 }

func (s klogSink) Info(_ int, msg string, kv ...any) {
	fields(s.logger.Info(), kv).Msg(msg)
}

func (s klogSink) Error(err error, msg string, kv ...any) {
	fields(s.logger.Warn().Err(err), kv).Msg(msg)
}

func (s klogSink) WithValues(kv ...any) logr.LogSink {
	ctx := s.logger.With()
	for i := 0; i+1 < len(kv); i += 2 {
		ctx = ctx.Interface(fmt.Sprint(kv[i]), kv[i+1])
	}
	return klogSink{logger: ctx.Logger()}
}

func (s klogSink) WithName(name string) logr.LogSink {
	return klogSink{logger: s.logger.With().Str("logger", name).Logger()}
}

func fields(ev *zerolog.Event, kv []any) *zerolog.Event {
	for i := 0; i+1 < len(kv); i += 2 {
		ev = ev.Interface(fmt.Sprint(kv[i]), kv[i+1])
	}
	return ev
}
