// Package reconciler gives back the semaphore slots that no pod holds: the
// webhook takes a slot while the API server admits a pod, and every later
// step that rejects the pod (Pod Security admission, a quota, a validating
// webhook or policy, a name that exists) or a deletion before the sidecar
// starts would otherwise leave the slot held until its startup timeout.
//
// It watches, through a client-go informer, only the pods that carry the
// holder label, and compares them with the leases that have a record in
// Redis. One replica acts at a time, through a coordination.k8s.io Lease;
// releases are compare-and-delete, so two reconcilers, or one that lost its
// leadership halfway, never release anything twice.
package reconciler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// Defaults.
const (
	// DefaultWindow is longer than the API server's 60 s request timeout,
	// so that a pod still on its way through admission is never released.
	DefaultWindow = 90 * time.Second
	// DefaultInterval is the time between two sweeps when nothing happens.
	DefaultInterval = 15 * time.Second
	// DefaultTerminalGrace lets the sidecar of a finished pod release its
	// slot itself before the reconciler does.
	DefaultTerminalGrace = 30 * time.Second
	// minSweepSpacing keeps a burst of pod deletions from turning into a
	// burst of Redis scans.
	minSweepSpacing = time.Second
	// sweepTimeout bounds one sweep.
	sweepTimeout = time.Minute
	holderIndex  = "holder"
)

// Leases is what the reconciler needs of the semaphore client.
type Leases interface {
	RecordedLeases(ctx context.Context) ([]semaphore.HeldLease, error)
	Release(ctx context.Context, lease semaphore.Lease) (bool, error)
}

// Config wires a Reconciler.
type Config struct {
	Client kubernetes.Interface
	Leases Leases
	// HolderLabel is the label the webhook puts on pods that hold a slot.
	HolderLabel string
	// Window is how long after its admission a lease may go without a pod.
	Window        time.Duration
	Interval      time.Duration
	TerminalGrace time.Duration
	Election      Election
	Logger        zerolog.Logger
	Metrics       *Metrics
}

// Reconciler watches the labelled pods and, while it leads, releases the
// leases whose pod is gone, finished, or never came.
type Reconciler struct {
	cfg      Config
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	kick     chan struct{}

	mu sync.Mutex
	// deleted holds the pods seen deleted, by holder, until their lease is
	// gone from Redis: the release happens at once instead of after the
	// window, and the Event goes on the pod.
	deleted map[string]*corev1.Pod
	// terminalSince is when a pod was first seen Succeeded or Failed.
	terminalSince map[string]time.Time
	// unconfirmed holds, by holder, the releases that answered an error: a
	// node that timed out may still have deleted the lease. The next sweep
	// that no longer finds the lease records the release.
	unconfirmed map[string]pendingRelease
}

type pendingRelease struct {
	lease semaphore.HeldLease
	why   cause
	pod   *corev1.Pod
}

// New checks cfg and builds the informer; Run starts it.
func New(cfg Config) (*Reconciler, error) {
	if cfg.Client == nil || cfg.Leases == nil {
		return nil, errors.New("reconciler: a Kubernetes client and a semaphore client are required")
	}
	if cfg.HolderLabel == "" {
		return nil, errors.New("reconciler: the holder label is required")
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.TerminalGrace <= 0 {
		cfg.TerminalGrace = DefaultTerminalGrace
	}
	if err := cfg.Election.complete(); err != nil {
		return nil, err
	}
	r := &Reconciler{
		cfg: cfg, kick: make(chan struct{}, 1),
		deleted: map[string]*corev1.Pod{}, terminalSince: map[string]time.Time{},
		unconfirmed: map[string]pendingRelease{},
	}
	// The label selector keeps the watch to the pods that hold a slot.
	r.factory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = cfg.HolderLabel }))
	r.informer = r.factory.Core().V1().Pods().Informer()
	if err := r.informer.AddIndexers(cache.Indexers{holderIndex: r.holderOf}); err != nil {
		return nil, fmt.Errorf("reconciler: adding the holder index: %w", err)
	}
	if _, err := r.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) {
			if pod, ok := obj.(*corev1.Pod); ok && terminal(pod) {
				r.poke()
			}
		},
		DeleteFunc: r.onDelete,
	}); err != nil {
		return nil, fmt.Errorf("reconciler: adding the pod handler: %w", err)
	}
	return r, nil
}

func (r *Reconciler) holderOf(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	if h := pod.Labels[r.cfg.HolderLabel]; h != "" {
		return []string{h}, nil
	}
	return nil, nil
}

