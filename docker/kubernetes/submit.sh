#!/usr/bin/env bash
# Submit one medbench entry point as a Kubernetes Job through MLflow Projects.
#
#   docker/kubernetes/submit.sh IMAGE -e cv -P model=swinunet -P dataset=kvasir_seg
#
# MLflow's Kubernetes backend needs a project with `docker_env`, while the repository's
# MLproject uses `conda_env` so that `mlflow run --env-manager local` works on a laptop.
# This script copies the project into a temporary folder, swaps the environment for
# `docker_env: {image: IMAGE}` (IMAGE built from docker/Dockerfile and pushed to a registry
# the cluster can pull from), and runs `mlflow run --backend kubernetes` on that copy.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 IMAGE [mlflow run options: -e ENTRY -P name=value ...]" >&2
    exit 2
fi
image=$1
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp -r "$root/MLproject" "$root/pyproject.toml" "$root/README.md" "$root/medbench" "$root/entrypoints" "$root/docker" "$work/"
sed -i "s|^conda_env: conda.yaml$|docker_env:\n  image: $image|" "$work/MLproject"
grep -q "^docker_env:" "$work/MLproject" || { echo "could not set docker_env in MLproject" >&2; exit 1; }
cd "$work"
mlflow run . --backend kubernetes --backend-config docker/kubernetes/backend-config.json "$@"
