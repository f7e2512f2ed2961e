package admission

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/jsonscan"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// LabelHolder is the label that carries the holder id on a pod holding a
// slot, next to the annotation of the same name: the reconciler's informer
// selects on it, so that its watch holds only those pods.
const LabelHolder = AnnotationHolder

// ownerRef is the part of a controller owner reference the lease record
// keeps.
type ownerRef struct {
	APIVersion, Kind, Name, UID string
}

// readController reads the ownerReferences array and keeps the one marked
// as controller.
func readController(span []byte, dst *ownerRef) error {
	s := scanner{jsonscan.Scanner{Data: span}}
	*dst = ownerRef{}
	if s.IsNull() {
		return nil
	}
	return s.Array("an array of owner references", func() error {
		var ref ownerRef
		controller := false
		if s.IsNull() {
			return nil
		}
		if err := s.Object(func(key []byte, esc bool) error {
			switch {
			case jsonscan.EqualsKey(key, esc, "apiVersion"):
				return s.optText(&ref.APIVersion)
			case jsonscan.EqualsKey(key, esc, "kind"):
				return s.optText(&ref.Kind)
			case jsonscan.EqualsKey(key, esc, "name"):
				return s.optText(&ref.Name)
			case jsonscan.EqualsKey(key, esc, "uid"):
				return s.optText(&ref.UID)
			case jsonscan.EqualsKey(key, esc, "controller"):
				if s.IsNull() {
					return nil
				}
				v, err := s.Boolean()
				controller = v
				return err
			}
			return s.Skip()
		}); err != nil {
			return err
		}
		if controller {
			*dst = ref
		}
		return nil
	})
}

// leaseRecord is what Redis keeps about the lease taken for this pod.
func leaseRecord(pod *podView, now time.Time) semaphore.Record {
	rec := semaphore.Record{Granted: now, Pod: pod.Metadata.Name}
	if rec.Pod == "" {
		rec.Pod = pod.Metadata.GenerateName + "*"
	}
	if c := pod.Metadata.Controller; c.Kind != "" && c.Name != "" {
		rec.Owner, rec.OwnerAPIVersion, rec.OwnerUID = c.Kind+"/"+c.Name, c.APIVersion, c.UID
	}
	return rec
}

// appendHolderLabel adds the holder label, creating the labels map when the
// pod has none.
func appendHolderLabel(b []byte, pod *podView, holder string) []byte {
	if !pod.Metadata.HasLabels {
		b = append(b, `{"op":"add","path":"/metadata/labels","value":{`...)
		b = appendString(b, LabelHolder)
		b = append(b, ':')
		b = appendString(b, holder)
		return append(b, `}},`...)
	}
	b = append(b, `{"op":"add","path":`...)
	b = appendPointerString(b, "/metadata/labels/", LabelHolder)
	b = append(b, `,"value":`...)
	b = appendString(b, holder)
	return append(b, `},`...)
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

// acquire takes a slot with a fresh holder id and the pod's lease record.
func (h *Handler) acquire(ctx context.Context, name string, p *plan, pod *podView) (semaphore.Lease, error) {
	holder, err := semaphore.NewHolderID()
	if err != nil {
		return semaphore.Lease{}, err
	}
	return h.cfg.Semaphore.AcquireWithRecord(ctx, name, p.size, p.startupTimeout, holder, leaseRecord(pod, time.Now()))
}
