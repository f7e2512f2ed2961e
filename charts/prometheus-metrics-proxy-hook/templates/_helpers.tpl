{{/*
Names. Kubernetes names are limited to 63 characters and a StatefulSet's to
52 (its pods' controller-revision-hash label adds 11); the longest suffix the
chart adds is "-redis-headless", so the base name is cut at 42.
*/}}
{{- define "pmph.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 42 | trimSuffix "-" -}}
{{- end -}}

{{- define "pmph.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pmph.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pmph.webhook.fullname" -}}
{{- include "pmph.fullname" . -}}
{{- end -}}

{{/* The coordination.k8s.io Lease through which one webhook replica reconciles. */}}
{{- define "pmph.reconciler.leaseName" -}}
{{- printf "%s-reconciler" (include "pmph.fullname" .) -}}
{{- end -}}

{{- define "pmph.redis.fullname" -}}
{{- printf "%s-redis" (include "pmph.fullname" .) -}}
{{- end -}}

{{/* The headless Service that gives every Redis pod its DNS name. */}}
{{- define "pmph.redis.headless" -}}
{{- printf "%s-redis-headless" (include "pmph.fullname" .) -}}
{{- end -}}

{{- define "pmph.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pmph.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels. "component" is one of webhook, redis, test. */}}
{{- define "pmph.labels" -}}
helm.sh/chart: {{ include "pmph.chart" .root }}
{{ include "pmph.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: {{ include "pmph.name" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "pmph.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pmph.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Images. */}}
{{- define "pmph.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "pmph.sidecarImage" -}}
{{- $s := .Values.sidecar.image -}}
{{- if or $s.repository $s.tag $s.digest -}}
{{- $repo := default .Values.image.repository $s.repository -}}
{{- $digest := default .Values.image.digest $s.digest -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $s.tag -}}
{{- if $digest -}}
{{- printf "%s@%s" $repo $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- else -}}
{{- include "pmph.image" . -}}
{{- end -}}
{{- end -}}

{{- define "pmph.redis.image" -}}
{{- $i := .Values.redis.image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository $i.tag -}}
{{- end -}}
{{- end -}}

{{/*
Redis. The webhook's node addresses are derived from the release (name,
namespace, cluster domain, replicas): <sts>-<i>.<headless>.<ns>.svc.<domain>:6379.
*/}}
{{- define "pmph.redis.hosts" -}}
{{- $sts := include "pmph.redis.fullname" . -}}
{{- $svc := include "pmph.redis.headless" . -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.redis.replicas) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s.%s.svc.%s" $sts $i $svc $.Release.Namespace $.Values.clusterDomain) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- end -}}

{{- define "pmph.redis.addresses" -}}
{{- include "pmph.validate" . -}}
{{- if .Values.redis.enabled -}}
{{- $addrs := list -}}
{{- range $h := splitList "," (include "pmph.redis.hosts" .) -}}
{{- $addrs = append $addrs (printf "%s:6379" $h) -}}
{{- end -}}
{{- join "," $addrs -}}
{{- else -}}
{{- join "," .Values.externalRedis.addresses -}}
{{- end -}}
{{- end -}}

{{/* Secret holding the Redis password the webhook uses, and its key. Empty when there is none. */}}
{{- define "pmph.redis.secretName" -}}
{{- if .Values.redis.enabled -}}
{{- default (printf "%s-auth" (include "pmph.redis.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- else if .Values.externalRedis.existingSecret -}}
{{- .Values.externalRedis.existingSecret -}}
{{- else if .Values.externalRedis.password -}}
{{- printf "%s-external-redis" (include "pmph.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "pmph.redis.secretKey" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecretPasswordKey }}{{- else -}}redis-password{{- end -}}
{{- else if .Values.externalRedis.existingSecret -}}
{{- .Values.externalRedis.existingSecretPasswordKey -}}
{{- else -}}
redis-password
{{- end -}}
{{- end -}}

{{/* The ports of the external Redis nodes, for NetworkPolicy egress. */}}
{{- define "pmph.externalRedis.ports" -}}
{{- $ports := list -}}
{{- range $a := .Values.externalRedis.addresses -}}
{{- $p := regexFind "[0-9]+$" $a -}}
{{- if not (has $p $ports) -}}{{- $ports = append $ports $p -}}{{- end -}}
{{- end -}}
{{- join "," $ports -}}
{{- end -}}

{{/* A Go duration (1h1m, 1.5m, 500ms) in whole seconds, rounded up. */}}
{{- define "pmph.durationSeconds" -}}
{{- $scale := dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001 "us" 0.000001 "µs" 0.000001 "ns" 0.000000001 -}}
{{- $total := 0.0 -}}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|h|m|s)" . -1 -}}
{{- $unit := regexFind "(ns|us|µs|ms|h|m|s)$" $part -}}
{{- $total = addf $total (mulf (float64 (trimSuffix $unit $part)) (get $scale $unit)) -}}
{{- end -}}
{{- int (ceil $total) -}}
{{- end -}}

{{/* Serving certificate names and the webhook Service's DNS names. */}}
{{- define "pmph.servingSecretName" -}}
{{- if .Values.certManager.enabled -}}
{{- printf "%s-tls" (include "pmph.fullname" .) -}}
{{- else -}}
{{- .Values.tls.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "pmph.leaseURL" -}}
{{- printf "https://%s.%s.svc:443" (include "pmph.webhook.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/*
Pod anti-affinity preset. Arguments: root, component, preset.
*/}}
{{- define "pmph.podAntiAffinity" -}}
{{- if eq .preset "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "pmph.selectorLabels" . | nindent 12 }}
{{- else if eq .preset "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "pmph.selectorLabels" . | nindent 10 }}
{{- end }}
{{- end -}}

{{/* Topology spread constraints with the component's selector filled in. Arguments: root, component, constraints. */}}
{{- define "pmph.topologySpreadConstraints" -}}
{{- $sel := fromYaml (include "pmph.selectorLabels" .) -}}
{{- $out := list -}}
{{- range $c := .constraints -}}
{{- $c := deepCopy $c -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $sel) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for pods and containers. */}}
{{- define "pmph.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "pmph.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Checks that the schema cannot express; also guards installs made with
--skip-schema-validation.
*/}}
{{- define "pmph.validate" -}}
{{- if .Values.redis.enabled -}}
{{- if or (lt (int .Values.redis.replicas) 1) (eq (mod (int .Values.redis.replicas) 2) 0) -}}
{{- fail (printf "redis.replicas must be odd (1, 3, 5, ...) so that a majority quorum exists; got %v" .Values.redis.replicas) -}}
{{- end -}}
{{- if .Values.externalRedis.addresses -}}
{{- fail "redis.enabled and externalRedis.addresses are mutually exclusive: set redis.enabled=false to use external Redis nodes" -}}
{{- end -}}
{{- else -}}
{{- $n := len .Values.externalRedis.addresses -}}
{{- if eq $n 0 -}}
{{- fail "externalRedis.addresses must list the Redis nodes (host:port) when redis.enabled is false" -}}
{{- end -}}
{{- if eq (mod $n 2) 0 -}}
{{- fail (printf "externalRedis.addresses must list an odd number of nodes so that a majority quorum exists; got %d" $n) -}}
{{- end -}}
{{- if and .Values.externalRedis.password .Values.externalRedis.existingSecret -}}
{{- fail "externalRedis.password and externalRedis.existingSecret are mutually exclusive" -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.certManager.enabled) (or (not .Values.tls.existingSecret) (not .Values.tls.caBundle)) -}}
{{- fail "certManager.enabled is false: set tls.existingSecret (tls.crt, tls.key, ca.crt) and tls.caBundle" -}}
{{- end -}}
{{- end -}}

{{- define "pmph.servingCertName" -}}
{{- printf "%s-serving" (include "pmph.fullname" .) -}}
{{- end -}}
