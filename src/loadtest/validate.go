package loadtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
)

// Expect is what every answer of a run must look like.
type Expect string

// Expectations.
const (
	// ExpectAllowed: allowed, without a patch (pods that did not opt in).
	ExpectAllowed Expect = "allowed"
	// ExpectPatched: allowed with a JSONPatch (opted-in pods).
	ExpectPatched Expect = "patched"
	// ExpectPatchedOrFull: allowed with a patch, or denied because the
	// semaphore is full (429).
	ExpectPatchedOrFull Expect = "patched-or-full"
	// ExpectAny: any well-formed answer.
	ExpectAny Expect = "any"
)

// ParseExpect checks a command-line value.
func ParseExpect(s string) (Expect, error) {
	switch e := Expect(s); e {
	case ExpectAllowed, ExpectPatched, ExpectPatchedOrFull, ExpectAny:
		return e, nil
	}
	return "", fmt.Errorf("expectation %q must be one of allowed, patched, patched-or-full, any", s)
}

// Answer is what the load tool reads from an AdmissionReview response.
type Answer struct {
	Allowed bool
	Patched bool
	// Code and Reason are the denial's status.code and status.reason.
	Code    int
	Reason  string
	Message string
	// Slot and Holder are the semaphore-slot and semaphore-holder
	// annotations the patch writes; Slot is -1 without them.
	Slot   int
	Holder string
}

type wireReview struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   *struct {
		UID       string  `json:"uid"`
		Allowed   bool    `json:"allowed"`
		PatchType *string `json:"patchType"`
		Patch     []byte  `json:"patch"`
		Status    *struct {
			Code    int    `json:"code"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"status"`
	} `json:"response"`
}

type patchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value"`
}

// errInvalid marks an answer that breaks the AdmissionReview contract or
// the run's expectation.
var errInvalid = errors.New("invalid answer")

// ParseAnswer reads and checks an AdmissionReview v1 response: the uid must
// be echoed, a patch must come with patchType JSONPatch and be a JSON
// array of operations, a denial must carry a status with a code and a
// message. With slots set, the semaphore annotations are read from the
// patch.
func ParseAnswer(body []byte, wantUID string, slots bool) (Answer, error) {
	a := Answer{Slot: -1}
	var w wireReview
	if err := json.Unmarshal(body, &w); err != nil {
		return a, fmt.Errorf("%w: not JSON: %w", errInvalid, err)
	}
	switch {
	case w.APIVersion != "admission.k8s.io/v1" || w.Kind != "AdmissionReview":
		return a, fmt.Errorf("%w: apiVersion %q kind %q, want admission.k8s.io/v1 AdmissionReview", errInvalid, w.APIVersion, w.Kind)
	case w.Response == nil:
		return a, fmt.Errorf("%w: no response", errInvalid)
	case w.Response.UID != wantUID:
		return a, fmt.Errorf("%w: uid %q, want %q", errInvalid, w.Response.UID, wantUID)
	}
	r := w.Response
	a.Allowed = r.Allowed
	if r.Status != nil {
		a.Code, a.Reason, a.Message = r.Status.Code, r.Status.Reason, r.Status.Message
	}
	if !r.Allowed && (r.Status == nil || r.Status.Code < 400 || r.Status.Message == "") {
		return a, fmt.Errorf("%w: a denial without a status code and message", errInvalid)
	}
	if (r.PatchType != nil) != (len(r.Patch) > 0) {
		return a, fmt.Errorf("%w: patchType and patch must come together", errInvalid)
	}
	if len(r.Patch) == 0 {
		return a, nil
	}
	a.Patched = true
	if *r.PatchType != "JSONPatch" {
		return a, fmt.Errorf("%w: patchType %q, want JSONPatch", errInvalid, *r.PatchType)
	}
	if !r.Allowed {
		return a, fmt.Errorf("%w: a denial with a patch", errInvalid)
	}
	if !json.Valid(r.Patch) || r.Patch[0] != '[' {
		return a, fmt.Errorf("%w: the patch is not a JSON array", errInvalid)
	}
	if !slots {
		return a, nil
	}
	// The webhook writes each annotation as one add operation, op, path
	// and value in this order; finding them is far cheaper than decoding
	// the patch, which would make the tool, not the webhook, the
	// bottleneck. Any other shape is decoded.
	if slot, ok := fastValue(r.Patch, slotPath); ok {
		if holder, ok := fastValue(r.Patch, holderPath); ok {
			if n, err := strconv.Atoi(slot); err == nil && n >= 0 && holder != "" {
				a.Slot, a.Holder = n, holder
				return a, nil
			}
		}
	}
	var ops []patchOp
	if err := json.Unmarshal(r.Patch, &ops); err != nil {
		return a, fmt.Errorf("%w: the patch is not a JSON array of operations: %w", errInvalid, err)
	}
	if err := readSlot(ops, &a); err != nil {
		return a, err
	}
	return a, nil
}

