#!/usr/bin/env python3
"""Validates every Kubernetes manifest in deploy/ offline: core kinds against the
Kubernetes API schemas (PyPI's kubernetes-validate, strict: unknown fields fail),
custom resources (KServe, Gateway API, Inference Extension) against the JSON schemas
kept in deploy/schemas (with their source and licence). Each manifest file is checked
as written, and, when `kubectl` is installed, each Kustomize directory as rendered by
`kubectl kustomize` (overlays included).

    target/pyenv/bin/python scripts/validate-deploy.py [--require-kubectl]

Needs: pip install kubernetes-validate jsonschema pyyaml (scripts/test.sh does)."""

import argparse
import re
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33.0"
CRD_SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice_v1beta1.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime_v1alpha1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute_v1.json",
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepool_v1.json",
}


def closed(schema):
    """The schema with additionalProperties: false wherever properties are listed and
    unknown fields are not explicitly kept (the API server would prune them: a typo)."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def check(doc, where, schemas):
    if not isinstance(doc, dict):
        return [f"{where}: not a mapping"]
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f"{where}: {key[1]} {doc.get('metadata', {}).get('name', '?')}"
    if key in CRD_SCHEMAS:
        schema = schemas.setdefault(key, closed(json.loads((DEPLOY / "schemas" / CRD_SCHEMAS[key]).read_text())))
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        return [f"{name}: {'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.utils.ValidationError as e:
        return [f"{name}: {'/'.join(map(str, e.path))}: {e.message}"]
    except kubernetes_validate.utils.SchemaNotFoundError:
        return [f"{name}: no schema for {key[0]} {key[1]}; add its CRD schema to deploy/schemas"]
    return []


def check_dockerfile():
    """The image's Rust toolchain must be at least the workspace's `rust-version`, or
    the build stage fails (a drift no manifest schema catches)."""
    want = re.search(r'^rust-version\s*=\s*"(\d+)\.(\d+)', (ROOT / "Cargo.toml").read_text(), re.M)
    errors = []
    for df in sorted(DEPLOY.rglob("Dockerfile*")):
        for m in re.finditer(r"^FROM\s+rust:(\d+)\.(\d+)", df.read_text(), re.M):
            have = (int(m.group(1)), int(m.group(2)))
            if want and have < (int(want.group(1)), int(want.group(2))):
                errors.append(f"{df.relative_to(ROOT)}: builds with rust:{have[0]}.{have[1]}, but the "
                              f"workspace needs rust-version {want.group(1)}.{want.group(2)}; raise the base image")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--require-kubectl", action="store_true",
                    help="fail when kubectl is missing instead of skipping the rendered overlays")
    args = ap.parse_args()
    schemas, errors, count = {}, [], 0
    manifests = [p for p in sorted(DEPLOY.rglob("*.yaml"))
                 if p.name != "kustomization.yaml" and "monitoring" not in p.parts]
    for path in manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            count += 1
            errors += check(doc, str(path.relative_to(ROOT)), schemas)
    errors += check_dockerfile()
    kustomizations = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))
    kubectl = shutil.which("kubectl")
    if kubectl:
        for d in kustomizations:
            rendered = subprocess.run([kubectl, "kustomize", str(d)], capture_output=True, text=True)
            if rendered.returncode != 0:
                errors.append(f"{d.relative_to(ROOT)}: kubectl kustomize failed: {rendered.stderr.strip()}")
                continue
            for doc in yaml.safe_load_all(rendered.stdout):
                if doc is not None:
                    count += 1
                    errors += check(doc, f"{d.relative_to(ROOT)} (rendered)", schemas)
    elif args.require_kubectl:
        errors.append("kubectl is not installed, so the Kustomize overlays cannot be rendered; "
                      "install it (https://kubernetes.io/docs/tasks/tools/) or drop --require-kubectl")
    else:
        print(f"note: kubectl not found; {len(kustomizations)} kustomizations not rendered", file=sys.stderr)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"{count} resources checked ({len(manifests)} files, "
          f"{len(kustomizations) if kubectl else 0} kustomizations rendered): "
          f"{'OK' if not errors else f'{len(errors)} errors'}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
