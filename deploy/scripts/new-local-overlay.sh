#!/bin/sh
# Write deploy/k8s/overlays/local/: your own, git-ignored overlay on top of a shipped one, whose Secret
# `varsweep-db` holds real credentials instead of the repository's placeholders.
#
#   deploy/scripts/new-local-overlay.sh dev            # or gpu: random password for the in-cluster Postgres
#   VARSWEEP_DATABASE_URL=postgresql+psycopg://u:p@db:5432/varsweep \
#   MLFLOW_BACKEND_STORE_URI=postgresql+psycopg://u:p@db:5432/mlflow \
#     deploy/scripts/new-local-overlay.sh external-db  # URLs of a database you run
#   kubectl apply -k deploy/k8s/overlays/local
#
# Optional: VARSWEEP_OPTUNA_URL in the environment is added too (moves the Optuna study).
# The password is written only to overlays/local/secrets.env (mode 600, git-ignored), never printed.
# Note: the in-cluster Postgres takes its password on first start only; changing secrets.env later needs an
# `ALTER USER ... PASSWORD` on the server as well.
set -eu

usage() {
    echo "usage: $0 <overlay>   (an existing directory under deploy/k8s/overlays, e.g. dev, gpu, external-db)" >&2
    exit 2
}
[ "$#" -eq 1 ] || usage
overlay=$1
case "$overlay" in local | */* | .*) usage ;; esac

k8s=$(cd "$(dirname "$0")/../k8s" && pwd)
[ -f "$k8s/overlays/$overlay/kustomization.yaml" ] || {
    echo "no overlay '$overlay' in $k8s/overlays" >&2
    exit 2
}
out=$k8s/overlays/local
if [ -e "$out/secrets.env" ]; then
    echo "$out/secrets.env exists: not overwriting credentials (remove it first to start over)" >&2
    exit 1
fi

if [ "$overlay" = external-db ]; then
    : "${VARSWEEP_DATABASE_URL:?set VARSWEEP_DATABASE_URL (postgresql+psycopg://user:pass@host:5432/varsweep)}"
    : "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql+psycopg://user:pass@host:5432/mlflow)}"
fi

umask 077 # secrets.env: readable by you only
mkdir -p "$out"
if [ "$overlay" = external-db ]; then
    printf 'VARSWEEP_DATABASE_URL=%s\nMLFLOW_BACKEND_STORE_URI=%s\n' \
        "$VARSWEEP_DATABASE_URL" "$MLFLOW_BACKEND_STORE_URI" >"$out/secrets.env"
else
    # 48 hex characters: strong, and safe inside a URL without escaping.
    password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    user=varsweep
    {
        printf 'POSTGRES_USER=%s\n' "$user"
        printf 'POSTGRES_PASSWORD=%s\n' "$password"
        printf 'VARSWEEP_DATABASE_URL=postgresql+psycopg://%s:%s@postgres:5432/varsweep\n' "$user" "$password"
        printf 'MLFLOW_BACKEND_STORE_URI=postgresql+psycopg://%s:%s@postgres:5432/mlflow\n' "$user" "$password"
    } >"$out/secrets.env"
fi
if [ -n "${VARSWEEP_OPTUNA_URL:-}" ]; then
    printf 'VARSWEEP_OPTUNA_URL=%s\n' "$VARSWEEP_OPTUNA_URL" >>"$out/secrets.env"
fi

umask 022
cat >"$out/kustomization.yaml" <<EOF
# Written by deploy/scripts/new-local-overlay.sh. Git-ignored (deploy/.gitignore): never commit this folder.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization

resources:
  - ../$overlay

# Replaces the placeholder Secret of the shipped overlay with the values in secrets.env.
secretGenerator:
  - name: varsweep-db
    behavior: replace
    envs:
      - secrets.env
    options:
      # The RayCluster refers to the Secret by this exact name; kustomize cannot rewrite references inside
      # custom resources, so no hash suffix.
      disableNameSuffixHash: true

# Your registry and a pinned tag, never :latest (uncomment); the gpu overlay expects the CUDA variant, e.g.
# "0.1.0-cuda". Pods pull it with imagePullPolicy IfNotPresent: publish new code under a new tag.
# images:
#   - name: varsweep
#     newName: registry.example.com/varsweep
#     newTag: "<version or git sha>"
EOF
echo "wrote $out/ (kustomization.yaml, secrets.env) on top of overlays/$overlay"
echo "next: kubectl apply -k $out"
