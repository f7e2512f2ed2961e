package admission

import (
	"errors"
	"fmt"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	kjson "sigs.k8s.io/json"
)

// reviewAPIVersion is the only AdmissionReview version served; the webhook
// configuration asks the API server for it.
const reviewAPIVersion = "admission.k8s.io/v1"

// errBadReview is wrapped by every error that makes the request a 400.
var errBadReview = errors.New("bad admission review")

// decodeReview decodes an AdmissionReview v1 and returns its request.
//
// Member names must match exactly, as the API server writes them and as
// the patch's JSON pointers address them. Members k8s.io/api does not know
// are ignored: an API server newer than this build sends some, and with
// failurePolicy Fail refusing them would refuse every pod.
func decodeReview(body []byte) (*admissionv1.AdmissionRequest, error) {
	var rv admissionv1.AdmissionReview
	if err := kjson.UnmarshalCaseSensitivePreserveInts(body, &rv); err != nil {
		return nil, fmt.Errorf("%w: the body is not a valid AdmissionReview: %w", errBadReview, jsonError(err))
	}
	switch {
	case rv.APIVersion != "" && rv.APIVersion != reviewAPIVersion:
		return nil, fmt.Errorf("%w: apiVersion %q is not served; send %s", errBadReview, rv.APIVersion, reviewAPIVersion)
	case rv.Kind != "" && rv.Kind != "AdmissionReview":
		return nil, fmt.Errorf("%w: kind %q is not AdmissionReview", errBadReview, rv.Kind)
	case rv.Request == nil:
		return nil, fmt.Errorf("%w: the AdmissionReview has no request", errBadReview)
	case rv.Request.UID == "":
		return nil, fmt.Errorf("%w: the AdmissionReview request has no uid", errBadReview)
	}
	return rv.Request, nil
}

// maxJSONDepth is the nesting limit of the decoder (sigs.k8s.io/json, as
// encoding/json).
const maxJSONDepth = 10000

// jsonError says where a syntax error is, and names the nesting limit the
// decoder reports only as "exceeded max depth".
func jsonError(err error) error {
	if strings.Contains(err.Error(), "exceeded max depth") {
		return fmt.Errorf("the JSON is nested deeper than %d levels", maxJSONDepth)
	}
	if isSyntax, offset := kjson.SyntaxErrorOffset(err); isSyntax {
		return fmt.Errorf("%w at byte %d", err, offset)
	}
	return err
}
