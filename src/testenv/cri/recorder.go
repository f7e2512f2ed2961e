package cri

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Recorder keeps the last status of every container matching its labels
// that the runtime listed while it ran, so that containers of deleted pods,
// which the kubelet removes soon after they exit, are still known with their
// timestamps. Only the listing is periodic: every time it holds comes from
// the runtime.
type Recorder struct {
	c      *Client
	labels map[string]string
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	seen map[string]Container
	// lost are containers removed before the runtime reported them exited:
	// their FinishedAt is unknown.
	lost map[string]Container
	err  error
}

// Record lists the containers matching labels every period until Stop.
func (c *Client) Record(labels map[string]string, period time.Duration) *Recorder {
	ctx, cancel := context.WithCancel(context.Background())
	r := &Recorder{c: c, labels: labels, cancel: cancel, done: make(chan struct{}),
		seen: map[string]Container{}, lost: map[string]Container{}}
	go r.run(ctx, period)
	return r
}

func (r *Recorder) run(ctx context.Context, period time.Duration) {
	defer close(r.done)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		if err := r.poll(ctx); err != nil && ctx.Err() == nil {
			r.mu.Lock()
			r.err = errors.Join(r.err, err)
			r.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// poll updates every listed container that has not exited yet, and marks
// the ones that vanished before they were seen exited as lost.
func (r *Recorder) poll(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ids, err := r.c.List(cctx, r.labels)
	if err != nil {
		return err
	}
	listed := map[string]bool{}
	for _, id := range ids {
		listed[id] = true
		r.mu.Lock()
		prev, known := r.seen[id]
		r.mu.Unlock()
		if known && prev.Exited() {
			continue
		}
		st, err := r.c.Status(cctx, id)
		if status.Code(err) == codes.NotFound {
			listed[id] = false
			continue
		}
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.seen[id] = st
		r.mu.Unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, ct := range r.seen {
		if !listed[id] && !ct.Exited() {
			r.lost[id] = ct
			delete(r.seen, id)
		}
	}
	return nil
}

// Containers returns what the recorder knows now, sorted by StartedAt (not
// started last): every container seen, and an error naming those removed
// before they were seen exited, or the runtime's errors.
func (r *Recorder) Containers() ([]Container, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Container, 0, len(r.seen))
	for _, ct := range r.seen {
		out = append(out, ct)
	}
	sort.Slice(out, func(i, j int) bool { return startKey(out[i]).Before(startKey(out[j])) })
	err := r.err
	for _, ct := range r.lost {
		err = errors.Join(err, fmt.Errorf("container %s of pod %s/%s vanished before the runtime reported it exited, so its finish time is unknown",
			ct.Name, ct.PodNamespace, ct.PodName))
	}
	return out, err
}

func startKey(c Container) time.Time {
	if c.StartedAt.IsZero() {
		return time.Unix(1<<40, 0)
	}
	return c.StartedAt
}

// Stop ends the recording.
func (r *Recorder) Stop() {
	r.cancel()
	<-r.done
}
