package charts

import (
	"fmt"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// restrictedViolations checks a pod spec against the "restricted" Pod
// Security Standard (which includes "baseline"), as the PodSecurity
// admission plugin of Kubernetes 1.30+ enforces it, plus this chart's own
// rule that every container has a read-only root filesystem. It returns one
// line per violation.
func restrictedViolations(spec corev1.PodSpec) []string {
	var v []string
	add := func(format string, a ...any) { v = append(v, fmt.Sprintf(format, a...)) }
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		add("host namespaces: hostNetwork=%v hostPID=%v hostIPC=%v", spec.HostNetwork, spec.HostPID, spec.HostIPC)
	}
	allowedVolumes := func(vol corev1.Volume) bool {
		s := vol.VolumeSource
		return s.ConfigMap != nil || s.CSI != nil || s.DownwardAPI != nil || s.EmptyDir != nil ||
			s.Ephemeral != nil || s.PersistentVolumeClaim != nil || s.Projected != nil || s.Secret != nil
	}
	for _, vol := range spec.Volumes {
		if !allowedVolumes(vol) {
			add("volume %q has a type restricted does not allow", vol.Name)
		}
	}
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		add("pod runAsUser 0")
	}
	if psc.SELinuxOptions != nil && !seLinuxOK(psc.SELinuxOptions) {
		add("pod seLinuxOptions %+v", psc.SELinuxOptions)
	}
	if psc.SeccompProfile != nil && !seccompOK(psc.SeccompProfile) {
		add("pod seccompProfile %s", psc.SeccompProfile.Type)
	}
	if psc.AppArmorProfile != nil && psc.AppArmorProfile.Type == corev1.AppArmorProfileTypeUnconfined {
		add("pod appArmorProfile Unconfined")
	}
	safeSysctls := []string{"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
		"net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
		"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
	for _, s := range psc.Sysctls {
		if !slices.Contains(safeSysctls, s.Name) {
			add("unsafe sysctl %s", s.Name)
		}
	}
	if psc.WindowsOptions != nil && psc.WindowsOptions.HostProcess != nil && *psc.WindowsOptions.HostProcess {
		add("pod hostProcess")
	}
	var all []corev1.Container
	all = append(all, spec.InitContainers...)
	all = append(all, spec.Containers...)
	for _, ec := range spec.EphemeralContainers {
		all = append(all, corev1.Container(ec.EphemeralContainerCommon))
	}
	for _, c := range all {
		sc := c.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		name := c.Name
		if sc.Privileged != nil && *sc.Privileged {
			add("%s: privileged", name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			add("%s: allowPrivilegeEscalation must be false", name)
		}
		nonRoot := psc.RunAsNonRoot
		if sc.RunAsNonRoot != nil {
			nonRoot = sc.RunAsNonRoot
		}
		if nonRoot == nil || !*nonRoot {
			add("%s: runAsNonRoot must be true", name)
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			add("%s: runAsUser 0", name)
		}
		seccomp := psc.SeccompProfile
		if sc.SeccompProfile != nil {
			seccomp = sc.SeccompProfile
		}
		if seccomp == nil || !seccompOK(seccomp) {
			add("%s: seccompProfile must be RuntimeDefault or Localhost", name)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			add("%s: capabilities must drop ALL", name)
		}
		if sc.Capabilities != nil {
			for _, capability := range sc.Capabilities.Add {
				if capability != "NET_BIND_SERVICE" {
					add("%s: adds capability %s", name, capability)
				}
			}
		}
		if sc.SELinuxOptions != nil && !seLinuxOK(sc.SELinuxOptions) {
			add("%s: seLinuxOptions %+v", name, sc.SELinuxOptions)
		}
		if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
			add("%s: procMount %s", name, *sc.ProcMount)
		}
		if sc.AppArmorProfile != nil && sc.AppArmorProfile.Type == corev1.AppArmorProfileTypeUnconfined {
			add("%s: appArmorProfile Unconfined", name)
		}
		if sc.WindowsOptions != nil && sc.WindowsOptions.HostProcess != nil && *sc.WindowsOptions.HostProcess {
			add("%s: hostProcess", name)
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				add("%s: hostPort %d", name, p.HostPort)
			}
		}
		// This chart's own rule on top of the standard.
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			add("%s: readOnlyRootFilesystem must be true", name)
		}
	}
	return v
}

func seccompOK(p *corev1.SeccompProfile) bool {
	return p.Type == corev1.SeccompProfileTypeRuntimeDefault || p.Type == corev1.SeccompProfileTypeLocalhost
}

