"""The container image livo's pipeline runs in: one reference, chosen once, honoured by every task and the TrainJob.

Which image a compiled package uses is decided at compile time, in this order: `--image REF` on `livo compile`,
`submit`, `schedule` or `run`; else the environment variable `LIVO_IMAGE`; else `PUBLISHED_IMAGE`, the last image
this repository published (the all-zero digest until the first `make images-push`). Components are declared with
`PUBLISHED_IMAGE` and `retarget_package` swaps that one string, wherever it stands in the compiled spec (every
executor's image and the `image` inputs of the training and registration tasks), for the chosen reference: there
is no second place an image could come from.

A reference must be pinned by digest (`registry/repo[:tag]@sha256:<64 hex>`): a tag can be re-pushed, a digest
cannot, and the lineage record of every model names the image that produced it (`running_image`).
"""

from __future__ import annotations

import os
import re
from typing import Any

from livo.errors import ConfigError

IMAGE_REPOSITORY = "ghcr.io/livo-mlops/livo"
# No image has been published from this repository yet: the all-zero digest marks that. `livo compile` accepts it
# (the committed YAML must compile anywhere); `livo submit` and `livo schedule` refuse it, naming --image as the fix.
UNPUBLISHED_DIGEST = "sha256:" + "0" * 64
PUBLISHED_IMAGE = f"{IMAGE_REPOSITORY}:0.1.0-cuda@{UNPUBLISHED_DIGEST}"
IMAGE_ENV = "LIVO_IMAGE"
# Set by images/Dockerfile.* (cuda | cpu): present only inside a livo image, so a task can tell whether it ran in one.
IMAGE_VARIANT_ENV = "LIVO_IMAGE_VARIANT"

DIGEST_REFERENCE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")


def is_digest_pinned(reference: str) -> bool:
    """True for `registry/repo[:tag]@sha256:<64 hex>`."""
    return bool(DIGEST_REFERENCE_RE.match(reference))


def is_published(reference: str) -> bool:
    return is_digest_pinned(reference) and not reference.endswith(UNPUBLISHED_DIGEST)


def resolve_image(reference: str | None = None) -> str:
    """The image to compile with: `reference` (--image), else $LIVO_IMAGE, else PUBLISHED_IMAGE; must be digest-pinned.
    """
    chosen = (reference or os.environ.get(IMAGE_ENV) or PUBLISHED_IMAGE).strip()
    origin = "--image" if reference else (IMAGE_ENV if os.environ.get(IMAGE_ENV) else "PUBLISHED_IMAGE")
    if not is_digest_pinned(chosen):
        raise ConfigError(f"image {chosen!r} (from {origin}) is not pinned by digest; use "
                          f"<registry>/<repo>[:tag]@sha256:<64 hex>, as printed by `make images-push`")
    return chosen


def require_published(reference: str, *, action: str) -> None:
    """Refuse the unpublished marker for anything that would make a cluster pull it."""
    if not is_published(reference):
        raise ConfigError(f"cannot {action} with image {reference}: it is not a published digest; build and push the "
                          "image (make images-push) and pass --image <registry>/livo@sha256:<digest> (or set "
                          f"{IMAGE_ENV})")


def package_images(spec: dict[str, Any]) -> set[str]:
    """The images of every executor of a compiled pipeline spec."""
    return {executor["container"]["image"] for executor in spec["deploymentSpec"]["executors"].values()}


def retarget_package(text: str, image: str) -> str:
    """The compiled package `text` with its one image replaced by `image` everywhere it stands.

    The package must use exactly one image (ours); the replacement is checked by re-reading the result.
    """
    import yaml

    image = resolve_image(image)
    documents = list(yaml.safe_load_all(text))
    current = package_images(documents[0])
    if len(current) != 1:
        raise ConfigError(f"the package uses {len(current)} images ({', '.join(sorted(current))}); expected one")
    (old,) = current
    if old == image:
        return text
    if image in text:
        raise ConfigError(f"the package already mentions {image} besides its image {old}; recompile it")
    retargeted = text.replace(old, image)
    if package_images(next(yaml.safe_load_all(retargeted))) != {image} or old in retargeted:
        raise ConfigError(f"could not replace the package's image {old} with {image}")  # a bug, not bad input
    return retargeted


def running_image(declared: str) -> dict[str, str]:
    """What lineage records about the image a task ran in.

    Inside a livo image (`LIVO_IMAGE_VARIANT` set by its Dockerfile) the declared reference is the one the pod was
    created with — KFP pulls exactly that digest — so it is recorded with the variant. Outside one (kfp.local, a
    developer's shell) no image was involved, and the record says so instead of naming one.
    """
    variant = os.environ.get(IMAGE_VARIANT_ENV, "")
    if not variant:
        return {"reference": "", "variant": "", "ran_in": "local process (no container image)"}
    return {"reference": declared, "variant": variant, "ran_in": "container"}
