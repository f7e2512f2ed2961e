package metricsproxy

import (
	"strconv"
	"strings"
)

// acceptable reports whether a response with contentType and contentEncoding
// satisfies a request's Accept and Accept-Encoding headers (RFC 9110 12.5).
// Only the media type and the q parameter count: a Prometheus that asked for
// OpenMetrics 1.0.0 parses 0.0.1 as well.
func acceptable(accept, acceptEncoding, contentType, contentEncoding string) bool {
	return mediaTypeAccepted(accept, contentType) && encodingAccepted(acceptEncoding, contentEncoding)
}

func mediaTypeAccepted(accept, contentType string) bool {
	if strings.TrimSpace(accept) == "" {
		return true
	}
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	typ, _, _ := strings.Cut(mt, "/")
	for r := range strings.SplitSeq(accept, ",") {
		rng, params, _ := strings.Cut(r, ";")
		rng = strings.ToLower(strings.TrimSpace(rng))
		if qValue(params) <= 0 {
			continue
		}
		switch {
		case rng == "*/*", rng == mt:
			return true
		case strings.HasSuffix(rng, "/*") && strings.TrimSuffix(rng, "/*") == typ:
			return true
		}
	}
	return false
}

func encodingAccepted(acceptEncoding, contentEncoding string) bool {
	ce := strings.ToLower(strings.TrimSpace(contentEncoding))
	if ce == "" || ce == "identity" {
		return true
	}
	for r := range strings.SplitSeq(acceptEncoding, ",") {
		coding, params, _ := strings.Cut(r, ";")
		coding = strings.ToLower(strings.TrimSpace(coding))
		if (coding == ce || coding == "*") && qValue(params) > 0 {
			return true
		}
	}
	return false
}

// qValue is the q parameter among a media range's parameters, 1 when absent
// or malformed.
func qValue(params string) float64 {
	for p := range strings.SplitSeq(params, ";") {
		k, v, ok := strings.Cut(p, "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "q") {
			continue
		}
		q, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return 1
		}
		return q
	}
	return 1
}
