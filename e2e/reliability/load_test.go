package reliability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/reliability/figures"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/reliability/holders"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/reliability/sockets"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
)

// Load shape. The roomy semaphore always has a free slot (more slots than
// clients and vanished holders together), so that "every acquisition with
// a free slot succeeds" is sharp; the tight one is contended, so that
// over-admission has a chance to show.
var (
	roomy = pod{key: "roomy", size: 48, startupTimeout: startupTimeout}
	tight = pod{key: "tight", size: 4, startupTimeout: startupTimeout}
)

const (
	roomyClients = 14
	tightClients = 10
	// vanishShare of the admitted clients stop renewing without releasing,
	// as a sidecar killed with SIGKILL does.
	vanishShare = 0.03
	renewEvery  = leaseTTL / 3
	// noQuorumBound is the bound on a no-quorum answer: the per-node
	// timeout, plus HTTP and scheduling overhead on a loaded machine.
	noQuorumBound = nodeTimeout + time.Second
	// maxIdle is the semaphore's per-node pool of idle connections.
	maxIdle = 64
	// minCycles per round of the schedule.
	minCycles = 500
)

func rounds(t *testing.T) int {
	s := os.Getenv("PMPH_RELIABILITY_ROUNDS")
	if s == "" {
		return 1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("PMPH_RELIABILITY_ROUNDS=%q must be a positive integer", s)
	}
	return n
}

// run is the shared state of one load run.
type run struct {
	e        *env
	tl       *timeline
	book     *figures.Book
	rec      *holders.Recorder
	watch    *expiryWatch
	password string

	stopping  atomic.Bool
	uid       atomic.Int64
	cycles    atomic.Int64
	failovers atomic.Int64
	// last is the end of the last request any client made (unix nanos).
	last atomic.Int64

	mu       sync.Mutex
	failures []string
}

func (r *run) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

func (r *run) touch(at time.Time) {
	for {
		old := r.last.Load()
		if at.UnixNano() <= old || r.last.CompareAndSwap(old, at.UnixNano()) {
			return
		}
	}
}

// leak checks an answer a client got for the Redis password.
func (r *run) leak(where string, text string) {
	if strings.Contains(text, r.password) {
		r.fail("the Redis password appears in %s: %s", where, text)
	}
}

// sleep pauses a client; it is the client's think time, not a wait on
// another process.
func sleep(d time.Duration) { time.Sleep(d) }

func jitter(lo, hi time.Duration) time.Duration { return lo + rand.N(hi-lo) }

// worker plays pods of one semaphore until the run stops: admission, a
// hold with renewals every TTL/3, release (or vanishing).
func (r *run) worker(c *client, p pod, kind string) {
	op := "admission (" + kind + ")"
	for !r.stopping.Load() {
		uid := fmt.Sprintf("rel-%d", r.uid.Add(1))
		began := time.Now()
		a, failovers, err := c.admit(context.Background(), uid, p)
		ended := time.Now()
		r.touch(ended)
		r.failovers.Add(int64(failovers))
		label := r.tl.span(began, ended)
		outcome := "unreachable"
		if err == nil {
			outcome = a.outcome()
		} else {
			r.leak("a transport error", err.Error())
		}
		r.leak("an admission answer", string(a.body))
		took := ended.Sub(began)
		if outcome == "no quorum" && oneNodeDown[label] && starved(a.message, r.faultedAddr(label)) {
			outcome = outcomeStarved
		}
		expected := outcome == "allowed" || (kind == "tight" && (outcome == "full" || outcome == "split"))
		switch {
		case outcome == outcomeStarved:
			// Counted, and bounded at the end of the run.
		case oneNodeDown[label]:
			if kind == "roomy" && outcome != "allowed" {
				r.fail("%s under %q: %s %q (err %v) though a slot was free", op, label, outcome, a.message, err)
			}
			if kind == "tight" && !expected {
				r.fail("%s under %q: %s %q (err %v)", op, label, outcome, a.message, err)
			}
		case twoNodesDown[label]:
			expected = outcome == "no quorum"
			if !expected {
				r.fail("%s under %q: %s %q (err %v), want a no-quorum denial", op, label, outcome, a.message, err)
			} else if took > noQuorumBound {
				r.fail("%s under %q: the no-quorum answer took %s, above the bound of %s", op, label, took, noQuorumBound)
			}
		}
		r.book.Observe(label, op, expected, outcome, took)
		if !a.allowed {
			if outcome == "full" {
				sleep(jitter(100*time.Millisecond, 300*time.Millisecond))
			} else {
				sleep(jitter(50*time.Millisecond, 150*time.Millisecond))
			}
			continue
		}
		r.hold(c, p, a, began, ended)
	}
}

