package node

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/cri"
)

const (
	appContainer = "app"
	// recordPeriod is how often the CRI is listed for new containers; the
	// times measured come from the runtime and do not depend on it.
	recordPeriod = 250 * time.Millisecond
	// handoverDrain is how long the apps of the handover test keep running
	// after SIGTERM: long enough that a slot given back at the signal would
	// let the next app start while this one still runs.
	handoverDrain = 20 * time.Second
)

// TestAppConcurrencyNative measures, from the container runtime's own start
// and finish times, how many app containers of a semaphore of size 1 run at
// once through a rollout and a scale-down of apps that drain for 20 s, and
// that a pod Pending past its startup timeout starts its app only once it
// holds a slot. With a native sidecar neither may ever exceed the size.
func TestAppConcurrencyNative(t *testing.T) {
	checkAppConcurrency(t, true)
}

// TestAppConcurrencyRegular measures the same with the sidecar as a regular
// container, where the docs promise less (docs/sidecar.md, injection modes):
// the app is not held back at start, and the slot is kept until the app
// stops answering its metrics endpoint. The second promise does not hold on
// the node yet (docs/reliability.md): its check is a known bug.
func TestAppConcurrencyRegular(t *testing.T) {
	checkAppConcurrency(t, false)
}

func checkAppConcurrency(t *testing.T, native bool) {
	c := sharedCluster(t)
	mode, set := "native", []string(nil)
	if !native {
		mode, set = "regular", []string{"sidecar.native=false"}
	}
	r := c.installChart(t, installOptions{Name: "conc-" + mode, CIValues: []string{"no-persistence-values.yaml"}, Set: set})
	r.waitReady(t, true)
	t.Run("rollout and scale-down", func(t *testing.T) { checkHandovers(t, c, "handover-"+mode, native) })
	t.Run("pending past its startup timeout", func(t *testing.T) { checkLateStart(t, c, "late-"+mode, native) })
}

// checkHandovers runs a Deployment of one app on a semaphore of size 1,
// restarts it (the old pod terminates while the new one waits for the
// slot), then scales it to zero while a second Deployment on the same
// semaphore waits for the slot.
func checkHandovers(t *testing.T, c *cluster, ns string, native bool) {
	c.appNamespace(t, ns)
	rec := c.recordContainers(t, ns)
	drain := handoverDrain
	noSurge, oneUnavailable := intstr.FromInt32(0), intstr.FromInt32(1)
	roll := workload{Name: "roll", Namespace: ns, Key: "one", Size: 1, Replicas: 1, Drain: drain,
		Strategy: &appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
			RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: &noSurge, MaxUnavailable: &oneUnavailable}}}
	roll.apply(t, c)
	var first cri.Container
	c.waitContainers(t, rec, "the first app running", func(cs []cri.Container) (bool, string) {
		apps := started(cs, "roll-")
		if len(apps) > 0 {
			first = apps[0]
		}
		return len(apps) == 1, describe(cs)
	})
	c.kubectl(t, "-n", ns, "rollout", "restart", "deployment/roll")
	c.waitContainers(t, rec, "the rollout's app running after the first exited", func(cs []cri.Container) (bool, string) {
		next := slices.ContainsFunc(started(cs, "roll-"), func(ct cri.Container) bool { return ct.PodName != first.PodName })
		return next && exited(cs, first.ID), describe(cs)
	})

	standby := roll
	standby.Name, standby.Strategy = "standby", nil
	base, err := roll.denials(t.Context(), c, roll.fullDenial())
	if err != nil {
		t.Fatal(err)
	}
	standby.apply(t, c)
	c.timed(t, "the standby Deployment denied while the semaphore is full", func(ctx context.Context) error {
		return c.poll(ctx, func() (bool, string, error) {
			n, err := roll.denials(ctx, c, roll.fullDenial())
			return err == nil && n > base, fmt.Sprintf("%d full denials, %d before the standby Deployment (%v)", n, base, err), nil
		})
	})
	c.kubectl(t, "-n", ns, "scale", "deployment/roll", "--replicas=0")
	c.waitContainers(t, rec, "the standby's app running after every roll app exited", func(cs []cri.Container) (bool, string) {
		rolls := started(cs, "roll-")
		allExited := !slices.ContainsFunc(rolls, func(ct cri.Container) bool { return !ct.Exited() })
		return len(started(cs, "standby-")) == 1 && allExited, describe(cs)
	})
	conc := reportConcurrency(t, rec, 1, native, fmt.Sprintf("apps draining %s, a rollout restart and a scale-down", drain))
	// Regular mode holds here too (docs/sidecar.md): the sidecar keeps the
	// slot until the app stops answering its metrics endpoint, which this
	// app does only as it exits.
	errorIfOver(t, conc, 1)
}

