{{- define "pvebalance.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pvebalance.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "pvebalance.secretName" -}}
{{- default (printf "%s-proxmox" (include "pvebalance.fullname" .)) .Values.proxmox.existingSecret -}}
{{- end -}}