// faultedAddr is the address the webhooks use for the node a one-node
// fault takes out, "" for none.
func (r *run) faultedAddr(label string) string {
	i, ok := faulted[label]
	if !ok {
		return ""
	}
	return r.e.webhookRedis()[i]
}

// maxStarved bounds, per fault and operation, the admissions that may fail
// because the machine did not run healthy nodes within the per-node timeout:
// a few, or 2%. A bug that makes healthy nodes time out does far more.
const (
	maxStarvedShare = 0.02
	maxStarvedFew   = 3
)

// hold keeps an admitted lease for a while, then releases it, or vanishes.
func (r *run) hold(c *client, p pod, a admission, began, ended time.Time) {
	lease := leaseapi.Lease{Namespace: namespace, Key: p.key, Slot: a.slot, Holder: a.holder}
	tn := holders.NewTenure(p.name(), a.slot, a.holder)
	tn.Held(ended, began.Add(p.startupTimeout-drift(p.startupTimeout)))
	// freeBy is when no node can hold the lease any more if the client
	// stops now: the TTL of the last request that may have set it, counted
	// from that request's end, plus Redis' expiry granularity.
	freeBy := ended.Add(p.startupTimeout + 100*time.Millisecond)
	vanish := rand.Float64() < vanishShare
	holdUntil := ended.Add(jitter(100*time.Millisecond, 900*time.Millisecond))
	next := ended.Add(renewEvery)
	for next.Before(holdUntil) {
		sleep(time.Until(next))
		rb := time.Now()
		tn.Renewing(rb, rb.Add(leaseTTL-drift(leaseTTL)))
		failovers, err := c.leaseCall(context.Background(), func(ctx context.Context, lc *leaseapi.Client) error {
			_, err := lc.Renew(ctx, lease)
			return err
		})
		re := time.Now()
		r.touch(re)
		r.failovers.Add(int64(failovers))
		if err != nil {
			r.leak("a lease API error", err.Error())
		}
		outcome := leaseOutcome(err)
		label := r.tl.span(rb, re)
		r.book.Observe(label, "renew", err == nil || (twoNodesDown[label] && outcome == "no quorum"), outcome, re.Sub(rb))
		// A renewal that got no answer may still have been applied.
		freeBy = later(freeBy, re.Add(leaseTTL+100*time.Millisecond))
		switch outcome {
		case "ok":
			tn.Held(re, rb.Add(leaseTTL-drift(leaseTTL)))
			next = rb.Add(renewEvery)
		case "lost", "conflict":
			next = holdUntil // the lease is gone: stop renewing, release
		default:
			next = time.Now().Add(100 * time.Millisecond)
		}
	}
	if vanish {
		r.watch.add(vanished{pod: p, slot: a.slot, holder: a.holder, at: time.Now(), freeBy: freeBy})
		r.rec.Add(tn)
		r.book.Inject(faultVanished)
		return
	}
	tn.Release(time.Now())
	for attempt := 0; ; attempt++ {
		rb := time.Now()
		failovers, err := c.leaseCall(context.Background(), func(ctx context.Context, lc *leaseapi.Client) error {
			_, err := lc.Release(ctx, lease)
			return err
		})
		re := time.Now()
		r.touch(re)
		r.failovers.Add(int64(failovers))
		if err != nil {
			r.leak("a lease API error", err.Error())
		}
		label := r.tl.span(rb, re)
		outcome := leaseOutcome(err)
		r.book.Observe(label, "release", err == nil || (twoNodesDown[label] && outcome == "no quorum"), outcome, re.Sub(rb))
		// A release that never got through leaves the lease to its TTL.
		if err == nil || re.After(freeBy) {
			break
		}
		sleep(100 * time.Millisecond)
	}
	r.rec.Add(tn)
	r.cycles.Add(1)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// vanished is a holder that stopped renewing without releasing.
type vanished struct {
	pod    pod
	slot   int
	holder string
	at     time.Time
	freeBy time.Time
}

// expiryWatch checks that every vanished holder's slot is free again, on
// a quorum of nodes, by the time its TTL ran out.
type expiryWatch struct {
	e   *env
	run *run

	mu      sync.Mutex
	pending []vanished
	freed   []time.Duration // from vanishing to seen free
	// stragglers are holders still found on one node (not a quorum) after
	// their TTL: a write that reached a paused node late.
	stragglers int
}

func (w *expiryWatch) add(v vanished) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = append(w.pending, v)
}

