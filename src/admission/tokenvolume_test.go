package admission

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestTokenVolume: a pod that names a semaphore gets the projected token
// for the lease API, mounted read-only into the sidecar only; a pod
// without a semaphore never talks to the lease API and gets none.
func TestTokenVolume(t *testing.T) {
	withVolume := semaphorePod("batch", "9")
	withVolume.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	noAutomount := semaphorePod("batch", "9")
	noAutomount.Spec.AutomountServiceAccountToken = ptr(false)
	cases := []struct {
		name    string
		pod     *corev1.Pod
		volumes int // the pod's volumes after the patch
		token   bool
	}{
		{"semaphore", semaphorePod("batch", "9"), 1, true},
		{"semaphore and a volume", withVolume, 2, true},
		{"automountServiceAccountToken false", noAutomount, 1, true},
		{"no semaphore", basePod(), 0, false},
	}
	f := newFixture(t, nil)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw, _ := json.Marshal(tc.pod)
			resp := admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{}))
			if !resp.Allowed {
				t.Fatalf("denied: %+v", resp.Result)
			}
			pod := patched(t, raw, resp)
			c, _, _ := sidecarOf(pod)
			if len(pod.Spec.Volumes) != tc.volumes {
				t.Fatalf("%d volumes, want %d: %+v", len(pod.Spec.Volumes), tc.volumes, pod.Spec.Volumes)
			}
			if !tc.token {
				if len(c.VolumeMounts) != 0 || envOf(c)["PMPH_LEASE_TOKEN_FILE"] != "" {
					t.Fatalf("a sidecar without a semaphore got the token: %+v", c)
				}
				return
			}
			v := pod.Spec.Volumes[len(pod.Spec.Volumes)-1]
			want := corev1.VolumeProjection{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: DefaultTokenAudience, ExpirationSeconds: ptr[int64](600), Path: "token"}}
			if v.Name != TokenVolumeName || v.Projected == nil || len(v.Projected.Sources) != 1 ||
				v.Projected.Sources[0].String() != want.String() {
				t.Fatalf("token volume %+v", v)
			}
			m := corev1.VolumeMount{Name: TokenVolumeName, MountPath: "/var/run/secrets/prometheus-metrics-proxy-hook", ReadOnly: true}
			if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].String() != m.String() {
				t.Fatalf("sidecar mounts %+v, want %+v", c.VolumeMounts, m)
			}
			if got := envOf(c)["PMPH_LEASE_TOKEN_FILE"]; got != TokenPath {
				t.Fatalf("PMPH_LEASE_TOKEN_FILE = %q, want %q", got, TokenPath)
			}
			if app := pod.Spec.Containers[0]; len(app.VolumeMounts) != 0 {
				t.Fatalf("the app container mounts %+v; only the sidecar gets the token", app.VolumeMounts)
			}
		})
	}
}
