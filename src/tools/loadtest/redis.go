package loadtest

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// RedisConfig names the webhook's Redis nodes, for counting the commands
// an admission costs and for reading the semaphores back after the run.
type RedisConfig struct {
	Addrs    []string
	Password string
}

// RedisDelta is what the nodes ran during the run.
type RedisDelta struct {
	// ScriptCalls counts EVALSHA and EVAL calls per node that ran a
	// script (not those answered NOSCRIPT).
	ScriptCalls []int64 `json:"script_calls"`
	// Commands counts every command per node (the tool's own INFO calls
	// excluded).
	Commands []int64 `json:"commands"`
	// ScriptCallsPerReview is script calls per node per semaphore review
	// (admitted or denied), and ScriptCallsPerReviewNetOfReleases the same
	// without the one call per node each release through the lease API
	// costs.
	ScriptCallsPerReview              float64 `json:"script_calls_per_review_per_node,omitempty"`
	ScriptCallsPerReviewNetOfReleases float64 `json:"script_calls_per_review_per_node_net_of_releases,omitempty"`
}

func (c *RedisConfig) dial(addr string) (redis.Conn, error) {
	return redis.Dial("tcp", addr, redis.DialPassword(c.Password),
		redis.DialConnectTimeout(2*time.Second), redis.DialReadTimeout(2*time.Second), redis.DialWriteTimeout(2*time.Second))
}

// scriptCalls reads INFO commandstats of every node: keys are
// "<addr> <command>" for calls and "<addr> <command>!" for failed calls.
func (c *RedisConfig) scriptCalls(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	for _, addr := range c.Addrs {
		conn, err := c.dial(addr)
		if err != nil {
			return nil, fmt.Errorf("reading commandstats of %s: %w", addr, err)
		}
		info, err := redis.String(redis.DoContext(conn, ctx, "INFO", "commandstats"))
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("reading commandstats of %s: %w", addr, err)
		}
		for cmd, st := range ParseCommandStats(info) {
			out[addr+" "+cmd] = st.Calls
			out[addr+" "+cmd+"!"] = st.Failed
		}
	}
	return out, nil
}

// CommandStat is one command's line of INFO commandstats. Calls include
// failed calls (an EVALSHA answered NOSCRIPT is one).
type CommandStat struct {
	Calls, Failed int64
}

// ParseCommandStats reads the calls of every command from INFO
// commandstats.
func ParseCommandStats(info string) map[string]CommandStat {
	out := map[string]CommandStat{}
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
		if !ok {
			continue
		}
		name, stats, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		var st CommandStat
		for _, kv := range strings.Split(stats, ",") {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "calls":
				st.Calls = n
			case "failed_calls":
				st.Failed = n
			}
		}
		out[name] = st
	}
	return out
}

func newRedisDelta(before, after map[string]int64, res *Result, sem bool) *RedisDelta {
	addrs := map[string]bool{}
	for k := range after {
		addr, _, _ := strings.Cut(k, " ")
		addrs[addr] = true
	}
	ordered := make([]string, 0, len(addrs))
	for a := range addrs {
		ordered = append(ordered, a)
	}
	sort.Strings(ordered)
	d := &RedisDelta{}
	var scripts int64
	for _, a := range ordered {
		var s, all int64
		for k, v := range after {
			addr, cmd, _ := strings.Cut(k, " ")
			if addr != a || strings.HasSuffix(cmd, "!") {
				continue
			}
			delta := v - before[k]
			if cmd == "info" {
				continue
			}
			all += delta
			if cmd == "evalsha" || cmd == "eval" {
				// An EVALSHA answered NOSCRIPT (the first use of a script
				// on a node) is followed by an EVAL: one script, two calls.
				s += delta - (after[k+"!"] - before[k+"!"])
			}
		}
		d.ScriptCalls = append(d.ScriptCalls, s)
		d.Commands = append(d.Commands, all)
		scripts += s
	}
	reviews := res.Allowed + res.Denied
	if sem && reviews > 0 && len(ordered) > 0 {
		perNode := float64(scripts) / float64(len(ordered))
		d.ScriptCallsPerReview = round3(perNode / float64(reviews))
		if res.SemaphoreCheck != nil {
			d.ScriptCallsPerReviewNetOfReleases = round3((perNode - float64(res.SemaphoreCheck.Released+res.SemaphoreCheck.ReleaseNotHeld)) / float64(reviews))
		}
	}
	return d
}

// inspect reads the run's semaphores back from the nodes: each must hold
// at most its size, and a number of slots between what the tool knows to
// be held and what may be.
func (r *runner) inspect(ctx context.Context, chk *SemaphoreCheck) {
	client, err := semaphore.New(semaphore.Config{Addrs: r.cfg.Redis.Addrs, Password: r.cfg.Redis.Password, NodeTimeout: 2 * time.Second})
	if err != nil {
		chk.InspectErrors++
		fmt.Fprintf(r.cfg.Log, "loadtest: inspecting the semaphores: %v\n", err)
		return
	}
	defer client.Close()
	keys := make([]string, 0, len(chk.Held))
	for k := range chk.Held {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if limit := r.cfg.InspectMax; limit > 0 && len(keys) > limit {
		// An even sample over the run.
		step := float64(len(keys)) / float64(limit)
		sample := make([]string, 0, limit)
		for i := range limit {
			sample = append(sample, keys[int(float64(i)*step)])
		}
		keys = sample
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		next = make(chan string)
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
				st, err := client.Inspect(ictx, leaseapi.SemaphoreName(r.cfg.Vars.Namespace, k), chk.Sizes[k])
				cancel()
				mu.Lock()
				chk.Inspected++
				switch held := st.Held(); {
				case err != nil:
					chk.InspectErrors++
					fmt.Fprintf(r.cfg.Log, "loadtest: inspecting %s: %v\n", k, err)
				case held > chk.Sizes[k]:
					chk.InspectOverSize++
					fmt.Fprintf(r.cfg.Log, "loadtest: semaphore %s holds %d slots, its size is %d\n", k, held, chk.Sizes[k])
				case held < chk.Held[k] || held > chk.MayHold[k]:
					chk.InspectMismatch++
					if chk.InspectMismatch <= maxExamples {
						fmt.Fprintf(r.cfg.Log, "loadtest: semaphore %s holds %d slots on a quorum; the run left %d to %d held\n",
							k, held, chk.Held[k], chk.MayHold[k])
					}
				}
				mu.Unlock()
			}
		}()
	}
	for _, k := range keys {
		next <- k
	}
	close(next)
	wg.Wait()
}