func (w *expiryWatch) left() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

// check inspects the semaphores of the pending holders once.
func (w *expiryWatch) check(ctx context.Context) {
	w.mu.Lock()
	pending := append([]vanished(nil), w.pending...)
	w.mu.Unlock()
	bySem := map[string][]vanished{}
	for _, v := range pending {
		bySem[v.pod.name()] = append(bySem[v.pod.name()], v)
	}
	done := map[string]bool{}
	for name, vs := range bySem {
		checked := time.Now()
		st, err := w.e.status(ctx, name, vs[0].pod.size)
		if err != nil {
			continue
		}
		for _, v := range vs {
			sl := st.Slots[v.slot]
			if sl.Holder == v.holder {
				if !checked.Before(v.freeBy) {
					w.run.fail("slot %d of %s still held on a quorum by vanished holder %.8s at %s, %s after its TTL ran out",
						v.slot, name, v.holder, checked.Format("15:04:05.000"), checked.Sub(v.freeBy))
					done[v.holder] = true
				}
				continue
			}
			done[v.holder] = true
			// The figure is the time from the last word of the holder to
			// the first check that found its slot free; the bound is its TTL.
			w.run.book.Observe(faultVanished, "slot freed (time since the holder vanished)", true, "freed within its TTL", checked.Sub(v.at))
			w.mu.Lock()
			w.freed = append(w.freed, checked.Sub(v.at))
			for _, h := range sl.Holders {
				if h == v.holder && !checked.Before(v.freeBy) {
					w.stragglers++
					break
				}
			}
			w.mu.Unlock()
		}
	}
	w.mu.Lock()
	kept := w.pending[:0]
	for _, v := range w.pending {
		if !done[v.holder] {
			kept = append(kept, v)
		}
	}
	w.pending = kept
	w.mu.Unlock()
}

func (w *expiryWatch) loop(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			w.check(ctx)
		}
	}
}

