{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "triserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: "<release>-triserve" unless the release name already says triserve. */}}
{{- define "triserve.fullname" -}}
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

{{- define "triserve.operatorName" -}}
{{- printf "%s-operator" (include "triserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "triserve.agentName" -}}
{{- printf "%s-agent" (include "triserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The agent's priority class: the one named in values, else the chart's own, else none. */}}
{{- define "triserve.agentPriorityClassName" -}}
{{- if .Values.agent.priorityClassName }}
{{- .Values.agent.priorityClassName }}
{{- else if .Values.agent.priorityClass.create }}
{{- include "triserve.agentName" . }}
{{- end }}
{{- end }}

{{- define "triserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "triserve.labels" -}}
helm.sh/chart: {{ include "triserve.chart" . }}
app.kubernetes.io/name: {{ include "triserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: triserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "agent"). */}}
{{- define "triserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "triserve.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "triserve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "triserve.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "triserve.operatorName" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "triserve.agentServiceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "triserve.agentName" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Prometheus job label of agent targets (a ServiceMonitor's job is the Service name). */}}
{{- define "triserve.agentJob" -}}
{{- if .Values.monitoring.prometheusRule.agentJob }}
{{- .Values.monitoring.prometheusRule.agentJob }}
{{- else if and .Values.monitoring.podMonitor.enabled (not .Values.monitoring.serviceMonitor.enabled) }}
{{- printf "%s/%s" .Release.Namespace (include "triserve.agentName" .) }}
{{- else }}
{{- include "triserve.agentName" . }}
{{- end }}
{{- end }}