func seLinuxOK(o *corev1.SELinuxOptions) bool {
	return o.User == "" && o.Role == "" &&
		slices.Contains([]string{"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}, o.Type)
}

// Every container of every pod the chart creates (webhook, Redis with its
// init containers, test hooks), for the defaults, every ci values file and
// the variants that add containers, passes the restricted standard.
func TestRestrictedPodSecurity(t *testing.T) {
	cases := []renderOpts{
		{values: "redis: {persistence: {enabled: false}}"},
		{values: "istio: {enabled: true}\nnetworkPolicy: {enabled: true}"},
	}
	for _, f := range ciValuesFiles(t) {
		cases = append(cases, renderOpts{valuesFile: f})
	}
	for _, o := range cases {
		t.Run(o.valuesFile+o.values, func(t *testing.T) {
			r := mustRender(t, o)
			ws := r.workloads(t)
			if len(ws) == 0 {
				t.Fatal("no workloads")
			}
			containers := 0
			for _, w := range ws {
				containers += len(w.spec.Containers) + len(w.spec.InitContainers)
				for _, msg := range restrictedViolations(w.spec) {
					t.Errorf("%s %s: %s", w.kind, w.name, msg)
				}
			}
			if containers == 0 {
				t.Error("no containers checked")
			}
		})
	}
}

// The checker itself finds each violation.
func TestRestrictedCheckerCatches(t *testing.T) {
	r := mustRender(t, renderOpts{})
	good := r.statefulSet(t).Spec.Template.Spec
	if v := restrictedViolations(good); len(v) != 0 {
		t.Fatalf("the Redis pod is not restricted: %v", v)
	}
	tr, fa := true, false
	root := int64(0)
	unconfined := corev1.ProcMountType("Unmasked")
	tests := []struct {
		name   string
		mutate func(s *corev1.PodSpec)
	}{
		{"host network", func(s *corev1.PodSpec) { s.HostNetwork = true }},
		{"hostPath volume", func(s *corev1.PodSpec) {
			s.Volumes = append(s.Volumes, corev1.Volume{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}})
		}},
		{"no pod seccomp and none on an init container", func(s *corev1.PodSpec) {
			s.SecurityContext.SeccompProfile = nil
			s.InitContainers[0].SecurityContext.SeccompProfile = nil
		}},
		{"unconfined seccomp on a container", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}
		}},
		{"privilege escalation unset on an init container", func(s *corev1.PodSpec) { s.InitContainers[0].SecurityContext.AllowPrivilegeEscalation = nil }},
		{"privileged", func(s *corev1.PodSpec) { s.Containers[0].SecurityContext.Privileged = &tr }},
		{"runAsNonRoot false on a container", func(s *corev1.PodSpec) { s.Containers[0].SecurityContext.RunAsNonRoot = &fa }},
		{"runAsNonRoot nowhere", func(s *corev1.PodSpec) {
			s.SecurityContext.RunAsNonRoot = nil
			for i := range s.Containers {
				s.Containers[i].SecurityContext.RunAsNonRoot = nil
			}
		}},
		{"runAsUser 0", func(s *corev1.PodSpec) { s.SecurityContext.RunAsUser = &root }},
		{"capabilities not dropped", func(s *corev1.PodSpec) { s.Containers[0].SecurityContext.Capabilities.Drop = nil }},
		{"capability added", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext.Capabilities.Add = []corev1.Capability{"NET_RAW"}
		}},
		{"host port", func(s *corev1.PodSpec) { s.Containers[0].Ports[0].HostPort = 6379 }},
		{"unsafe sysctl", func(s *corev1.PodSpec) {
			s.SecurityContext.Sysctls = []corev1.Sysctl{{Name: "kernel.msgmax", Value: "1"}}
		}},
		{"proc mount", func(s *corev1.PodSpec) { s.Containers[0].SecurityContext.ProcMount = &unconfined }},
		{"writable root filesystem", func(s *corev1.PodSpec) { s.Containers[0].SecurityContext.ReadOnlyRootFilesystem = &fa }},
		{"no security context", func(s *corev1.PodSpec) { s.InitContainers[0].SecurityContext = nil }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := r.statefulSet(t).Spec.Template.Spec // a fresh copy
			tc.mutate(&s)
			if v := restrictedViolations(s); len(v) == 0 {
				t.Errorf("not caught")
			}
		})
	}
}
