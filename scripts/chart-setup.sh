#!/usr/bin/env bash
# Idempotent: installs what the Helm chart tests need into .venv (no helm binary needed):
#   helm-python-sdk     Helm v4 Go SDK behind a C ABI: render + lint, offline
#   kubernetes-validate offline Kubernetes OpenAPI schemas (strict)
#   pyyaml, jsonschema  CRD openAPIV3Schema validation of custom resources
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv"
HELM_SDK_VERSION="0.2.2"
KUBERNETES_VALIDATE_VERSION="1.37.0"

log() { printf '\033[1;34m[chart-setup]\033[0m %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "python: creating $VENV"
  python3 -m venv "$VENV"
fi
have() { "$VENV/bin/python" -c "import importlib.metadata as m,sys; sys.exit(m.version('$1')!='$2')" 2>/dev/null; }
want=()
have helm-python-sdk "$HELM_SDK_VERSION" || want+=("helm-python-sdk==$HELM_SDK_VERSION")
have kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" || want+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
"$VENV/bin/python" -c "import yaml, jsonschema" 2>/dev/null || want+=(pyyaml jsonschema)
if [ ${#want[@]} -gt 0 ]; then
  log "pip: installing ${want[*]}"
  "$VENV/bin/pip" install -q "${want[@]}"
fi
