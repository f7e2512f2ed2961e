package leaseserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseauth"
)

// Authenticator tells which pod a bearer token belongs to;
// *leaseauth.Verifier is the implementation.
type Authenticator interface {
	Verify(ctx context.Context, token string) (leaseauth.Identity, error)
}

// PodGetter finds a pod by namespace and name; a NotFound API error means
// it does not exist.
type PodGetter interface {
	Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// LegacyLeases tells whether a lease was granted by a release before the
// lease API checked tokens: such a lease has no lease record in Redis, and
// its sidecar sends no token.
type LegacyLeases interface {
	IsLegacy(ctx context.Context, lease leaseapi.Lease) (bool, error)
}

// PodsFromAPI gets pods from the API server, one GET per call.
type PodsFromAPI struct{ Client kubernetes.Interface }

// Pod implements PodGetter.
func (p PodsFromAPI) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return p.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

// Causes of a refusal, the label of the rejections metric and the Cause of
// the error body.
const (
	CauseMissingToken   = leaseauth.CauseMissing
	CauseInvalidToken   = leaseauth.CauseInvalid
	CauseNotPodBound    = leaseauth.CauseNotPodTied
	CauseRateLimited    = "rate-limited"
	CauseOtherNamespace = "other-namespace"
	CausePodNotFound    = "pod-not-found"
	CausePodReplaced    = "pod-replaced"
	CauseNotOptedIn     = "not-opted-in"
	CauseOtherSemaphore = "other-semaphore"
	CauseOtherSize      = "other-size"
	CauseOtherHolder    = "other-holder"
	CauseNoHolder       = "no-holder"
)

// caller is who made a request, for the log: the pod, or how it was let
// in without one.
type caller struct {
	pod    leaseauth.Identity
	legacy bool
}

// refusal is an answer that ends a request before the semaphore is asked.
func refusal(status int, reason, cause string, err error) *answer {
	a := fail(status, reason, err)
	a.cause = cause
	body := a.body.(leaseapi.ErrorResponse)
	body.Cause = cause
	a.body = body
	return &a
}

// authorize decides whether the request's caller may do op to l (size is
// the acquire request's, 0 otherwise). A nil answer lets it through.
func (h *handler) authorize(ctx context.Context, op, token string, l leaseapi.Lease, size int) (*answer, caller) {
	if h.cfg.Auth == nil {
		return nil, caller{}
	}
	if token == "" {
		return h.legacy(ctx, op, l)
	}
	id, err := h.cfg.Auth.Verify(ctx, token)
	var refused *leaseauth.Error
	switch {
	case errors.As(err, &refused) && refused.Cause == leaseauth.CauseNotPodTied:
		return refusal(http.StatusForbidden, leaseapi.ReasonForbidden, refused.Cause, refused), caller{}
	case errors.As(err, &refused):
		return refusal(http.StatusUnauthorized, leaseapi.ReasonUnauthorized, refused.Cause, refused), caller{}
	case err != nil:
		a := fail(http.StatusServiceUnavailable, leaseapi.ReasonNoQuorum, err)
		return &a, caller{}
	}
	who := caller{pod: id}
	if !h.limits.allow(id.PodUID) {
		return refusal(http.StatusTooManyRequests, leaseapi.ReasonRateLimited, CauseRateLimited,
			fmt.Errorf("pod %s/%s sends lease API requests faster than a sidecar needs; wait and retry", id.Namespace, id.PodName)), who
	}
	if l.Namespace != id.Namespace {
		return forbidden(CauseOtherNamespace, "pod %s/%s may act only on semaphores of its own namespace %q, not of %q", id.Namespace, id.PodName, id.Namespace, l.Namespace), who
	}
	pod, err := h.cfg.Pods.Pod(ctx, id.Namespace, id.PodName)
	switch {
	case apierrors.IsNotFound(err):
		return forbidden(CausePodNotFound, "pod %s/%s, to which the token is bound, does not exist", id.Namespace, id.PodName), who
	case err != nil:
		a := fail(http.StatusServiceUnavailable, leaseapi.ReasonNoQuorum, fmt.Errorf("looking up pod %s/%s: %w", id.Namespace, id.PodName, err))
		return &a, who
	}
	return checkPod(pod, id, op, l, size), who
}

func forbidden(cause, format string, args ...any) *answer {
	return refusal(http.StatusForbidden, leaseapi.ReasonForbidden, cause, fmt.Errorf(format, args...))
}

// checkPod holds the rules of issue 14: a pod acts only on its own slot of
// the semaphore its own annotations name.
func checkPod(pod *corev1.Pod, id leaseauth.Identity, op string, l leaseapi.Lease, size int) *answer {
	name := id.Namespace + "/" + id.PodName
	ann := pod.Annotations
	switch {
	case string(pod.UID) != id.PodUID:
		return forbidden(CausePodReplaced, "the token is bound to an earlier pod named %s (uid %s), not to the one that exists now", name, id.PodUID)
	case ann[admission.AnnotationOptIn] != "true":
		return forbidden(CauseNotOptedIn, "pod %s did not opt in: its annotation %s is not \"true\"", name, admission.AnnotationOptIn)
	case ann[admission.AnnotationSemaphoreKey] != l.Key:
		return forbidden(CauseOtherSemaphore, "pod %s may act only on the semaphore its annotation %s names, not on %q", name, admission.AnnotationSemaphoreKey, l.Key)
	case op == "acquire" && !sameSize(ann[admission.AnnotationSemaphoreSize], size):
		return forbidden(CauseOtherSize, "pod %s may ask only for the size its annotation %s gives, not for %d", name, admission.AnnotationSemaphoreSize, size)
	case ann[admission.AnnotationHolder] == "":
		return forbidden(CauseNoHolder, "pod %s has no %s annotation, so no lease belongs to it", name, admission.AnnotationHolder)
	case ann[admission.AnnotationHolder] != l.Holder:
		return forbidden(CauseOtherHolder, "pod %s may act only on its own lease: the holder id in the request is not the one in its %s annotation", name, admission.AnnotationHolder)
	}
	return nil
}

func sameSize(annotation string, size int) bool {
	n, err := strconv.Atoi(strings.TrimSpace(annotation))
	return err == nil && n == size
}

// legacy lets a request without a token through only for a renewal or a
// release of a lease granted before tokens were checked (see
// docs/reliability.md, "Upgrading from a release without lease API
// tokens").
func (h *handler) legacy(ctx context.Context, op string, l leaseapi.Lease) (*answer, caller) {
	missing := refusal(http.StatusUnauthorized, leaseapi.ReasonUnauthorized, CauseMissingToken,
		errors.New("the request carries no bearer token; the sidecar sends its pod's projected ServiceAccount token in the Authorization header"))
	if op == "acquire" || h.cfg.Legacy == nil {
		return missing, caller{}
	}
	old, err := h.cfg.Legacy.IsLegacy(ctx, l)
	if err != nil {
		a := fail(http.StatusServiceUnavailable, leaseapi.ReasonNoQuorum, fmt.Errorf("checking whether the lease predates lease API tokens: %w", err))
		return &a, caller{}
	}
	if !old {
		return missing, caller{}
	}
	return nil, caller{legacy: true}
}