// TestFaultInjectionUnderLoad drives thousands of acquire/hold/renew/release
// cycles through two webhook processes while the schedule injects faults,
// and asserts the guarantees of docs/reliability.md.
func TestFaultInjectionUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("the load test takes about two minutes; -short skips it")
	}
	goroutinesBefore := runtime.NumGoroutine()
	e := newEnv(t, envOptions{webhooks: 2})
	r := &run{e: e, tl: newTimeline(), book: figures.NewBook(), password: e.redis.Password,
		rec: holders.NewRecorder(map[string]int{roomy.name(): roomy.size, tight.name(): tight.size})}
	r.watch = &expiryWatch{e: e, run: r}

	// Baselines of the webhook processes before any load.
	ctx := context.Background()
	baseGoroutines := make([]float64, len(e.webhooks))
	for i, wh := range e.webhooks {
		m, err := processMetrics(ctx, wh)
		if err != nil {
			t.Fatal(err)
		}
		baseGoroutines[i] = m["go_goroutines"]
	}

	var clients []*client
	var workers sync.WaitGroup
	for i := range roomyClients + tightClients {
		c, err := newClient(e)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		p, kind := roomy, "roomy"
		if i >= roomyClients {
			p, kind = tight, "tight"
		}
		workers.Add(1)
		go func() {
			defer workers.Done()
			r.worker(c, p, kind)
		}()
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		r.watch.loop(watchCtx)
	}()

	began := time.Now()
	steps := e.schedule()
	var scheduleErr error
	for round := range rounds(t) {
		// A quiet start of each round gives the figures their baseline.
		sleep(3 * time.Second)
		if scheduleErr = runSchedule(ctx, r.tl, steps, r.book.Inject); scheduleErr != nil {
			break
		}
		t.Logf("round %d done after %s: %d cycles", round+1, time.Since(began).Round(time.Second), r.cycles.Load())
	}
	r.stopping.Store(true)
	stopped := make(chan struct{})
	go func() { workers.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Fatalf("clients did not finish within 30s of the end of the run: a call hangs\n%s", b.String())
	}
	loadTime := time.Since(began)
	if scheduleErr != nil {
		t.Fatal(scheduleErr)
	}

	// Every slot whose holder vanished is free by the end of its TTL.
	waitFor(t, startupTimeout+5*time.Second, "every vanished holder's slot seen free", func() (bool, string) {
		return r.watch.left() == 0, fmt.Sprintf("%d pending", r.watch.left())
	})
	stopWatch()
	<-watchDone

	// After the last request, every key expires within the longest TTL: no
	// slot is leaked by a killed webhook, an undone claim or a repair.
	lastAt := time.Unix(0, r.last.Load())
	waitFor(t, time.Until(lastAt.Add(startupTimeout+3*time.Second)), "every slot free on every node", func() (bool, string) {
		var left []string
		for _, p := range []pod{roomy, tight} {
			st, err := e.status(ctx, p.name(), p.size)
			if err != nil {
				return false, err.Error()
			}
			if len(st.Failures) > 0 {
				return false, fmt.Sprintf("%d nodes did not answer", len(st.Failures))
			}
			left = append(left, leftovers(st)...)
		}
		return len(left) == 0, strings.Join(left, "; ")
	})

	violations, err := r.rec.Check()
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range violations {
		if i < 20 {
			t.Errorf("over-admission: %s", v)
		}
	}

	for _, c := range clients {
		c.close()
	}
	r.checkConnections(t, baseGoroutines)

	// A clean stop after the run: exit 0 (a race found in the webhook would
	// exit 66), and no Redis password in anything either process wrote.
	for i, wh := range e.webhooks {
		if code, err := wh.Stop(); code != 0 || err != nil {
			t.Errorf("webhook %d: exit %d after SIGTERM (%v)", i, code, err)
		}
		if strings.Contains(wh.Logs(), e.redis.Password) {
			t.Errorf("webhook %d logged the Redis password", i)
		}
	}
	_ = e.proxy.Close()
	// Only the Redis nodes' waiters (one goroutine each) may remain.
	waitFor(t, 10*time.Second, "test-process goroutines back to the count before the run", func() (bool, string) {
		n := runtime.NumGoroutine()
		if n <= goroutinesBefore+len(e.redis.Nodes) {
			return true, ""
		}
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		return false, fmt.Sprintf("%d goroutines, %d before the run:\n%s", n, goroutinesBefore, b.String())
	})

	r.report(t, loadTime, len(violations))
	for _, row := range r.book.Rows() {
		if n := row.Outcomes[outcomeStarved]; n > maxStarvedFew && float64(n) > maxStarvedShare*float64(row.Count) {
			t.Errorf("%s under %q: %d of %d answers were no-quorum with healthy nodes timing out, above %d and %.0f%%: more than a busy machine explains",
				row.Op, row.Fault, n, row.Count, maxStarvedFew, 100*maxStarvedShare)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, f := range r.failures {
		if i == 30 {
			t.Errorf("... and %d more failures", len(r.failures)-30)
			break
		}
		t.Error(f)
	}
	// A floor that catches a harness that stopped cycling (every admission
	// failing, clients stuck); a round on two shared cores runs about 2200.
	if r.cycles.Load() < minCycles*int64(rounds(t)) {
		t.Errorf("only %d cycles ran in %d round(s), fewer than %d per round", r.cycles.Load(), rounds(t), minCycles)
	}
}

// checkConnections compares what each webhook holds with what the Redis
// nodes and the proxy see, once the load is over: every connection a node
// serves belongs to a webhook's pool (nothing half-closed is left), each
// pool holds at most its idle limit, and each webhook runs no more
// goroutines than at start plus one per client connection still open.
func (r *run) checkConnections(t *testing.T, baseGoroutines []float64) {
	t.Helper()
	e := r.e
	ctx := context.Background()
	ports := []uint16{uint16(e.redis.Nodes[0].Port), uint16(e.redis.Nodes[1].Port), port(e.proxy.Addr())}
	// The observer's own pool would count on the nodes too.
	_ = e.inspect.Close()
	waitFor(t, 10*time.Second, "connections agree between webhooks, proxy and Redis nodes", func() (bool, string) {
		perNode := make([]int, 3)
		for i, wh := range e.webhooks {
			conns, err := sockets.TCP(wh.Pid())
			if err != nil {
				return false, err.Error()
			}
			count := sockets.Count(conns)
			for n, port := range ports {
				if count[port] > maxIdle {
					return false, fmt.Sprintf("webhook %d holds %d connections to node %d, above the pool's idle limit %d", i, count[port], n, maxIdle)
				}
				perNode[n] += count[port]
			}
		}
		seen := make([]int, 3)
		for n := range 3 {
			c, err := clientCount(ctx, e.redis.Nodes[n])
			if err != nil {
				return false, err.Error()
			}
			seen[n] = c
		}
		state := fmt.Sprintf("webhooks hold %v connections to the nodes, the nodes serve %v, the proxy forwards %d", perNode, seen, e.proxy.Active())
		return perNode[0] == seen[0] && perNode[1] == seen[1] && perNode[2] == e.proxy.Active() && e.proxy.Active() == seen[2], state
	})
	for i, wh := range e.webhooks {
		waitFor(t, 10*time.Second, fmt.Sprintf("webhook %d goroutines at most its start count plus one per open client connection", i), func() (bool, string) {
			m, err := processMetrics(ctx, wh)
			if err != nil {
				return false, err.Error()
			}
			conns, err := sockets.TCP(wh.Pid())
			if err != nil {
				return false, err.Error()
			}
			clientConns := 0
			listen := port(wh.Addr())
			for _, c := range conns {
				if c.State == sockets.Established && c.Local.Port() == listen {
					clientConns++
				}
			}
			limit := baseGoroutines[i] + float64(clientConns) + 5
			return m["go_goroutines"] <= limit, fmt.Sprintf("%v goroutines, %v at start, %d client connections", m["go_goroutines"], baseGoroutines[i], clientConns)
		})
	}
}

// port is the port of a host:port.
func port(addr string) uint16 {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return uint16(n)
}

// report logs the figures, and writes them to PMPH_RELIABILITY_REPORT when
// set (docs/reliability.md quotes that file).
func (r *run) report(t *testing.T, loadTime time.Duration, violations int) {
	r.watch.mu.Lock()
	freed := append([]time.Duration(nil), r.watch.freed...)
	stragglers := r.watch.stragglers
	r.watch.mu.Unlock()
	slices.Sort(freed)
	injected, kinds := 0, []string{}
	for _, f := range faultOrder {
		if n := r.book.Injected(f); n > 0 && f != faultVanished {
			injected += n
			kinds = append(kinds, fmt.Sprintf("%s ×%d", f, n))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Run: %s of load, %d round(s), %d clients (%d on %q of size %d, %d on %q of size %d), GOMAXPROCS %d, race detector %v.\n\n",
		loadTime.Round(time.Second), rounds(t), roomyClients+tightClients, roomyClients, roomy.name(), roomy.size,
		tightClients, tight.name(), tight.size, runtime.GOMAXPROCS(0), raceEnabled)
	fmt.Fprintf(&b, "- cycles (admitted, held, renewed, released): %d\n", r.cycles.Load())
	fmt.Fprintf(&b, "- faults injected: %d (%s), and %d sidecars vanished\n", injected, strings.Join(kinds, ", "), r.book.Injected(faultVanished))
	fmt.Fprintf(&b, "- over-admissions: %d (holder intervals checked: %d)\n", violations, r.rec.Len())
	fmt.Fprintf(&b, "- requests failed over to the other webhook: %d\n", r.failovers.Load())
	fmt.Fprintf(&b, "- vanished sidecars: %d; slot seen free after vanishing: p50 %s, max %s (lease TTL %s, startup timeout %s); single-node stragglers after the TTL: %d\n\n",
		len(freed), figures.Percentile(freed, 50).Round(time.Millisecond), figures.Percentile(freed, 100).Round(time.Millisecond),
		leaseTTL, startupTimeout, stragglers)
	b.WriteString(r.book.Markdown(faultOrder...))
	t.Log("\n" + b.String())
	if path := os.Getenv("PMPH_RELIABILITY_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Errorf("writing the report: %v", err)
		}
	}
}
