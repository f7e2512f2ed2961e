package admission

import (
	corev1 "k8s.io/api/core/v1"
)

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

// tokenMount is the sidecar's mount of the token volume.
var tokenMount = []corev1.VolumeMount{{Name: TokenVolumeName, MountPath: TokenMountPath, ReadOnly: true}}

// tokenVolumeOp adds the token volume, creating spec.volumes when the pod
// has none.
func tokenVolumeOp(audience string, podHasVolumes bool) patchOperation {
	volume := corev1.Volume{Name: TokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: pointerTo[int32](0o644),
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience: audience, ExpirationSeconds: pointerTo[int64](TokenExpirationSeconds), Path: "token",
		}}},
	}}}
	if podHasVolumes {
		return patchOperation{Op: "add", Path: "/spec/volumes/-", Value: volume}
	}
	return patchOperation{Op: "add", Path: "/spec/volumes", Value: []corev1.Volume{volume}}
}
