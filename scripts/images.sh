#!/usr/bin/env bash
# Push every filter module in dist/wasm as an OCI image and record what was pushed.
#
#   bash scripts/images.sh REGISTRY        (what `make images REGISTRY=127.0.0.1:5000` runs)
#
# - Each dist/wasm/<name>.wasm goes to REGISTRY/portcullis/<name with _ as ->:<workspace version>.
# - dist/images.json lists name, ref, manifest digest and wasm sha256 of each.
# - dist/kubernetes/ gets copies of examples/kubernetes/*.yaml pointing at these images, with
#   their digests filled in.
# Env: PORTCULLIS_BIN (the portcullis binary; default: build target/release/portcullis),
#      IMAGE_PREFIX (default portcullis), OCI_FLAGS (extra flags for `portcullis oci push`,
#      e.g. "--format artifact" or "--docker-config ~/.docker/config.json"),
#      UPDATE_EXAMPLES=1 (also write the new digests into examples/kubernetes/ in place, keeping
#      their registry host: for maintainers after a filter change).
set -euo pipefail

cd "$(dirname "$0")/.."
registry="${1:-${REGISTRY:-}}"
if [[ -z "$registry" ]]; then
  echo "usage: $0 REGISTRY   (e.g. 127.0.0.1:5000)" >&2
  exit 2
fi
registry="${registry%/}"
prefix="${IMAGE_PREFIX:-portcullis}"

shopt -s nullglob
modules=(dist/wasm/*.wasm)
if ((${#modules[@]} == 0)); then
  echo "no modules in dist/wasm: run \`make build-wasm\` first" >&2
  exit 1
fi

# The workspace version, from [workspace.package] in Cargo.toml.
version="$(awk '/^\[workspace.package\]/{p=1; next} /^\[/{p=0} p && $1=="version" {gsub(/"/, "", $3); print $3; exit}' Cargo.toml)"
if [[ -z "$version" ]]; then
  echo "cannot read the workspace version from Cargo.toml" >&2
  exit 1
fi

bin="${PORTCULLIS_BIN:-}"
if [[ -z "$bin" ]]; then
  # A no-op when `make images` has just built it.
  cargo build --release -q -p portcullis --bin portcullis
  bin=target/release/portcullis
fi

mkdir -p dist
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
declare -A digest_of ref_of
{
  echo "["
  sep=""
  for f in "${modules[@]}"; do
    file="$(basename "$f" .wasm)"
    name="${file//_/-}"
    ref="$registry/$prefix/$name:$version"
    # shellcheck disable=SC2086 # OCI_FLAGS is a list of flags
    digest="$("$bin" oci push --quiet ${OCI_FLAGS:-} "$f" "$ref")"
    wasm_sha256="$(sha256sum "$f" | cut -d' ' -f1)"
    digest_of[$name]="${digest#sha256:}"
    ref_of[$name]="$ref"
    echo "pushed $ref  $digest" >&2
    printf '%s  {"name": "%s", "ref": "%s", "manifest_digest": "%s", "wasm_sha256": "%s"}' \
      "$sep" "$name" "$ref" "$digest" "$wasm_sha256"
    sep=$',\n'
  done
  printf '\n]\n'
} >"$tmp"
mv "$tmp" dist/images.json
trap - EXIT
echo "wrote dist/images.json" >&2

# Rendered examples: each `url: .../<prefix>/<name>:<tag>` becomes this push's ref, and the
# `sha256:` line that follows it gets this push's manifest digest.
mkdir -p dist/kubernetes
for src in examples/kubernetes/*.yaml; do
  out="dist/kubernetes/$(basename "$src")"
  cp "$src" "$out"
  for name in "${!digest_of[@]}"; do
    sed -i -E \
      -e "/^[[:space:]]*url: [^ ]*\/$prefix\/$name:[^ ]*\$/{s#url: .*#url: ${ref_of[$name]}#;n;s#(sha256: )\"?[0-9a-f]{64}\"?#\\1\"${digest_of[$name]}\"#}" \
      "$out"
  done
done
echo "wrote dist/kubernetes/ ($(ls dist/kubernetes | wc -l) files)" >&2

if [[ "${UPDATE_EXAMPLES:-0}" == 1 ]]; then
  for src in examples/kubernetes/*.yaml; do
    for name in "${!digest_of[@]}"; do
      sed -i -E \
        -e "/^[[:space:]]*url: [^ ]*\/$prefix\/$name:[^ ]*\$/{n;s#(sha256: )\"?[0-9a-f]{64}\"?#\\1\"${digest_of[$name]}\"#}" \
        "$src"
    done
  done
  echo "updated the digests in examples/kubernetes/" >&2
fi
