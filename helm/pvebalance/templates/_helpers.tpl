{{- define "pvebalance.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pvebalance.fullname" -}}
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

{{- define "pvebalance.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pvebalance.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pvebalance.labels" -}}
{{ include "pvebalance.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pvebalance.secretName" -}}
{{- default (printf "%s-proxmox" (include "pvebalance.fullname" .)) .Values.proxmox.existingSecret -}}
{{- end -}}

{{- define "pvebalance.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pvebalance.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pvebalance.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The services that run in this release: collector, planner, migrator, and the API if enabled. */}}
{{- define "pvebalance.components" -}}
{{- $list := list "collector" "planner" "migrator" -}}
{{- if .Values.api.enabled -}}{{- $list = append $list "api" -}}{{- end -}}
{{- join " " $list -}}
{{- end -}}
