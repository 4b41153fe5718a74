{{- define "streamjob.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamjob.labels" -}}
app.kubernetes.io/name: streamjob-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streamjob.selectorLabels" -}}
app.kubernetes.io/name: streamjob-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streamjob.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "streamjob.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "streamjob.namespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- join "," .Values.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The permissions of the operator in each watched namespace: exactly what it calls.
     StreamJobs: kopf lists/watches them and patches finalizers and its annotations, the
     operator reads one and patches its status; streamjobs/finalizers: update is what owner
     references with blockOwnerDeletion need. Pods: listed/watched, created, deleted (never
     patched). Services, Secrets, NetworkPolicies: only created (a 409 on create is success;
     the StreamJob owns them, so the garbage collector deletes them). No get/list/watch on
     Secrets: the API token is derived from the operator's key, never read back. Events:
     create. Nothing cluster-scoped. */}}
{{- define "streamjob.rules" -}}
- apiGroups: [streamjob.dev]
  resources: [streamjobs]
  verbs: [get, list, watch, patch]
- apiGroups: [streamjob.dev]
  resources: [streamjobs/status]
  verbs: [patch]
- apiGroups: [streamjob.dev]
  resources: [streamjobs/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, delete]
- apiGroups: [""]
  resources: [services, secrets]
  verbs: [create]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end -}}

{{- define "streamjob.tokenKeySecret" -}}
{{- printf "%s-token-key" (include "streamjob.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
