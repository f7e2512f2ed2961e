package admission

import (
	"errors"
	"fmt"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/jsonscan"
)

// review is the part of an AdmissionReview v1 request the handler reads.
// Byte slices point into the request body.
// Strings are kept as bytes (no copy, no allocation) until a log line or a
// semaphore name needs them.
type review struct {
	// uid is the raw JSON string token of request.uid, echoed verbatim.
	uid       []byte
	uidEsc    bool
	group     []byte // request.kind.group
	version   []byte // request.kind.version
	kind      []byte // request.kind.kind
	subRes    []byte // request.subResource
	operation []byte
	namespace []byte
	dryRun    bool
	// object is request.object, nil when absent or null.
	object []byte

	// When kind and operation come before the object (as the API server
	// writes them) and make it a Pod CREATE, the object is read as it is
	// validated: objectRead is set, and gate, opted, pod and podErr hold
	// what readObject answered.
	objectRead bool
	gate       gate
	opted      bool
	pod        podView
	podErr     error

	// kept holds uid and namespace once the body is given back (detach).
	kept [96]byte
}

// isPodCreate reports whether the request is a Pod CREATE, the only one
// the webhook looks into.
func (r *review) isPodCreate() bool {
	return string(r.kind) == "Pod" && len(r.group) == 0 && string(r.version) == "v1" && len(r.subRes) == 0 &&
		string(r.operation) == "CREATE"
}

// reviewAPIVersion is the only AdmissionReview version served; the webhook
// configuration asks the API server for it.
const reviewAPIVersion = "admission.k8s.io/v1"

// errBadReview is wrapped by every error that makes the request a 400.
var errBadReview = errors.New("bad admission review")

// parseReview reads an AdmissionReview without decoding the object. The
// whole document is validated.
func parseReview(body []byte, r *review) error {
	s := scanner{jsonscan.Scanner{Data: body}}
	sawRequest := false
	err := s.Object(func(key []byte, esc bool) error {
		switch {
		case jsonscan.EqualsKey(key, esc, "apiVersion"):
			if s.IsNull() {
				return nil
			}
			v, err := s.Text()
			if err != nil {
				return err
			}
			if v != reviewAPIVersion {
				return fmt.Errorf("%w: apiVersion %q is not served; send %s", errBadReview, v, reviewAPIVersion)
			}
			return nil
		case jsonscan.EqualsKey(key, esc, "kind"):
			if s.IsNull() {
				return nil
			}
			v, err := s.Text()
			if err != nil {
				return err
			}
			if v != "AdmissionReview" {
				return fmt.Errorf("%w: kind %q is not AdmissionReview", errBadReview, v)
			}
			return nil
		case jsonscan.EqualsKey(key, esc, "request"):
			if s.IsNull() {
				return nil
			}
			sawRequest = true
			return parseRequest(&s, r)
		default:
			return s.Skip()
		}
	})
	if err == nil {
		err = s.End()
	}
	if err != nil {
		if errors.Is(err, errBadReview) {
			return err
		}
		return fmt.Errorf("%w: the body is not a valid AdmissionReview: %w", errBadReview, err)
	}
	if !sawRequest {
		return fmt.Errorf("%w: the AdmissionReview has no request", errBadReview)
	}
	if r.uid == nil || len(r.uid) == 2 {
		return fmt.Errorf("%w: the AdmissionReview request has no uid", errBadReview)
	}
	return nil
}

// scanner is the fast path's JSON cursor, with the readers of the review's
// and the pod's fields defined on it.
type scanner struct{ jsonscan.Scanner }

func parseRequest(s *scanner, r *review) error {
	return s.Object(func(key []byte, esc bool) error {
		// Compare the short keys directly: no escapes in what the API
		// server writes, and equalsKey handles the rest.
		switch {
		case jsonscan.EqualsKey(key, esc, "uid"):
			if s.IsNull() {
				return nil
			}
			raw, escaped, err := s.Str()
			if err != nil {
				return err
			}
			r.uid, r.uidEsc = raw, escaped
			return nil
		case jsonscan.EqualsKey(key, esc, "kind"):
			if s.IsNull() {
				return nil
			}
			return s.Object(func(k []byte, e bool) error {
				var dst *[]byte
				switch {
				case jsonscan.EqualsKey(k, e, "group"):
					dst = &r.group
				case jsonscan.EqualsKey(k, e, "version"):
					dst = &r.version
				case jsonscan.EqualsKey(k, e, "kind"):
					dst = &r.kind
				default:
					return s.Skip()
				}
				return s.optBytes(dst)
			})
		case jsonscan.EqualsKey(key, esc, "subResource"):
			return s.optBytes(&r.subRes)
		case jsonscan.EqualsKey(key, esc, "operation"):
			return s.optBytes(&r.operation)
		case jsonscan.EqualsKey(key, esc, "namespace"):
			return s.optBytes(&r.namespace)
		case jsonscan.EqualsKey(key, esc, "dryRun"):
			v, err := s.Boolean()
			r.dryRun = v
			return err
		case jsonscan.EqualsKey(key, esc, "object"):
			r.objectRead, r.opted, r.podErr, r.gate, r.pod = false, false, nil, gate{}, podView{}
			if s.IsNull() {
				r.object = nil
				return nil
			}
			s.SkipSpace()
			from := s.Pos
			if r.isPodCreate() {
				opted, err := s.readObject(&r.pod, &r.gate)
				if err == nil {
					r.object, r.objectRead, r.opted = s.Data[from:s.Pos], true, opted
					return nil
				}
				// Not a pod the webhook can read: tell a syntax error
				// (the review is refused) from a pod of the wrong shape
				// (the pod is denied, or passed if it did not opt in).
				s.Pos = from
				if serr := s.Skip(); serr != nil {
					return serr
				}
				r.object, r.objectRead, r.opted, r.podErr = s.Data[from:s.Pos], true, opted, err
				return nil
			}
			v, err := s.Span()
			r.object = v
			return err
		default:
			return s.Skip()
		}
	})
}

// optText reads a string or null into dst.
func (s *scanner) optText(dst *string) (err error) {
	*dst, err = s.OptText()
	return err
}

// optBytes reads a string or null into dst: the bytes of the input when the
// string has no escapes.
func (s *scanner) optBytes(dst *[]byte) (err error) {
	if s.IsNull() {
		*dst = nil
		return nil
	}
	*dst, err = s.Bytes()
	return err
}

// uidText is the uid for logs.
func (r *review) uidText() string {
	if r.uid == nil {
		return ""
	}
	return jsonscan.Unquote(r.uid, r.uidEsc)
}

// gate is what the fast path reads of a pod: the two annotations that decide
// whether the pod is looked at any closer.
type gate struct {
	optIn, injected       string
	hasOptIn, hasInjected bool
}
