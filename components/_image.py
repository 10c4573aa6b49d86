"""The container image every livo component runs in, referenced by digest.

`LIVO_IMAGE` is read once, when a component module is imported (i.e. when the pipeline is compiled): the environment
variable `LIVO_IMAGE` if set, else `PUBLISHED_IMAGE`. Release flow (docs/operations.md): `make images` builds and
pushes images/Dockerfile.cuda, prints the pushed `repo@sha256:...`; compile with `LIVO_IMAGE=<that>` (or record it in
`PUBLISHED_IMAGE`) and commit the recompiled pipelines/livo_full.yaml.

A tag can be re-pushed, a digest cannot: the lineage record of every model names the exact image that produced it.
"""

from __future__ import annotations

import os
import re

IMAGE_REPOSITORY = "ghcr.io/livo-mlops/livo"
# No image has been published from this repository yet: the all-zero digest marks that. `livo compile` accepts it
# (the committed YAML must compile anywhere) and `livo submit` refuses it, naming LIVO_IMAGE as the fix.
UNPUBLISHED_DIGEST = "sha256:" + "0" * 64
PUBLISHED_IMAGE = f"{IMAGE_REPOSITORY}:0.1.0-cuda@{UNPUBLISHED_DIGEST}"

DIGEST_REFERENCE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")

LIVO_IMAGE = os.environ.get("LIVO_IMAGE") or PUBLISHED_IMAGE


def is_digest_pinned(reference: str) -> bool:
    """True for `registry/repo[:tag]@sha256:<64 hex>`."""
    return bool(DIGEST_REFERENCE_RE.match(reference))


def is_published(reference: str) -> bool:
    return is_digest_pinned(reference) and not reference.endswith(UNPUBLISHED_DIGEST)
