package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
)

// defaultReleaseConcurrency is how many releases may be in flight by
// default: terminating pods release independently of each other, and a
// release loop that falls behind would let the semaphore fill up.
const defaultReleaseConcurrency = 32

// releaser gives admitted slots back through the lease API, as the
// sidecars of terminating pods do, per a ReleasePolicy.
type releaser struct {
	policy ReleasePolicy
	client *http.Client
	url    string
	ledger *Ledger
	now    func() time.Duration

	mu      sync.Mutex
	queue   []pending // oldest first
	held    map[string]int
	wake    chan struct{}
	work    chan pending
	done    chan struct{}
	workers sync.WaitGroup

	released, errs, notHeld int
}

type pending struct {
	id    HoldID
	lease leaseapi.Lease
	at    time.Duration
}

func newReleaser(p ReleasePolicy, client *http.Client, baseURL string, l *Ledger, now func() time.Duration) *releaser {
	return &releaser{
		policy: p, client: client, url: baseURL + leaseapi.ReleasePath, ledger: l, now: now,
		held: map[string]int{}, wake: make(chan struct{}, 1), work: make(chan pending, 1024), done: make(chan struct{}),
	}
}

func leaseFor(v *Vars, key string, a Answer) leaseapi.Lease {
	return leaseapi.Lease{Namespace: v.Namespace, Key: key, Slot: a.Slot, Holder: a.Holder}
}

func (r *releaser) start() {
	workers := r.policy.Concurrency
	if workers <= 0 {
		workers = defaultReleaseConcurrency
	}
	for range workers {
		r.workers.Add(1)
		go func() {
			defer r.workers.Done()
			for p := range r.work {
				r.release(p)
			}
		}()
	}
	go r.schedule()
}

// stop ends the schedule (what is still queued stays held) and waits for
// the releases in flight.
func (r *releaser) stop() {
	// What the last admissions made due is released before the schedule
	// ends, whether or not its goroutine has woken up for it yet.
	r.due()
	close(r.done)
	r.workers.Wait()
}

func (r *releaser) add(id HoldID, l leaseapi.Lease, at time.Duration) {
	r.mu.Lock()
	r.queue = append(r.queue, pending{id: id, lease: l, at: at})
	r.held[l.Key]++
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *releaser) schedule() {
	defer close(r.work)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := r.due()
		if next > 0 {
			timer.Reset(next)
		}
		select {
		case <-r.done:
			return
		case <-r.wake:
		case <-timer.C:
		}
	}
}

// due hands every slot that is due to the workers and answers how long
// until the next one is (0: wait for the next admission).
func (r *releaser) due() time.Duration {
	for {
		r.mu.Lock()
		if len(r.queue) == 0 {
			r.mu.Unlock()
			return 0
		}
		head := r.queue[0]
		now := r.now()
		over := r.policy.Above > 0 && r.held[head.lease.Key] > r.policy.Above
		expired := r.policy.After > 0 && now-head.at >= r.policy.After
		if !over && !expired {
			r.mu.Unlock()
			if r.policy.After > 0 {
				return head.at + r.policy.After - now
			}
			return 0
		}
		r.queue = r.queue[1:]
		r.held[head.lease.Key]--
		r.mu.Unlock()
		select {
		case r.work <- head:
		case <-r.done:
			return 0
		}
	}
}

func (r *releaser) release(p pending) {
	sent := r.now()
	released, err := r.post(p.lease)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil:
		r.errs++
		r.ledger.ReleaseFailed(p.id, sent)
	case !released:
		r.notHeld++
		r.ledger.ReleaseFailed(p.id, sent)
	default:
		r.released++
		r.ledger.Released(p.id, sent, r.now())
	}
}

func (r *releaser) post(l leaseapi.Lease) (bool, error) {
	body, err := json.Marshal(l)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header["Content-Type"] = jsonType
	resp, err := r.client.Do(req)
	if err != nil {
		return false, fmt.Errorf("releasing slot %d of %s: %w", l.Slot, l.Name(), err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return false, fmt.Errorf("releasing slot %d of %s: %w", l.Slot, l.Name(), err)
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("releasing slot %d of %s: HTTP %d: %s", l.Slot, l.Name(), resp.StatusCode, truncate(data, 200))
	}
	var out leaseapi.ReleaseResponse
	if err := json.Unmarshal(data, &out); err != nil {
		return false, fmt.Errorf("releasing slot %d of %s: %w", l.Slot, l.Name(), err)
	}
	return out.Released, nil
}

func (r *releaser) counts() (released, errs, notHeld int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.released, r.errs, r.notHeld
}