// checkLateStart keeps a pod Pending (a scheduling gate) past its startup
// timeout, lets another pod take the slot meanwhile, then lets the first
// pod schedule: its app must start only after the other app exited.
func checkLateStart(t *testing.T, c *cluster, ns string, native bool) {
	c.appNamespace(t, ns)
	rec := c.recordContainers(t, ns)
	late := workload{Name: "late", Namespace: ns, Key: "gate", Size: 1, Replicas: 1, Drain: 5 * time.Second,
		StartupTimeout: "3s", SchedulingGate: "example.com/hold"}
	late.apply(t, c)
	lateName := c.waitPod(t, ns, "late")
	holder := late
	holder.Name, holder.StartupTimeout, holder.SchedulingGate = "holder", "", ""
	holder.apply(t, c)
	// The holder is admitted only once the late pod's startup lease lapsed:
	// from then on the late pod is Pending past its startup timeout.
	c.waitContainers(t, rec, "the holder's app running while the late pod is Pending", func(cs []cri.Container) (bool, string) {
		return len(started(cs, "holder-")) == 1, describe(cs)
	})
	if cs := of(rec, t, lateName); len(cs) != 0 {
		t.Fatalf("the gated pod %s has containers before its gate was removed: %s", lateName, describe(cs))
	}
	c.kubectl(t, "-n", ns, "patch", "pod", lateName, "--type=json", "-p", `[{"op":"remove","path":"/spec/schedulingGates"}]`)
	if native {
		c.timed(t, "the late pod's sidecar held at its start gate", func(ctx context.Context) error {
			return c.poll(ctx, func() (bool, string, error) {
				n, err := c.startupProbeFailures(ctx, ns, lateName)
				return err == nil && n >= 3, fmt.Sprintf("%d failed startup probes of %s (%v)", n, lateName, err), nil
			})
		})
		if apps := started(of(rec, t, lateName), ""); len(apps) != 0 {
			t.Errorf("the late pod's app started while the holder still held the only slot: %s", describe(apps))
		}
	} else {
		c.waitContainers(t, rec, "the late pod's app running (regular mode does not hold it back)", func(cs []cri.Container) (bool, string) {
			return len(started(cs, lateName)) == 1, describe(cs)
		})
	}
	c.kubectl(t, "-n", ns, "scale", "deployment/holder", "--replicas=0")
	c.waitContainers(t, rec, "the late pod's app running and the holder's exited", func(cs []cri.Container) (bool, string) {
		holders := started(cs, "holder-")
		return len(started(cs, lateName)) == 1 && len(holders) == 1 && holders[0].Exited(), describe(cs)
	})
	cs, err := rec.Containers()
	if err != nil {
		t.Error(err)
	}
	lateApp, holderApp := started(cs, lateName)[0], started(cs, "holder-")[0]
	gap := lateApp.StartedAt.Sub(holderApp.FinishedAt)
	t.Logf("%s mode: the late pod's app started %s after the holder's app finished (CRI StartedAt - FinishedAt; negative: they ran together)", modeName(native), gap)
	for _, ct := range cs {
		if ct.PodName == holderApp.PodName && ct.Name == admission.ContainerName {
			t.Logf("%s mode: the late pod's app started %s after the holder's sidecar finished (it gives the slot back just before it exits)",
				modeName(native), lateApp.StartedAt.Sub(ct.FinishedAt))
		}
	}
	if native && gap < 0 {
		t.Errorf("the late pod's app started at %s, before the holder's app finished at %s: both ran on a semaphore of size 1",
			lateApp.StartedAt.Format(time.RFC3339Nano), holderApp.FinishedAt.Format(time.RFC3339Nano))
	}
	// Regular mode does not hold an app back (docs/sidecar.md): only
	// measured there.
	if conc := reportConcurrency(t, rec, 1, native, "a pod Pending past its startup timeout"); native {
		errorIfOver(t, conc, 1)
	}
}

// reportConcurrency logs the most app containers that ran at once, from
// the recorded [StartedAt, FinishedAt) intervals, and each handover: how
// long after the previous app finished the next one started.
func reportConcurrency(t *testing.T, rec *cri.Recorder, size int, native bool, what string) cri.Concurrency {
	t.Helper()
	apps, conc := appConcurrency(t, rec, size)
	var handovers []string
	for i := 1; i < len(apps); i++ {
		prev := apps[i-1]
		gap := "still running"
		if prev.Exited() {
			gap = apps[i].StartedAt.Sub(prev.FinishedAt).Round(time.Millisecond).String()
		}
		handovers = append(handovers, fmt.Sprintf("%s -> %s: %s", prev.PodName, apps[i].PodName, gap))
	}
	t.Logf("%s mode, %s, semaphore of size %d: at most %d app containers ran at once (first at %s: %v), more than %d for %s in total; handovers (next StartedAt - previous FinishedAt): %s",
		modeName(native), what, size, conc.Max, conc.MaxAt.Format(time.RFC3339Nano), conc.AtMax, size, conc.Over, strings.Join(handovers, "; "))
	return conc
}

