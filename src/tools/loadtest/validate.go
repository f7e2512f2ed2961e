package loadtest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/tools/loadtest/jsonscan"
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
// array, a denial must carry a status with a code and a message. With
// slots set, the semaphore annotations are read from the patch.
func ParseAnswer(body []byte, wantUID string, slots bool) (Answer, error) {
	var scratch []byte
	return parseAnswer(body, wantUID, slots, &scratch)
}

// wire is what parseAnswer reads of an answer.
type wire struct {
	apiVersion, kind string
	response         bool
	uid              []byte // the value's bytes, in the body unless escaped
	allowed          bool
	patchType        *string
	patch            []byte // the base64 text, in the body unless escaped
	status           bool
	code             int
	reason, message  string
}

// parseAnswer is ParseAnswer with a buffer for the decoded patch, which
// workers reuse from answer to answer.
func parseAnswer(body []byte, wantUID string, slots bool, scratch *[]byte) (Answer, error) {
	a := Answer{Slot: -1}
	var w wire
	if err := readWire(body, &w); err != nil {
		return a, fmt.Errorf("%w: not JSON: %w", errInvalid, err)
	}
	switch {
	case w.apiVersion != "admission.k8s.io/v1" || w.kind != "AdmissionReview":
		return a, fmt.Errorf("%w: apiVersion %q kind %q, want admission.k8s.io/v1 AdmissionReview", errInvalid, w.apiVersion, w.kind)
	case !w.response:
		return a, fmt.Errorf("%w: no response", errInvalid)
	case string(w.uid) != wantUID:
		return a, fmt.Errorf("%w: uid %q, want %q", errInvalid, w.uid, wantUID)
	}
	a.Allowed = w.allowed
	if w.status {
		a.Code, a.Reason, a.Message = w.code, w.reason, w.message
	}
	if !w.allowed && (!w.status || w.code < 400 || w.message == "") {
		return a, fmt.Errorf("%w: a denial without a status code and message", errInvalid)
	}
	if (w.patchType != nil) != (len(w.patch) > 0) {
		return a, fmt.Errorf("%w: patchType and patch must come together", errInvalid)
	}
	if len(w.patch) == 0 {
		return a, nil
	}
	a.Patched = true
	if *w.patchType != "JSONPatch" {
		return a, fmt.Errorf("%w: patchType %q, want JSONPatch", errInvalid, *w.patchType)
	}
	if !w.allowed {
		return a, fmt.Errorf("%w: a denial with a patch", errInvalid)
	}
	buf := slices.Grow((*scratch)[:0], base64.StdEncoding.DecodedLen(len(w.patch)))
	n, err := base64.StdEncoding.Decode(buf[:cap(buf)], w.patch)
	if err != nil {
		return a, fmt.Errorf("%w: the patch is not base64: %w", errInvalid, err)
	}
	patch := buf[:n]
	*scratch = buf
	ps := jsonscan.Scanner{Data: patch}
	if ps.Peek() != '[' || ps.Skip() != nil || ps.End() != nil {
		return a, fmt.Errorf("%w: the patch is not a JSON array", errInvalid)
	}
	if !slots {
		return a, nil
	}
	// The webhook writes each annotation as one add operation, op, path
	// and value in this order; any other shape is decoded.
	if slot, ok := fastValue(patch, slotPath); ok {
		if holder, ok := fastValue(patch, holderPath); ok {
			if n, err := strconv.Atoi(slot); err == nil && n >= 0 && holder != "" {
				a.Slot, a.Holder = n, holder
				return a, nil
			}
		}
	}
	var ops []patchOp
	if err := json.Unmarshal(patch, &ops); err != nil {
		return a, fmt.Errorf("%w: the patch is not a JSON array of operations: %w", errInvalid, err)
	}
	if err := readSlot(ops, &a); err != nil {
		return a, err
	}
	return a, nil
}

// readWire reads the answer's envelope in one pass; unknown fields are
// checked and skipped, and a repeated field's last value wins, as with
// encoding/json.
func readWire(body []byte, w *wire) error {
	s := jsonscan.Scanner{Data: body}
	err := s.Object(func(key []byte, esc bool) error {
		var err error
		switch {
		case jsonscan.EqualsKey(key, esc, "apiVersion"):
			w.apiVersion, err = s.OptText()
		case jsonscan.EqualsKey(key, esc, "kind"):
			w.kind, err = s.OptText()
		case jsonscan.EqualsKey(key, esc, "response"):
			w.response = !s.IsNull()
			if w.response {
				err = readResponse(&s, w)
			}
		default:
			err = s.Skip()
		}
		return err
	})
	if err != nil {
		return err
	}
	return s.End()
}

func readResponse(s *jsonscan.Scanner, w *wire) error {
	return s.Object(func(key []byte, esc bool) error {
		if s.IsNull() {
			switch {
			case jsonscan.EqualsKey(key, esc, "uid"):
				w.uid = nil
			case jsonscan.EqualsKey(key, esc, "allowed"):
				w.allowed = false
			case jsonscan.EqualsKey(key, esc, "patchType"):
				w.patchType = nil
			case jsonscan.EqualsKey(key, esc, "patch"):
				w.patch = nil
			case jsonscan.EqualsKey(key, esc, "status"):
				w.status = false
			}
			return nil
		}
		var err error
		switch {
		case jsonscan.EqualsKey(key, esc, "uid"):
			w.uid, err = s.Bytes()
		case jsonscan.EqualsKey(key, esc, "allowed"):
			w.allowed, err = s.Boolean()
		case jsonscan.EqualsKey(key, esc, "patchType"):
			var t string
			t, err = s.Text()
			w.patchType = &t
		case jsonscan.EqualsKey(key, esc, "patch"):
			w.patch, err = s.Bytes()
		case jsonscan.EqualsKey(key, esc, "status"):
			w.status = true
			err = readStatus(s, w)
		default:
			err = s.Skip()
		}
		return err
	})
}

func readStatus(s *jsonscan.Scanner, w *wire) error {
	return s.Object(func(key []byte, esc bool) error {
		var err error
		switch {
		case jsonscan.EqualsKey(key, esc, "code"):
			if s.IsNull() {
				return nil
			}
			start := s.Pos
			if err = s.Number(); err != nil {
				return err
			}
			num := s.Data[start:s.Pos]
			if w.code, err = strconv.Atoi(string(num)); err != nil {
				return fmt.Errorf("%w: the status code %s is not an integer", jsonscan.ErrSyntax, num)
			}
		case jsonscan.EqualsKey(key, esc, "reason"):
			w.reason, err = s.OptText()
		case jsonscan.EqualsKey(key, esc, "message"):
			w.message, err = s.OptText()
		default:
			err = s.Skip()
		}
		return err
	})
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
