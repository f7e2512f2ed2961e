package main

import (
	"fmt"
	"strings"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
)

// The manifests are written as a user would write them (and shown with
// cat), so they are YAML text rather than marshalled structs. Every pod
// passes the restricted Pod Security Standard on its own.

const restrictedPodSpec = `  securityContext:
    runAsNonRoot: true
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: app
      image: registry.k8s.io/pause:3.10
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop: [ALL]
`

func annotationsYAML(annotations [][2]string, indent string) string {
	if len(annotations) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(indent + "annotations:\n")
	for _, a := range annotations {
		fmt.Fprintf(&b, "%s  %s: %q\n", indent, a[0], a[1])
	}
	return b.String()
}

func podYAML(name string, annotations [][2]string) string {
	return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n" +
		annotationsYAML(annotations, "  ") + "spec:\n" + restrictedPodSpec
}

// appPodSpec is the pod spec of the app that serves metrics on the node
// (the metrics-app image, a counter on :8080/metrics), restricted as the
// chart's users run it.
var appPodSpec = fmt.Sprintf(`  securityContext:
    runAsNonRoot: true
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: app
      image: %s
      ports:
        - name: metrics
          containerPort: %d
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: [ALL]
`, images.MetricsAppRef, images.MetricsAppPort)

// deploymentYAML is a Deployment whose pod template has podSpec
// (restrictedPodSpec or appPodSpec).
func deploymentYAML(name string, replicas int, annotations [][2]string, podSpec string) string {
	spec := strings.ReplaceAll(podSpec, "\n  ", "\n      ")
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[1]s
spec:
  replicas: %[2]d
  selector:
    matchLabels:
      app: %[1]s
  template:
    metadata:
      labels:
        app: %[1]s
%[3]s    spec:
      %[4]s`, name, replicas, annotationsYAML(annotations, "      "), strings.TrimPrefix(spec, "  "))
}
