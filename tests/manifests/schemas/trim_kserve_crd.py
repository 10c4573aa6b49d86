"""Regenerate kserve_inferenceservice_v1beta1.yaml (the vendored KServe InferenceService schema) from a KServe checkout.

    git clone https://github.com/kserve/kserve && git -C kserve checkout <tag>
    python tests/manifests/schemas/trim_kserve_crd.py kserve <tag> > tests/manifests/schemas/kserve_inferenceservice_v1beta1.yaml

It keeps the served v1beta1 version's openAPIV3Schema of config/crd/full/serving.kserve.io_inferenceservices.yaml and
replaces the subtrees livo does not deploy with a marker (`x-livo-trimmed`) that `livo.k8s_schema` rejects by name, so
using one fails loudly ("re-vendor") instead of passing unchecked. Nothing else is changed.
"""

from __future__ import annotations

import subprocess
import sys

import yaml

CRD_PATH = "config/crd/full/serving.kserve.io_inferenceservices.yaml"
# (path of property names from the root, why it is not needed)
TRIMMED = [
    (("status",), "written by the KServe controller, never by us"),
    (("spec", "explainer"), "livo deploys no explainer"),
    (("spec", "transformer"), "livo deploys no transformer"),
    (("spec", "predictor", "workerSpec"), "multi-node predictors (KServe's vLLM workers) are not used"),
] + [(("spec", "predictor", name), "livo's predictor is a custom container, not a KServe model-format runtime")
     for name in ("huggingface", "lightgbm", "model", "onnx", "paddle", "pmml", "pytorch", "sklearn", "tensorflow",
                  "triton", "xgboost")]


def main(checkout: str, ref: str) -> None:
    text = subprocess.run(["git", "-C", checkout, "show", f"{ref}:{CRD_PATH}"], capture_output=True, text=True,
                          check=True).stdout
    commit = subprocess.run(["git", "-C", checkout, "rev-list", "-n1", ref], capture_output=True, text=True,
                            check=True).stdout.strip()
    crd = yaml.safe_load(text)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = version["schema"]["openAPIV3Schema"]
    for path, why in TRIMMED:
        node = schema
        for name in path[:-1]:
            node = node["properties"][name]
        if path[-1] in node["properties"]:  # a newer release may have dropped a framework
            node["properties"][path[-1]] = {"x-livo-trimmed": why}
    header = [
        "# KServe InferenceService serving.kserve.io/v1beta1: the openAPIV3Schema of the CRD, vendored for offline",
        "# validation of manifests/overlays/serving (livo.k8s_schema.validate_custom_resource).",
        f"# source: https://github.com/kserve/kserve/blob/{commit}/{CRD_PATH}",
        f"# release: {ref} (commit {commit}); the oldest release livo supports, so fields used here exist in every later one",
        "# Trimmed (each replaced by an `x-livo-trimmed` marker that validation rejects by name; re-vendor to use one):",
    ] + [f"#   {'.'.join(path)}: {why}" for path, why in TRIMMED] + [
        "# Regenerate: python tests/manifests/schemas/trim_kserve_crd.py <kserve checkout> <tag> > this file",
    ]
    sys.stdout.write("\n".join(header) + "\n" + yaml.safe_dump(schema, sort_keys=True, width=120))


if __name__ == "__main__":
    main(*sys.argv[1:3])
