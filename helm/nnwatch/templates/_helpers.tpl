{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "nnwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name of every object: fullnameOverride, else the release name when it already contains the
chart name, else "<release>-<chart>"; 63 characters at most (DNS label).
*/}}
{{- define "nnwatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "nnwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Namespace of every object: namespaceOverride, else the release namespace.
*/}}
{{- define "nnwatch.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of this chart (not selectors: they change with the chart version).
*/}}
{{- define "nnwatch.labels" -}}
helm.sh/chart: {{ include "nnwatch.chart" . }}
{{ include "nnwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nnwatch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Stable labels that identify this release's objects.
*/}}
{{- define "nnwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nnwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
A PromQL number from a value: integers without an exponent (Helm reads YAML numbers as float64, which
would print 33554432 as 3.3554432e+07), other numbers as Go prints them, strings verbatim.
*/}}
{{- define "nnwatch.promNumber" -}}
{{- if kindIs "string" . }}{{ . }}
{{- else if eq (float64 .) (floor (float64 .)) }}{{ int64 . }}
{{- else }}{{ . }}
{{- end }}
{{- end }}

{{/*
Sanitised Prometheus meta label of a pod label: nnwatch.io/job -> __meta_kubernetes_pod_label_nnwatch_io_job.
*/}}
{{- define "nnwatch.podLabelMeta" -}}
{{- printf "__meta_kubernetes_pod_label_%s" (regexReplaceAll "[^a-zA-Z0-9_]" . "_") }}
{{- end }}
