{{- define "llamanet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llamanet.labels" -}}
app.kubernetes.io/name: llamanet-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "llamanet.selectorLabels" -}}
app.kubernetes.io/name: llamanet-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "llamanet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "llamanet.nodeImage" -}}
{{ .Values.nodeImage.repository }}:{{ .Values.nodeImage.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "llamanet.routerImage" -}}
{{ .Values.routerImage.repository }}:{{ .Values.routerImage.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The Secret with the swarm's pre-shared key: the user's, the generated one, or none. */}}
{{- define "llamanet.swarmKeySecret" -}}
{{- if .Values.swarm.privateKeySecret.name -}}
{{- .Values.swarm.privateKeySecret.name -}}
{{- else if .Values.swarm.private -}}
{{- printf "%s-swarm-key" (include "llamanet.fullname" .) -}}
{{- end -}}
{{- end -}}