var (
	slotPath   = "/metadata/annotations/" + escapePointer(admission.AnnotationSemaphoreSlot)
	holderPath = "/metadata/annotations/" + escapePointer(admission.AnnotationHolder)
)

// fastValue finds `"path":"<path>","value":"<v>"` and answers v when it
// holds no escapes.
func fastValue(patch []byte, path string) (string, bool) {
	needle := `"path":"` + path + `","value":"`
	i := bytes.Index(patch, []byte(needle))
	if i < 0 {
		return "", false
	}
	rest := patch[i+len(needle):]
	for j, c := range rest {
		switch c {
		case '"':
			return string(rest[:j]), true
		case '\\':
			return "", false
		}
	}
	return "", false
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// readSlot finds the semaphore annotations in the patch, written one by
// one or as a whole annotations object.
func readSlot(ops []patchOp, a *Answer) error {
	var slot string
	for _, op := range ops {
		switch op.Path {
		case slotPath:
			if err := json.Unmarshal(op.Value, &slot); err != nil {
				return fmt.Errorf("%w: semaphore-slot: %w", errInvalid, err)
			}
		case holderPath:
			if err := json.Unmarshal(op.Value, &a.Holder); err != nil {
				return fmt.Errorf("%w: semaphore-holder: %w", errInvalid, err)
			}
		case "/metadata/annotations":
			var ann map[string]string
			if err := json.Unmarshal(op.Value, &ann); err != nil {
				return fmt.Errorf("%w: annotations: %w", errInvalid, err)
			}
			if v, ok := ann[admission.AnnotationSemaphoreSlot]; ok {
				slot = v
			}
			if v, ok := ann[admission.AnnotationHolder]; ok {
				a.Holder = v
			}
		}
	}
	if slot == "" && a.Holder == "" {
		return nil
	}
	n, err := strconv.Atoi(slot)
	if err != nil || n < 0 || a.Holder == "" {
		return fmt.Errorf("%w: semaphore-slot %q and semaphore-holder %q must come together", errInvalid, slot, a.Holder)
	}
	a.Slot = n
	return nil
}

// Check compares an answer with the expectation. Semaphore pods that were
// admitted must carry their slot.
func (e Expect) Check(a Answer, semaphore bool) error {
	switch e {
	case ExpectAny:
		return nil
	case ExpectAllowed:
		if !a.Allowed || a.Patched {
			return fmt.Errorf("%w: %s, want allowed without a patch", errInvalid, a.describe())
		}
	case ExpectPatched, ExpectPatchedOrFull:
		switch {
		case a.Allowed && a.Patched:
		case e == ExpectPatchedOrFull && !a.Allowed && a.Code == 429:
		default:
			return fmt.Errorf("%w: %s, want %s", errInvalid, a.describe(), e)
		}
	}
	if semaphore && a.Allowed && a.Slot < 0 {
		return fmt.Errorf("%w: admitted without a semaphore slot", errInvalid)
	}
	return nil
}

func (a Answer) describe() string {
	switch {
	case a.Allowed && a.Patched:
		return "allowed with a patch"
	case a.Allowed:
		return "allowed without a patch"
	}
	return fmt.Sprintf("denied %d %s (%s)", a.Code, a.Reason, a.Message)
}
