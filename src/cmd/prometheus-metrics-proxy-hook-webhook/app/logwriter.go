package app

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// LogWriter batches log lines: at thousands of admissions a second a write
// system call per decision costs more than the decision itself. Lines are
// flushed at least every FlushInterval, when the buffer fills, and on
// Close; a crash loses at most the last interval's lines.
type LogWriter struct {
	mu   sync.Mutex
	buf  *bufio.Writer
	stop chan struct{}
	done chan struct{}
}

// FlushInterval bounds how long a log line waits in the buffer.
const FlushInterval = 100 * time.Millisecond

// NewLogWriter starts the flushing goroutine; Close stops it.
func NewLogWriter(w io.Writer) *LogWriter {
	l := &LogWriter{buf: bufio.NewWriterSize(w, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go l.loop()
	return l
}

// Write implements io.Writer; zerolog writes one whole line per call.
func (l *LogWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// Flush writes out what is buffered.
func (l *LogWriter) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Flush()
}

func (l *LogWriter) loop() {
	defer close(l.done)
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			_ = l.Flush()
		}
	}
}

// Close stops the flushing goroutine and flushes the rest.
func (l *LogWriter) Close() error {
	close(l.stop)
	<-l.done
	return l.Flush()
}