func (r *Reconciler) onDelete(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Labels[r.cfg.HolderLabel] == "" {
		return
	}
	r.mu.Lock()
	r.deleted[pod.Labels[r.cfg.HolderLabel]] = pod
	r.mu.Unlock()
	r.poke()
}

func (r *Reconciler) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run starts the informer, waits for its first list, then takes part in the
// leader election until ctx ends; only the leader sweeps.
func (r *Reconciler) Run(ctx context.Context) error {
	r.factory.Start(ctx.Done())
	defer r.factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), r.informer.HasSynced) {
		return fmt.Errorf("reconciler: the pod cache did not sync: %w", ctx.Err())
	}
	r.cfg.Logger.Info().Str("label", r.cfg.HolderLabel).Int("pods", len(r.informer.GetStore().ListKeys())).
		Msg("the pod cache of the reconciler is synced")
	return r.elect(ctx, r.lead)
}

// Synced reports whether the pod cache has its first list.
func (r *Reconciler) Synced() bool { return r.informer.HasSynced() }

// lead sweeps while this replica leads: on a timer, and soon after a
// labelled pod was deleted or finished.
func (r *Reconciler) lead(ctx context.Context) {
	r.cfg.Metrics.setLeader(true)
	defer r.cfg.Metrics.setLeader(false)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.kick:
			// Wait for the spacing, then sweep; the timer restarts after.
			if !sleep(ctx, minSweepSpacing) {
				return
			}
		}
		r.sweep(ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(r.cfg.Interval)
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// cause is why a lease is released, the label of the releases metric.
type cause string

const (
	causeNoPod       cause = "no_pod"
	causePodDeleted  cause = "pod_deleted"
	causePodTerminal cause = "pod_terminal"
)

// sweep compares the leases that have a record with the labelled pods and
// releases those no pod holds any more.
func (r *Reconciler) sweep(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, sweepTimeout)
	defer cancel()
	leases, err := r.cfg.Leases.RecordedLeases(ctx)
	if err != nil {
		r.cfg.Metrics.sweep(false)
		r.cfg.Logger.Warn().Err(err).Msg("listing the leases failed; the next sweep retries")
		return
	}
	r.cfg.Metrics.sweep(true)
	now := time.Now()
	seen := make(map[string]bool, len(leases))
	for _, l := range leases {
		seen[l.Holder] = true
	}
	r.confirm(ctx, seen, now)
	for _, l := range leases {
		if why, pod := r.decide(l, now); why != "" {
			r.release(ctx, l, why, pod, now)
		}
	}
	r.forget(seen)
}

// confirm records the releases that answered an error and whose lease is
// gone now; those still listed are decided again.
func (r *Reconciler) confirm(ctx context.Context, listed map[string]bool, now time.Time) {
	for holder, p := range r.unconfirmed {
		delete(r.unconfirmed, holder)
		if !listed[holder] {
			r.released(ctx, p.lease, p.why, p.pod, now)
		}
	}
}

// decide answers the cause to release a lease for, and the pod it concerns
// when known; "" keeps the lease.
func (r *Reconciler) decide(l semaphore.HeldLease, now time.Time) (cause, *corev1.Pod) {
	if l.Record == nil {
		// Granted by the previous release: only its holder may end it.
		return "", nil
	}
	if pod := r.podOf(l); pod != nil {
		if !terminal(pod) {
			return "", nil
		}
		r.mu.Lock()
		since, ok := r.terminalSince[l.Holder]
		if !ok {
			since = now
			r.terminalSince[l.Holder] = now
		}
		r.mu.Unlock()
		if now.Sub(since) >= r.cfg.TerminalGrace {
			return causePodTerminal, pod
		}
		return "", nil
	}
	r.mu.Lock()
	gone := r.deleted[l.Holder]
	r.mu.Unlock()
	if gone != nil && owns(gone, l) {
		return causePodDeleted, gone
	}
	if !l.Record.Granted.IsZero() && now.Sub(l.Record.Granted) >= r.cfg.Window {
		return causeNoPod, nil
	}
	return "", nil
}

// podOf answers the live pod holding the lease, from the cache.
func (r *Reconciler) podOf(l semaphore.HeldLease) *corev1.Pod {
	objs, err := r.informer.GetIndexer().ByIndex(holderIndex, l.Holder)
	if err != nil {
		return nil
	}
	for _, obj := range objs {
		if pod, ok := obj.(*corev1.Pod); ok && owns(pod, l) {
			return pod
		}
	}
	return nil
}

// owns reports whether the pod is in the semaphore's namespace: a holder
// label copied onto a pod elsewhere must not keep a slot held.
func owns(pod *corev1.Pod, l semaphore.HeldLease) bool {
	return strings.HasPrefix(l.Name, pod.Namespace+"/")
}

