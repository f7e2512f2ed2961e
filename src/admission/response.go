package admission

import "encoding/base64"

// answer is an admission decision as the response encodes it.
type answer struct {
	allowed bool
	// code, statusReason and message form the status of a denial.
	code         int32
	statusReason string
	message      string
	patch        []byte
	warnings     []string
}

const responseHead = `{"apiVersion":"` + reviewAPIVersion + `","kind":"AdmissionReview","response":{"uid":`

// appendAllowed is the whole answer of the fast path.
func appendAllowed(b, uid []byte) []byte {
	b = append(b, responseHead...)
	b = append(b, uid...)
	return append(b, `,"allowed":true}}`...)
}

// appendResponse encodes an AdmissionReview v1 response by hand: it is a
// handful of fields, and encoding/json's reflection would cost more than
// the rest of the fast path.
func appendResponse(b, uid []byte, a *answer) []byte {
	b = append(b, responseHead...)
	b = append(b, uid...)
	if a.allowed {
		b = append(b, `,"allowed":true`...)
	} else {
		b = append(b, `,"allowed":false,"status":{"metadata":{},"status":"Failure","message":`...)
		b = appendString(b, a.message)
		b = append(b, `,"reason":`...)
		b = appendString(b, a.statusReason)
		b = append(b, `,"code":`...)
		b = appendInt(b, int64(a.code))
		b = append(b, '}')
	}
	if len(a.patch) > 0 {
		b = append(b, `,"patchType":"JSONPatch","patch":"`...)
		b = base64.StdEncoding.AppendEncode(b, a.patch)
		b = append(b, '"')
	}
	if len(a.warnings) > 0 {
		b = append(b, `,"warnings":[`...)
		for i, w := range a.warnings {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, w)
		}
		b = append(b, ']')
	}
	return append(b, `}}`...)
}

// statusReason is the metav1.StatusReason for a denial's code; kubectl
// prints it in parentheses before the message.
func statusReason(code int32) string {
	switch code {
	case 400:
		return "BadRequest"
	case 403:
		return "Forbidden"
	case 429:
		return "TooManyRequests"
	case 503:
		return "ServiceUnavailable"
	}
	return "InternalError"
}
