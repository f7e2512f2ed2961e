package admission

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// decision is the answer to one review, with what the log and the metrics
// need.
type decision struct {
	uid       types.UID
	namespace string
	dryRun    bool
	answer    answer
	reason    reason
	route     route
	// message is the denial or the warning the log carries.
	message   string
	pod       string
	semaphore string
	// lease is the slot taken for this answer; it is given back if the
	// answer is not delivered.
	lease *semaphore.Lease
}

func (d *decision) allowed() bool { return d.answer.denial == nil }

func (d *decision) deny(den *denial) {
	d.answer = answer{denial: den}
	d.reason, d.message = den.reason, den.message
}

// decide answers a review: it classifies the review, plans the pod's
// injection, takes a semaphore slot when the pod names one, and builds the
// patch. An error is a patch that could not be encoded; the decision then
// holds the slot taken for it, if any.
func (h *Handler) decide(r *http.Request, req *podRequest) (*decision, error) {
	d := &decision{uid: req.UID, namespace: req.Namespace, dryRun: req.DryRun != nil && *req.DryRun, route: routePassthrough}
	c := classify(req)
	if c.pod == nil && c.decodeErr == nil {
		d.reason, d.message = c.passed, c.warning
		if c.warning != "" {
			d.answer.warnings = []string{c.warning}
		}
		return d, nil
	}
	d.route, d.reason = routeInject, reasonInjected
	p, den := h.planInjection(d, c)
	if den != nil {
		d.deny(den)
		return d, nil
	}
	d.answer.warnings = p.warnings
	env, den := h.semaphoreEnv(r, d, p)
	if den != nil {
		d.deny(den)
		return d, nil
	}
	patch, err := h.injection.patch(p, env)
	if err != nil {
		return d, fmt.Errorf("encoding the patch: %w", err)
	}
	d.answer.patch = patch
	return d, nil
}

// planInjection validates an opted-in pod and what its annotations ask for.
func (h *Handler) planInjection(d *decision, c classification) (*plan, *denial) {
	if c.decodeErr != nil {
		return nil, &denial{code: 400, reason: reasonInvalid, message: fmt.Sprintf("the pod could not be decoded: %v", c.decodeErr)}
	}
	d.pod = displayName(c.pod)
	if d.namespace == "" {
		return nil, &denial{code: 400, reason: reasonInvalid, message: "the admission request names no namespace for the pod"}
	}
	return planFor(c.pod, h.injection.port, h.injection.scrapeInterval)
}

// semaphoreEnv takes a slot of the pod's semaphore, if it names one, and
// answers the sidecar's lease environment; nil when the pod names none.
func (h *Handler) semaphoreEnv(r *http.Request, d *decision, p *plan) (*leaseEnv, *denial) {
	if p.semaphoreKey == "" {
		return nil, nil
	}
	d.route = routeSemaphore
	d.semaphore = leaseapi.SemaphoreName(d.namespace, p.semaphoreKey)
	env := &leaseEnv{namespace: d.namespace, key: p.semaphoreKey, size: p.semaphoreSize, ca: h.cfg.CA()}
	if d.dryRun {
		d.reason = reasonDryRun
		d.answer.warnings = append(d.answer.warnings, "dry run: no semaphore slot was taken")
		return env, nil
	}
	holder := semaphore.NewHolderID()
	lease, den := h.takeSlot(r, d, p, holder)
	if den != nil {
		return nil, den
	}
	env.holder, env.lease = holder, lease
	return env, nil
}

// takeSlot takes a slot within the review's budget. Without a quorum, the
// no-quorum policy decides between a denial and an admission without a
// slot (lease nil); the pod then still carries holder, which its sidecar
// takes the slot with.
func (h *Handler) takeSlot(r *http.Request, d *decision, p *plan, holder string) (*semaphore.Lease, *denial) {
	h.cfg.Logger.Debug().Str("uid", string(d.uid)).Str("semaphore", d.semaphore).Msg("taking a semaphore slot")
	ctx, cancel := context.WithTimeout(r.Context(), reviewBudget(r.URL.RawQuery))
	lease, err := h.acquire(ctx, d.semaphore, p, holder)
	cancel()
	var full *semaphore.FullError
	switch {
	case err == nil:
		d.lease = &lease
		return &lease, nil
	case errors.Is(err, context.Canceled):
		// The API server stopped waiting; nobody reads this answer.
		return nil, &denial{code: 503, reason: reasonNotDelivered, message: fmt.Sprintf(
			"no slot of semaphore %q was taken: the API server stopped waiting", d.semaphore)}
	case errors.As(err, &full):
		return nil, &denial{code: 429, reason: reasonFull, message: full.Error() +
			h.describeHolders(r.Context(), d.semaphore, p.semaphoreSize) + "; the pod will be created when a slot frees up"}
	case h.cfg.NoQuorumPolicy == NoQuorumAllow:
		d.reason, d.message = reasonNoQuorumAllowed, err.Error()
		d.answer.warnings = append(d.answer.warnings, fmt.Sprintf(
			"no slot of semaphore %q could be taken (%s): the pod was admitted without one because the webhook's no-quorum policy is allow; its sidecar takes a slot when Redis recovers",
			d.semaphore, trimSentence(err.Error())))
		return nil, nil
	}
	// A split (racing acquirers, nodes that never agreed) is contention
	// rather than an outage: the retry will do.
	when := "Redis recovers"
	var nq *semaphore.NoQuorumError
	if errors.As(err, &nq) && nq.Split {
		when = "its controller retries"
	}
	return nil, &denial{code: 503, reason: reasonNoQuorum, message: fmt.Sprintf(
		"no slot of semaphore %q could be taken: %s; the pod will be created when %s",
		d.semaphore, trimSentence(err.Error()), when)}
}
