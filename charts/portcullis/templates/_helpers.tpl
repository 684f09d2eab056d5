{{/* Chart name, truncated to the 63-character label limit. */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name used as the prefix of every object. */}}
{{- define "portcullis.fullname" -}}
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

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the controller pods; never change across upgrades. */}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when the controller writes a NetworkPolicy per Envoy fleet (--fleet-network-policy). */}}
{{- define "portcullis.fleetNetworkPolicy" -}}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.fleets.enabled }}true{{ else }}false{{ end }}
{{- end }}

{{/*
RBAC rules for the namespaced kinds: in the ClusterRole when the controller watches the whole
cluster (watchNamespaces empty), else in a Role per watched namespace. Reads are the provider's
list+watch caches; writes are the Envoy fleet per Gateway (server-side apply: PATCH, plus create
for a new object) and the status subresources.
*/}}
{{- define "portcullis.namespacedRules" -}}
# Inputs to translation: watched (list+watch) and read.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways", "httproutes", "referencegrants", "backendtlspolicies"]
  verbs: ["get", "list", "watch"]
# Status is written with server-side apply (PATCH on the status subresource).
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways/status", "httproutes/status"]
  verbs: ["patch"]
- apiGroups: ["gateway.envoyproxy.io"]
  resources: ["envoyextensionpolicies", "securitypolicies", "backendtrafficpolicies", "backends", "envoyproxies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["gateway.envoyproxy.io"]
  resources: ["envoyextensionpolicies/status", "securitypolicies/status", "backendtrafficpolicies/status", "backends/status"]
  verbs: ["patch"]
# Services: backendRefs. Secrets: listener TLS certificates, pull secrets, OIDC client secrets
# (RBAC cannot narrow this to the Secrets policies reference: see README.md, "Secrets").
# ConfigMaps: Lua valueRefs.
- apiGroups: [""]
  resources: ["services", "secrets", "configmaps"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
# The managed Envoy fleet per Gateway: its xDS client-certificate Secret and bootstrap ConfigMap
# (removed with the Gateway by owner references, so never deleted here) ...
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["create", "patch"]
# ... and its Service, ServiceAccount and Deployment, deleted when a Gateway leaves our class.
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "patch", "delete"]
{{- if eq (include "portcullis.fleetNetworkPolicy" .) "true" }}
# The fleet's NetworkPolicy (networkPolicy.fleets.enabled).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch", "delete"]
{{- end }}
{{- end }}
