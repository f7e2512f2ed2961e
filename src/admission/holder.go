package admission

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// LabelHolder is the label that carries the holder id on a pod holding a
// slot, next to the annotation of the same name: the reconciler's informer
// selects on it, so that its watch holds only those pods.
const LabelHolder = AnnotationHolder

// leaseRecord is what Redis keeps about the slot taken for the pod; Granted
// is set when the slot is taken.
func leaseRecord(pod *podObject) semaphore.Record {
	rec := semaphore.Record{Pod: pod.Name}
	if rec.Pod == "" {
		rec.Pod = pod.GenerateName + "*"
	}
	if c := metav1.GetControllerOfNoCopy(&pod.ObjectMeta); c != nil {
		rec.Owner, rec.OwnerAPIVersion, rec.OwnerUID = c.Kind+"/"+c.Name, c.APIVersion, string(c.UID)
	}
	return rec
}

// holderLabelOp adds the holder label, creating the labels map when the pod
// has none.
func holderLabelOp(p *plan, holder string) patchOperation {
	if !p.hasLabels {
		return patchOperation{Op: "add", Path: "/metadata/labels", Value: map[string]string{LabelHolder: holder}}
	}
	return patchOperation{Op: "add", Path: "/metadata/labels/" + pointerEscaper.Replace(LabelHolder), Value: holder}
}

// maxHoldersNamed bounds how many holders a denial names, so that a big
// semaphore's denial stays readable in an Event.
const maxHoldersNamed = 10

// holdersTimeout bounds reading the holders for a denial; the denial goes
// out without them when Redis is slow.
const holdersTimeout = 500 * time.Millisecond

// describeHolders answers "; its slots are held by pod a (slot 0, for 2m5s),
// ..." for a full semaphore, or "" when the holders could not be read.
func (h *Handler) describeHolders(ctx context.Context, name string, size int) string {
	ctx, cancel := context.WithTimeout(ctx, holdersTimeout)
	defer cancel()
	leases, err := h.cfg.Semaphore.Leases(ctx, name, size)
	if err != nil || len(leases) == 0 {
		return ""
	}
	now := time.Now()
	parts := make([]string, 0, min(len(leases), maxHoldersNamed))
	for i, l := range leases {
		if i == maxHoldersNamed {
			break
		}
		parts = append(parts, describeLease(l, now))
	}
	more := ""
	if len(leases) > maxHoldersNamed {
		more = fmt.Sprintf(" and %d more", len(leases)-maxHoldersNamed)
	}
	return "; its slots are held by " + strings.Join(parts, ", ") + more
}

func describeLease(l semaphore.HeldLease, now time.Time) string {
	slot := "slot " + strconv.Itoa(l.Slot)
	if l.Record == nil {
		return "a pod admitted by the previous release (" + slot + ")"
	}
	age := now.Sub(l.Record.Granted).Truncate(time.Second)
	return fmt.Sprintf("pod %s (%s, for %s)", l.Record.Pod, slot, age)
}

// acquire takes a slot for holder with the pod's lease record.
func (h *Handler) acquire(ctx context.Context, name string, p *plan, holder string) (semaphore.Lease, error) {
	rec := p.record
	rec.Granted = time.Now()
	return h.cfg.Semaphore.AcquireWithRecord(ctx, name, p.semaphoreSize, p.startupTimeout, holder, rec)
}