func terminal(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

// forget drops what is kept about holders whose lease is gone.
func (r *Reconciler) forget(held map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for h := range r.deleted {
		if !held[h] {
			delete(r.deleted, h)
		}
	}
	for h := range r.terminalSince {
		if !held[h] {
			delete(r.terminalSince, h)
		}
	}
}

func (r *Reconciler) release(ctx context.Context, l semaphore.HeldLease, why cause, pod *corev1.Pod, now time.Time) {
	released, err := r.cfg.Leases.Release(ctx, l.Lease())
	age := now.Sub(l.Record.Granted)
	log := r.cfg.Logger.Debug()
	if err != nil {
		log = r.cfg.Logger.Warn().Err(err)
	}
	log = log.Str("semaphore", l.Name).Int("slot", l.Slot).Str("holder_prefix", l.Holder[:8]).
		Str("cause", string(why)).Str("pod", l.Record.Pod).Str("owner", l.Record.Owner).
		Dur("age", age).Bool("released", released)
	switch {
	case err != nil:
		r.unconfirmed[l.Holder] = pendingRelease{lease: l, why: why, pod: pod}
		log.Msg("releasing a lease no pod holds failed; the next sweep checks whether it is gone, or retries")
		return
	case !released:
		// Another reconciler or the holder itself was first.
		log.Msg("the lease was already released")
		return
	}
	r.released(ctx, l, why, pod, now)
}

// released records one release: metric, log event, Kubernetes Event.
func (r *Reconciler) released(ctx context.Context, l semaphore.HeldLease, why cause, pod *corev1.Pod, now time.Time) {
	age := now.Sub(l.Record.Granted)
	r.cfg.Metrics.released(why, age)
	msg := message(l, why, age)
	r.cfg.Logger.Info().Str("semaphore", l.Name).Int("slot", l.Slot).Str("holder_prefix", l.Holder[:8]).
		Str("cause", string(why)).Str("pod", l.Record.Pod).Str("owner", l.Record.Owner).
		Dur("age", age).Bool("released", true).Msg(msg)
	if err := r.event(ctx, l, why, pod, msg); err != nil {
		r.cfg.Logger.Warn().Err(err).Str("semaphore", l.Name).Int("slot", l.Slot).Msg("recording the release as an Event failed")
	}
}

func message(l semaphore.HeldLease, why cause, age time.Duration) string {
	what := fmt.Sprintf("Slot %d of semaphore %q, taken %s ago for pod %s", l.Slot, l.Name, age.Truncate(time.Second), l.Record.Pod)
	switch why {
	case causePodDeleted:
		return what + ", was released: the pod was deleted without giving it back."
	case causePodTerminal:
		return what + ", was released: the pod has finished and its sidecar did not give it back."
	default:
		return what + ", was released: no pod with its holder exists; a later admission step probably rejected the pod, or it was deleted before the reconciler saw it."
	}
}

// event records the release on the pod, or on its owner when the pod never
// existed (or on the pod's name when it has no owner).
func (r *Reconciler) event(ctx context.Context, l semaphore.HeldLease, why cause, pod *corev1.Pod, msg string) error {
	namespace, _, _ := strings.Cut(l.Name, "/")
	ref := corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: namespace, Name: l.Record.Pod}
	switch {
	case pod != nil:
		ref.Name, ref.UID, ref.ResourceVersion = pod.Name, pod.UID, pod.ResourceVersion
	case l.Record.Owner != "":
		kind, name, _ := strings.Cut(l.Record.Owner, "/")
		ref = corev1.ObjectReference{Kind: kind, Name: name, Namespace: namespace,
			APIVersion: l.Record.OwnerAPIVersion, UID: types.UID(l.Record.OwnerUID)}
	}
	eventType := corev1.EventTypeNormal
	if why == causeNoPod {
		eventType = corev1.EventTypeWarning
	}
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: strings.TrimSuffix(strings.ToLower(ref.Name), "*") + ".",
			Namespace:    namespace,
		},
		InvolvedObject: ref,
		Reason:         "SemaphoreSlotReleased",
		Message:        msg,
		Type:           eventType,
		Source:         corev1.EventSource{Component: EventComponent, Host: r.cfg.Election.Identity},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
	_, err := r.cfg.Client.CoreV1().Events(namespace).Create(ctx, ev, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// EventComponent names the reconciler in Events.
const EventComponent = "prometheus-metrics-proxy-hook.kaidotio.github.io/reconciler"
