"""Validate KServe manifests against KServe's own CRD schemas, vendored in docker/kserve/crds/.

The CRDs are config/crd/full/serving.kserve.io_{servingruntimes,inferenceservices}.yaml of
github.com/kserve/kserve at tag v0.20.0 (commit 1fb781055dd1567164358233e1125142ca6ef1fe), gzipped as
fetched. kubernetes-validate knows only Kubernetes' own kinds, so `make lint` runs this for KServe's:
each document is checked against the openAPIV3Schema of its kind and apiVersion, strictly (a field the
schema does not list is an error unless the schema preserves unknown fields), as `kubectl apply
--validate=strict` would against a cluster with KServe installed.

    python scripts/validate_kserve.py docker/kserve/*.yaml
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parents[1] / "docker" / "kserve" / "crds"


def load_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the strict openAPIV3Schema of every served version of the vendored CRDs."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml.gz")):
        crd = yaml.safe_load(gzip.decompress(path.read_bytes()))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schemas[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists its fields and does not preserve others."""
    schema = dict(schema)
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    if schema.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    for key in ("properties", "patternProperties"):
        if key in schema:
            schema[key] = {name: strict(sub) for name, sub in schema[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [strict(sub) for sub in schema[key]]
    return schema


def problems(path: Path, schemas: dict[tuple[str, str], dict]) -> list[str]:
    found = []
    for number, document in enumerate(yaml.safe_load_all(path.read_text()), start=1):
        if document is None:
            continue
        key = (document.get("apiVersion"), document.get("kind"))
        if key not in schemas:
            found.append(f"{path} document {number}: no vendored KServe schema for {key[1]} {key[0]}")
            continue
        validator = jsonschema.Draft7Validator(schemas[key])
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(part) for part in error.absolute_path) or "(top)"
            found.append(f"{path} document {number} ({key[1]}): {where}: {error.message}")
    return found


def main(paths: list[str]) -> int:
    schemas = load_schemas()
    found = [problem for path in paths for problem in problems(Path(path), schemas)]
    for problem in found:
        print(problem, file=sys.stderr)
    if not found:
        print(f"{len(paths)} KServe manifests valid against KServe v0.20.0's CRDs")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
