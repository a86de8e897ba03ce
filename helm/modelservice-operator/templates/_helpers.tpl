{{/* Names are cut to 63 characters, the limit of a Kubernetes label value and DNS label. */}}
{{- define "msv.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "msv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "msv.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The model cache agents' DaemonSet and Service. */}}
{{- define "msv.cacheName" -}}
{{- printf "%s-model-cache" (include "msv.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Not the operator's selector labels: its Service and PDB must not select the agents. */}}
{{- define "msv.cacheSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-model-cache
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "msv.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "msv.labels" -}}
{{ include "msv.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* What the operator does in a namespace it watches (docs/operator-config.md, "RBAC"). */}}
{{- define "msv.namespacedRules" -}}
- apiGroups: [serving.modelservice.dev]
  resources: [modelservices]
  verbs: [get, list, watch]
- apiGroups: [serving.modelservice.dev]
  resources: [modelservices/status]
  verbs: [patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways]
  verbs: [get]  # is the parent of a ModelService's HTTPRoute Programmed? (read, never watched)
- apiGroups: [gateway.networking.x-k8s.io]
  resources: [xbackendtrafficpolicies]
  verbs: [get, list, watch, create, patch, delete]  # the retry budget of the HTTPRoute's Services
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]  # patch: the serving label and mirror annotation (no restarts)
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [metrics.k8s.io]
  resources: [pods]
  verbs: [get, list]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, create, patch, delete]  # the optimization pipeline's build Jobs
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]  # a build Job's progress and, when it fails, its last lines
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]  # scale to zero: KEDA makes the HPA
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch, create, patch, delete]  # <service>-activator slices only
{{- end -}}

{{/* GPU fit's reads of spec.model.credentialsSecret (gpuFit.readModelCredentials): get on
     Secrets where the operator watches ModelServices, nothing else. */}}
{{- define "msv.credentialRules" -}}
{{- if or (and .Values.gpuFit.enabled .Values.gpuFit.readModelCredentials) (.Values.optimization | default dict).readOutputCredentials }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- end -}}

{{/* The model-server images, one per runtime (docs/operator-config.md): MSV_<RUNTIME>_IMAGE
     and MSV_<RUNTIME>_GPU_IMAGE; an empty value means that runtime is not served there. The
     single image of 0.1.0 is refused: it cannot say which runtime it carries. */}}
{{- define "msv.modelServerImages" -}}
{{- if or .Values.modelServer.image .Values.modelServer.gpuImage -}}
{{- fail "modelServer.image and modelServer.gpuImage were replaced by one image per runtime: set modelServer.images.<runtime>.image and .gpuImage for the runtimes torch and tensorflow instead (docs/install.md, \"Upgrading\")" -}}
{{- end -}}
{{- range $runtime, $images := .Values.modelServer.images }}
{{- $env := $runtime | upper | replace "-" "_" }}
- name: MSV_{{ $env }}_IMAGE
  value: {{ $images.image | default "" | quote }}
- name: MSV_{{ $env }}_GPU_IMAGE
  value: {{ $images.gpuImage | default "" | quote }}
{{- end }}
{{- end -}}

{{/* The activator (docs/scale-to-zero.md): its Deployment, Service (KEDA's scaler address:
     <name>.<release namespace>.svc:9090) and ServiceAccount. */}}
{{- define "msv.activatorName" -}}
{{- printf "%s-activator" (include "msv.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Not the operator's selector labels: its Service and PDB must not select the activator. */}}
{{- define "msv.activatorSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-activator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* What the activator reads where ModelServices are: Services and their EndpointSlices. */}}
{{- define "msv.activatorRules" -}}
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
{{- end -}}