// appConcurrency sweeps the recorded app containers' [StartedAt,
// FinishedAt) intervals, in start order, against size; a container whose
// finish time the recorder missed fails t.
func appConcurrency(t *testing.T, rec *cri.Recorder, size int) ([]cri.Container, cri.Concurrency) {
	t.Helper()
	cs, err := rec.Containers()
	if err != nil {
		t.Error(err)
	}
	apps := started(cs, "")
	return apps, cri.Overlap(cri.Running(apps), size, time.Now())
}

// errorIfOver fails t when more than size app containers ran at once.
func errorIfOver(t *testing.T, conc cri.Concurrency, size int) {
	t.Helper()
	if conc.Max > size {
		t.Errorf("%d app containers ran at once on a semaphore of size %d, from %s (%v), for %s in total",
			conc.Max, size, conc.MaxAt.Format(time.RFC3339Nano), conc.AtMax, conc.Over)
	}
}

func modeName(native bool) string {
	if native {
		return "native"
	}
	return "regular"
}

// recordContainers records the containers of a namespace from the node's
// CRI until t ends.
func (c *cluster) recordContainers(t *testing.T, ns string) *cri.Recorder {
	t.Helper()
	client, err := cri.Dial(c.Node.CRISocket())
	if err != nil {
		t.Fatal(err)
	}
	rec := client.Record(map[string]string{cri.LabelPodNamespace: ns}, recordPeriod)
	t.Cleanup(func() {
		rec.Stop()
		client.Close()
	})
	return rec
}

// waitContainers waits until done holds for the recorded containers.
func (c *cluster) waitContainers(t *testing.T, rec *cri.Recorder, what string, done func([]cri.Container) (bool, string)) {
	t.Helper()
	c.timed(t, what, func(ctx context.Context) error {
		return c.poll(ctx, func() (bool, string, error) {
			cs, err := rec.Containers()
			if err != nil {
				return false, "", err
			}
			ok, state := done(cs)
			return ok, state, nil
		})
	})
	if t.Failed() {
		t.FailNow()
	}
}

// waitPod waits for the one pod of a Deployment and returns its name.
func (c *cluster) waitPod(t *testing.T, ns, app string) string {
	t.Helper()
	var name string
	c.timed(t, "the pod of "+app+" created", func(ctx context.Context) error {
		return c.poll(ctx, func() (bool, string, error) {
			out, err := c.Node.Kubectl(ctx, "-n", ns, "get", "pods", "-l", "app="+app, "-o", "jsonpath={.items[*].metadata.name}")
			names := strings.Fields(string(out))
			if err == nil && len(names) == 1 {
				name = names[0]
			}
			return name != "", fmt.Sprintf("pods %v (%v)", names, err), nil
		})
	})
	if t.Failed() {
		t.FailNow()
	}
	return name
}

// startupProbeFailures counts the kubelet's events for failed startup
// probes of a pod.
func (c *cluster) startupProbeFailures(ctx context.Context, ns, pod string) (int, error) {
	return c.countEvents(ctx, ns, "reason=Unhealthy,involvedObject.name="+pod,
		func(message string) bool { return strings.HasPrefix(message, "Startup probe failed") })
}

// of returns the recorded containers of one pod.
func of(rec *cri.Recorder, t *testing.T, pod string) []cri.Container {
	t.Helper()
	cs, err := rec.Containers()
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(cs, func(ct cri.Container) bool { return ct.PodName != pod })
}

// started returns the app containers that started, of pods whose name
// begins with podPrefix, in start order.
func started(cs []cri.Container, podPrefix string) []cri.Container {
	var out []cri.Container
	for _, ct := range cs {
		if ct.Name == appContainer && !ct.StartedAt.IsZero() && strings.HasPrefix(ct.PodName, podPrefix) {
			out = append(out, ct)
		}
	}
	return out
}

func exited(cs []cri.Container, id string) bool {
	return slices.ContainsFunc(cs, func(ct cri.Container) bool { return ct.ID == id && ct.Exited() })
}

func describe(cs []cri.Container) string {
	var b strings.Builder
	for _, ct := range cs {
		fmt.Fprintf(&b, "%s/%s %s started %s finished %s; ", ct.PodName, ct.Name, ct.State,
			stamp(ct.StartedAt), stamp(ct.FinishedAt))
	}
	return b.String()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format("15:04:05.000")
}
