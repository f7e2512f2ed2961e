package admission

import "strconv"

// The projected ServiceAccount token the sidecar authenticates to the lease
// API with. The volume is explicit, so it is mounted even in pods with
// automountServiceAccountToken: false; the kubelet rotates the file well
// before it expires, and the sidecar reads it on every call.
const (
	TokenVolumeName = "prometheus-metrics-proxy-hook-token"
	TokenMountPath  = "/var/run/secrets/prometheus-metrics-proxy-hook"
	TokenPath       = TokenMountPath + "/token"
	// TokenExpirationSeconds is the API server's minimum lifetime.
	TokenExpirationSeconds = 600
	// DefaultTokenAudience is the lease API's audience unless configured.
	DefaultTokenAudience = "prometheus-metrics-proxy-hook"
)

// tokenMount is the sidecar's volumeMounts member, after its env.
const tokenMount = `,"volumeMounts":[{"name":"` + TokenVolumeName + `","mountPath":"` + TokenMountPath + `","readOnly":true}]`

// appendTokenVolume appends the patch operation that adds the token volume,
// creating spec.volumes when the pod has none.
func appendTokenVolume(b []byte, audience string, podHasVolumes bool) []byte {
	if podHasVolumes {
		b = append(b, `,{"op":"add","path":"/spec/volumes/-","value":`...)
	} else {
		b = append(b, `,{"op":"add","path":"/spec/volumes","value":[`...)
	}
	b = append(b, `{"name":"`+TokenVolumeName+`","projected":{"defaultMode":420,"sources":[{"serviceAccountToken":{"audience":`...)
	b = appendString(b, audience)
	b = append(b, `,"expirationSeconds":`+strconv.Itoa(TokenExpirationSeconds)+`,"path":"token"}}]}}`...)
	if !podHasVolumes {
		b = append(b, ']')
	}
	return append(b, '}')
}
