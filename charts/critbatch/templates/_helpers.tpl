{{/* The chart's name, cut to fit a DNS label. */}}
{{- define "critbatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name of the release's objects. */}}
{{- define "critbatch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "critbatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "critbatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: critbatch
{{- end -}}

{{/* Labels that select the operator's pods. */}}
{{- define "critbatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "critbatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels that select the trainer pods of every sweep (set by the operator). */}}
{{- define "critbatch.trainerSelectorLabels" -}}
app.kubernetes.io/managed-by: critbatch
{{- end -}}

{{- define "critbatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "critbatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: repository:tag, or repository@digest when a digest is given. */}}
{{- define "critbatch.image" -}}
{{- $img := index . 0 -}}
{{- $ctx := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $ctx.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Whether kopf's peering is on: more than one replica. */}}
{{- define "critbatch.peering" -}}
{{- if gt (int .Values.operator.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{- define "critbatch.peeringName" -}}
{{- default (include "critbatch.fullname" .) .Values.operator.peeringName -}}
{{- end -}}

{{/* The watched namespaces, unique and sorted (empty: all). */}}
{{- define "critbatch.watchNamespaces" -}}
{{- .Values.watchNamespaces | uniq | sortAlpha | join "," -}}
{{- end -}}

{{/* critbatch-operator's environment (docs/operator.md). */}}
{{- define "critbatch.operatorEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: CRITBATCH_NAMESPACES
  value: {{ include "critbatch.watchNamespaces" . | quote }}
- name: CRITBATCH_HEALTH_PORT
  value: {{ .Values.operator.healthPort | quote }}
- name: CRITBATCH_METRICS_PORT
  value: {{ .Values.operator.metricsPort | quote }}
- name: CRITBATCH_TRAINER_METRICS_PORT
  value: {{ .Values.trainerMetricsPort | quote }}
- name: CRITBATCH_TRAINER_IMAGE
  value: {{ include "critbatch.image" (list .Values.image.trainer .) | quote }}
- name: CRITBATCH_PROMETHEUS_URL
  value: {{ .Values.prometheusURL | quote }}
- name: CRITBATCH_ALLOW_POD_TEMPLATE
  value: {{ .Values.sweepPolicy.allowPodTemplate | join "," | quote }}
- name: CRITBATCH_ALLOW_PROMETHEUS_URLS
  value: {{ .Values.sweepPolicy.allowPrometheusURLs | join "," | quote }}
{{- end -}}

{{/* TCP ports of the Prometheus APIs the operator may query: networkPolicy.prometheusPort and
those of prometheusURL and sweepPolicy.allowPrometheusURLs (80 or 443 when they name none). */}}
{{- define "critbatch.prometheusPorts" -}}
{{- $ports := list (int .Values.networkPolicy.prometheusPort) -}}
{{- range (concat (list .Values.prometheusURL) .Values.sweepPolicy.allowPrometheusURLs) -}}
{{- if . -}}
{{- $url := urlParse . -}}
{{- $port := trimPrefix ":" (regexFind ":[0-9]+$" $url.host) -}}
{{- $ports = append $ports (int (default (ternary "443" "80" (eq $url.scheme "https")) $port)) -}}
{{- end -}}
{{- end -}}
{{- $ports | uniq | toJson -}}
{{- end -}}
