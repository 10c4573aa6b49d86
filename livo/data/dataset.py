"""The preference dataset: schema, shard writer, manifest, reader and verification.

Layout (a local directory, or a prefix in the object store, `s3://<bucket>/datasets/<name>/<dataset_id>`):

    shard-00000-of-00004/data.parquet   rows of one shard (Hugging Face `datasets` parquet, Image columns)
    shard-00000-of-00004/shard.json     the shard's commit object, written after its data: rows, sha256, counts
    ...
    manifest.json                       written last: counts, seeds, config, model hash, judge ids, sha256 per shard

A shard is complete only when its `shard.json` exists and names the sha256 of its `data.parquet`; a dataset is
complete only when `manifest.json` exists. Readers refuse anything else (`DataError`), and with `verify=True` they
recompute every shard's sha256 against the manifest. The full schema is documented in docs/data.md.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livo.errors import ConfigError, DataError, InvalidDataError
from livo.log import get_logger, log_event

if TYPE_CHECKING:  # heavy imports stay inside functions
    import datasets

logger = get_logger("livo.data.dataset")


# errno values of "the device (or this process's file-size allowance) is full".
OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_out_of_space(exc: BaseException, path: str | Path | None = None, needed_bytes: int | None = None) -> bool:
    """True when `exc` (or an exception it wraps) means the disk is full. Writers that hide the errno (torch's
    `PytorchStreamWriter` raises a RuntimeError "file write failed") count when `path`'s filesystem has less free space
    than `needed_bytes` (or under 1 MiB when that is unknown)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in OUT_OF_SPACE_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    if path is None or not isinstance(exc, OSError | RuntimeError):
        return False
    free = free_bytes(path)
    return free is not None and free < max(needed_bytes or 0, 1 << 20)


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent); None when unknown."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def out_of_space_error(what: str, path: str | Path, needed_bytes: int | None = None):
    """The one-line error for a full disk while writing `what` to `path` (a `LivoError`: an environment fault)."""
    from livo.errors import LivoError

    free = free_bytes(path)
    need = f"; it needs about {format_bytes(needed_bytes)}" if needed_bytes else ""
    have = f", {format_bytes(free)} free" if free is not None else ""
    return LivoError(f"no space left on the device writing {what} to {path}{need}{have}; free space there or "
                     "choose a larger volume, then run the command again (what was written before is intact)")


def format_bytes(count: int | None) -> str:
    value = float(count or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"

FORMAT_NAME = "livo-preference-dataset"
SHARD_FORMAT_NAME = "livo-preference-shard"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SHARD_DATA_FILE = "data.parquet"
SHARD_COMMIT_FILE = "shard.json"

# Columns every row has, in this order; the optional array columns follow when present.
REQUIRED_COLUMNS = (
    "prompt",
    "principle_id",
    "principle_text",
    "scene",
    "aligned_image",
    "violating_image",
    "aligned_prompt",
    "violating_prompt",
    "aligned_negative_prompt",
    "aligned_seed",
    "violating_seed",
    "judge_scores",
)
# Optional array columns (docs/data.md, Columns). Each group is present in full or not at all, with one shape.
# Legacy: the scaled posterior mean. Training ignores it (it would drop the posterior's sampling noise).
LATENT_COLUMNS = ("aligned_latents", "violating_latents")
# The VAE posterior of each image, unscaled: mean and log-variance stacked on the channel axis ([2C, h, w], diffusers'
# `latent_dist.parameters`); training samples it at every step, as encoding the image would.
LATENT_DIST_COLUMNS = ("aligned_latent_dist", "violating_latent_dist")
# The same for the horizontally mirrored images, for recipes that flip (training `random_flip`).
FLIPPED_LATENT_DIST_COLUMNS = ("aligned_latent_dist_flipped", "violating_latent_dist_flipped")
EMBED_COLUMN = "prompt_embeds"
ARRAY3D_COLUMNS = (*LATENT_COLUMNS, *LATENT_DIST_COLUMNS, *FLIPPED_LATENT_DIST_COLUMNS)
# Row keys a caller must give; the rest get documented defaults in `normalize_row`.
_MANDATORY_INPUT_KEYS = ("prompt", "principle_id", "principle_text", "scene", "aligned_image", "violating_image")


def shard_dirname(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


def sha256_bytes(data: bytes) -> str:
    """`sha256:<hex>`, the digest form of manifests, the object store and lineage records."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace: the form that hashes and byte-compares are taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _pretty_json_bytes(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------------------------------
# Where a dataset lives: a local directory or an object-store prefix, behind one small interface.


class DatasetLocation:
    """A dataset root. Relative paths use '/' (`shard-00000-of-00001/data.parquet`)."""

    uri: str
    is_remote: bool = False

    def write_bytes(self, relpath: str, data: bytes) -> None:
        raise NotImplementedError

    def write_file(self, relpath: str, local_path: Path) -> None:
        raise NotImplementedError

    def read_bytes(self, relpath: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        raise NotImplementedError

    def exists(self, relpath: str) -> bool:
        raise NotImplementedError

    def local_file(self, relpath: str, cache_dir: Path, expected_sha256: str | None = None) -> Path:
        """A local path holding the object (for remote locations: downloaded into `cache_dir`, unless a cached copy
        already has `expected_sha256`)."""
        raise NotImplementedError

    def sha256(self, relpath: str) -> str | None:
        raise NotImplementedError

    def check_writable(self) -> None:
        """Fail with a clear error now (before any image is generated) if we cannot write here."""
        raise NotImplementedError

    def scratch_dir(self, reldir: str) -> Path:
        """A local directory for building the files of `reldir` before they are put in place."""
        raise NotImplementedError

    def read_json(self, relpath: str) -> dict[str, Any] | None:
        data = self.read_bytes(relpath)
        if data is None:
            return None
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{self.uri}/{relpath}: not valid JSON ({exc}); the file is corrupted — regenerate it") from exc
        if not isinstance(value, dict):
            raise DataError(f"{self.uri}/{relpath}: expected a JSON object; the file is corrupted — regenerate it")
        return value

    def __str__(self) -> str:
        return self.uri


class LocalLocation(DatasetLocation):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, relpath: str) -> Path:
        return self.root.joinpath(*relpath.split("/"))

    def write_bytes(self, relpath: str, data: bytes) -> None:
        target = self._path(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Temp file in the same directory + rename: a reader sees the old file, the new one, never half of one.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError) and is_out_of_space(exc):
                raise out_of_space_error(relpath, target, len(data)) from None
            raise

    def write_file(self, relpath: str, local_path: Path) -> None:
        target = self._path(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(local_path).resolve().parent == target.parent:
            os.replace(local_path, target)
            return
        self.write_bytes(relpath, Path(local_path).read_bytes())

    def read_bytes(self, relpath: str) -> bytes | None:
        path = self._path(relpath)
        return path.read_bytes() if path.is_file() else None

    def exists(self, relpath: str) -> bool:
        return self._path(relpath).is_file()

    def local_file(self, relpath: str, cache_dir: Path, expected_sha256: str | None = None) -> Path:
        path = self._path(relpath)
        if not path.is_file():
            raise DataError(f"{self.uri}: shard file {relpath} is missing; the dataset is incomplete — regenerate it")
        return path

    def sha256(self, relpath: str) -> str | None:
        path = self._path(relpath)
        return sha256_file(path) if path.is_file() else None

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".livo-write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write the dataset to {self.root}: {exc.strerror}; choose another --out") from exc

    def scratch_dir(self, reldir: str) -> Path:
        """The target directory itself, so a finished file is renamed into place."""
        path = self._path(reldir)
        path.mkdir(parents=True, exist_ok=True)
        return path


class StoreLocation(DatasetLocation):
    is_remote = True

    def __init__(self, store: Any, prefix: str):
        self.store = store
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{store.bucket}/{self.prefix}"

    def _key(self, relpath: str) -> str:
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    def write_bytes(self, relpath: str, data: bytes) -> None:
        self.store.put_bytes(self._key(relpath), data)

    def write_file(self, relpath: str, local_path: Path) -> None:
        self.store.put_file(self._key(relpath), str(local_path))

    def read_bytes(self, relpath: str) -> bytes | None:
        key = self._key(relpath)
        if not self.store.exists(key):
            return None
        return self.store.get_bytes(key)

    def exists(self, relpath: str) -> bool:
        return self.store.exists(self._key(relpath))

    def local_file(self, relpath: str, cache_dir: Path, expected_sha256: str | None = None) -> Path:
        key = self._key(relpath)
        target = cache_dir.joinpath(*relpath.split("/"))
        if expected_sha256 and target.is_file() and sha256_file(target) == expected_sha256:
            return target
        if not self.store.exists(key):
            raise DataError(f"{self.uri}: shard file {relpath} is missing; the dataset is incomplete — regenerate it")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.store.download_file(key, str(target))
        return target

    def sha256(self, relpath: str) -> str | None:
        key = self._key(relpath)
        if not self.store.exists(key):
            return None
        return self.store.sha256(key)

    def check_writable(self) -> None:
        probe = self._key(f".livo-write-probe-{os.getpid()}")
        self.store.put_bytes(probe, b"")
        self.store.delete(probe)

    def scratch_dir(self, reldir: str) -> Path:
        return Path(tempfile.mkdtemp(prefix="livo-shard-"))


def store_for_bucket(bucket: str | None = None) -> Any:
    """The object store configured by `LIVO_S3_*`, pointed at `bucket` (default: `LIVO_S3_BUCKET`)."""
    from livo.store import ObjectStore

    store = ObjectStore.from_env()
    return store.for_bucket(bucket) if bucket else store


def open_location(uri_or_path: str | Path | DatasetLocation, *, store: Any = None) -> DatasetLocation:
    """`s3://bucket/prefix` -> the object store (given `store`, else `LIVO_S3_*`); anything else -> a local dir."""
    if isinstance(uri_or_path, DatasetLocation):
        return uri_or_path
    text = str(uri_or_path)
    if text.startswith("s3://"):
        from livo.store import parse_s3_uri

        bucket, prefix = parse_s3_uri(text)
        if store is None:
            if not os.environ.get("LIVO_S3_ENDPOINT"):
                raise ConfigError(f"{text}: LIVO_S3_ENDPOINT is not set; configure the object store (LIVO_S3_*)")
            store = store_for_bucket(bucket)
        else:
            store = store.for_bucket(bucket)
        return StoreLocation(store, prefix)
    if "://" in text:
        raise ConfigError(f"{text}: unsupported URI scheme; use a local directory or s3://<bucket>/<prefix>")
    return LocalLocation(text)


# --------------------------------------------------------------------------------------------------------------------
# Schema


def preference_features(*, latent_shape: Sequence[int] | None = None, embed_shape: Sequence[int] | None = None,
                        latent_dist_shape: Sequence[int] | None = None, flipped: bool = False) -> datasets.Features:
    """The `datasets.Features` of a shard; array columns appear only when their shapes are given (the mirrored
    posteriors when `flipped`, with `latent_dist_shape`)."""
    import datasets

    columns: dict[str, Any] = {
        "prompt": datasets.Value("string"),
        "principle_id": datasets.Value("string"),
        "principle_text": datasets.Value("string"),
        "scene": datasets.Value("string"),
        "aligned_image": datasets.Image(),
        "violating_image": datasets.Image(),
        "aligned_prompt": datasets.Value("string"),
        "violating_prompt": datasets.Value("string"),
        "aligned_negative_prompt": datasets.Value("string"),
        "aligned_seed": datasets.Value("int64"),
        "violating_seed": datasets.Value("int64"),
        "judge_scores": datasets.Value("string"),
    }
    if latent_shape is not None:
        if len(latent_shape) != 3:
            raise DataError(f"latents must be [C, H, W], got shape {tuple(latent_shape)}")
        for name in LATENT_COLUMNS:
            columns[name] = datasets.Array3D(tuple(int(s) for s in latent_shape), "float16")
    if latent_dist_shape is not None:
        if len(latent_dist_shape) != 3 or latent_dist_shape[0] % 2:
            raise DataError(f"latent distributions must be [2C, H, W] (mean and log-variance), got shape "
                            f"{tuple(latent_dist_shape)}")
        for name in LATENT_DIST_COLUMNS + (FLIPPED_LATENT_DIST_COLUMNS if flipped else ()):
            columns[name] = datasets.Array3D(tuple(int(s) for s in latent_dist_shape), "float16")
    elif flipped:
        raise DataError("mirrored latent distributions need the unmirrored ones (aligned_latent_dist, "
                        "violating_latent_dist)")
    if embed_shape is not None:
        if len(embed_shape) != 2:
            raise DataError(f"prompt_embeds must be [L, D], got shape {tuple(embed_shape)}")
        columns[EMBED_COLUMN] = datasets.Array2D(tuple(int(s) for s in embed_shape), "float16")
    return datasets.Features(columns)


_STRING_DTYPES = ("string", "large_string")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")


def _type_name(feature: Any) -> str:
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, datasets.Image):
        return "Image"
    return type(feature).__name__


def schema_problems(features: Mapping[str, Any]) -> list[str]:
    """How `features` (a shard's `datasets.Features`) differ from the preference-dataset contract: every required
    column present with its type (strings, int seeds, Image columns), array columns as Array3D/Array2D."""
    import datasets

    problems = []
    for name in REQUIRED_COLUMNS:
        feature = features.get(name)
        if feature is None:
            problems.append(f"column {name} is missing")
            continue
        if name.endswith("_image"):
            ok, want = isinstance(feature, datasets.Image), "Image"
        elif name.endswith("_seed"):
            ok, want = isinstance(feature, datasets.Value) and feature.dtype in _INT_DTYPES, "int64"
        else:
            ok, want = isinstance(feature, datasets.Value) and feature.dtype in _STRING_DTYPES, "string"
        if not ok:
            problems.append(f"column {name} is {_type_name(feature)}, the contract says {want}")
    for name, kind in (*((column, datasets.Array3D) for column in ARRAY3D_COLUMNS), (EMBED_COLUMN, datasets.Array2D)):
        if name in features and not isinstance(features[name], kind):
            problems.append(f"column {name} is {_type_name(features[name])}, the contract says {kind.__name__}")
    return problems


def check_schema(features: Mapping[str, Any], where: str) -> None:
    """Raise `InvalidDataError` naming `where` and every column that breaks the contract."""
    problems = schema_problems(features)
    if problems:
        raise InvalidDataError(f"{where}: {'; '.join(problems)} — not a livo preference dataset shard (schema in "
                               "docs/data.md); regenerate or re-import it")


def encode_image(image: Any) -> dict[str, Any]:
    """A PIL image, PNG/JPEG bytes, a path or a {bytes, path} dict -> the Image column's stored form.

    PIL images are encoded as PNG here (deterministic bytes, so re-runs give identical shards); encoded bytes and
    files are kept as they are (no re-encoding of imported JPEGs).
    """
    if isinstance(image, dict) and "bytes" in image:
        return {"bytes": _decodable(image["bytes"], image.get("path")), "path": image.get("path")}
    if isinstance(image, bytes | bytearray):
        return {"bytes": _decodable(bytes(image)), "path": None}
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise InvalidDataError(f"image file {path} does not exist")
        return {"bytes": _decodable(path.read_bytes(), str(path)), "path": path.name}
    if hasattr(image, "save"):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    raise DataError(f"cannot store an image of type {type(image).__name__}; give a PIL image, bytes or a file path")


def image_problem(data: Any) -> str | None:
    """Why the encoded image `data` cannot be used (None when PIL decodes it completely). Cheap first: `verify()`
    reads the structure and checksums, then a fresh `load()` decodes every pixel (truncated data shows up there)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, bytes | bytearray) or not data:
        return "no image bytes" if not data else f"image bytes of type {type(data).__name__}"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:
        return "not a decodable image (not an image format PIL knows)"
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        return f"not a decodable image ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})"
    return None


def _decodable(data: Any, name: str | None = None) -> bytes:
    problem = image_problem(data)
    if problem:
        raise InvalidDataError(f"image {name or '(bytes)'}: {problem}; replace or remove it")
    return bytes(data)


def _int_value(row: Mapping[str, Any], name: str) -> int:
    value = row.get(name)
    if value is None:
        return -1
    try:
        if isinstance(value, bool | float):
            raise ValueError(value)
        return int(value)  # ints, numpy/torch integers, strings of digits
    except (TypeError, ValueError):
        raise InvalidDataError(f"{name} is {value!r}; seeds are integers (-1 when unknown)") from None


def normalize_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one input row and fill defaults: prompts default to `prompt`, the negative prompt to "", seeds to -1
    (unknown), judge scores to {}."""
    missing = [key for key in _MANDATORY_INPUT_KEYS if row.get(key) is None]
    if missing:
        raise InvalidDataError(f"row for scene {row.get('scene')!r} lacks {', '.join(missing)}")
    unknown = set(row) - set(REQUIRED_COLUMNS) - set(ARRAY3D_COLUMNS) - {EMBED_COLUMN}
    if unknown:
        raise InvalidDataError(f"row has unknown columns {sorted(unknown)}; the schema is documented in docs/data.md")
    scores = row.get("judge_scores") or {}
    out = {
        "prompt": str(row["prompt"]),
        "principle_id": str(row["principle_id"]),
        "principle_text": str(row["principle_text"]),
        "scene": str(row["scene"]),
        "aligned_image": encode_image(row["aligned_image"]),
        "violating_image": encode_image(row["violating_image"]),
        "aligned_prompt": str(row.get("aligned_prompt") or row["prompt"]),
        "violating_prompt": str(row.get("violating_prompt") or row["prompt"]),
        "aligned_negative_prompt": str(row.get("aligned_negative_prompt") or ""),
        "aligned_seed": _int_value(row, "aligned_seed"),
        "violating_seed": _int_value(row, "violating_seed"),
        "judge_scores": scores if isinstance(scores, str) else canonical_json(scores),
    }
    for name in (*ARRAY3D_COLUMNS, EMBED_COLUMN):
        if row.get(name) is not None:
            out[name] = _float16_array(row[name], name)
    return out


def _float16_array(value: Any, name: str) -> Any:
    import numpy as np

    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().to("cpu").float().numpy()
    return np.asarray(value, dtype=np.float16)


def _array_shapes(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Shapes of the optional array columns, as `preference_features` keywords; every row must agree on presence and
    shape, and each group's columns on one shape."""

    def shape_of(name: str) -> tuple[int, ...] | None:
        shapes = {tuple(row[name].shape) if name in row else None for row in rows}
        if len(shapes) > 1:
            raise DataError(f"column {name} is present with different shapes (or only in some rows): {shapes}")
        return next(iter(shapes)) if shapes else None

    def group_shape(columns: tuple[str, ...]) -> tuple[int, ...] | None:
        shapes = {shape_of(name) for name in columns}
        if len(shapes) > 1:
            raise DataError(f"{' and '.join(columns)} must all be present with the same shape")
        return next(iter(shapes))

    dist_shape = group_shape(LATENT_DIST_COLUMNS)
    flipped_shape = group_shape(FLIPPED_LATENT_DIST_COLUMNS)
    if flipped_shape is not None and flipped_shape != dist_shape:
        raise DataError(f"the mirrored latent distributions have shape {flipped_shape}, the unmirrored ones "
                        f"{dist_shape}; both must be given with one shape")
    return {"latent_shape": group_shape(LATENT_COLUMNS), "embed_shape": shape_of(EMBED_COLUMN),
            "latent_dist_shape": dist_shape, "flipped": flipped_shape is not None}


# --------------------------------------------------------------------------------------------------------------------
# Writing


def count_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """{'by_principle': {id: n}, 'by_scene': {scene: n}} with sorted keys."""
    by_principle: Counter[str] = Counter()
    by_scene: Counter[str] = Counter()
    for row in rows:
        by_principle[row["principle_id"]] += 1
        by_scene[row["scene"]] += 1
    return {"by_principle": dict(sorted(by_principle.items())), "by_scene": dict(sorted(by_scene.items()))}


def write_shard(location: DatasetLocation | str | Path, rows: Sequence[Mapping[str, Any]], *, shard_index: int,
                shard_count: int, generation_key: str, stats: Mapping[str, int] | None = None,
                metadata: Mapping[str, Any] | None = None, store: Any = None) -> dict[str, Any]:
    """Write one shard's parquet, then its `shard.json` commit object (last). Returns the commit record.

    `generation_key` identifies what produced the rows (config, model, principles); a re-run only reuses a shard whose
    commit carries the same key. `stats` (integer counters) are stored in the commit and summed into the manifest;
    `metadata` (what generated the shard) is stored as is — identical across the shards of one dataset.
    """
    import datasets

    location = open_location(location, store=store)
    if not 0 <= shard_index < shard_count:
        raise ConfigError(f"shard index {shard_index} is outside 0..{shard_count - 1}")
    dirname = shard_dirname(shard_index, shard_count)
    normalized = []
    for number, row in enumerate(rows):
        try:
            normalized.append(normalize_row(row))
        except InvalidDataError as exc:
            raise InvalidDataError(f"{location.uri}: {dirname} row {number}: {exc}") from None
    shapes = _array_shapes(normalized)
    features = preference_features(**shapes)
    columns = list(features)
    table = {name: [row[name] for row in normalized] for name in columns}
    dataset = datasets.Dataset.from_dict(table, features=features)

    estimate = sum(len(row[side]["bytes"]) for row in normalized for side in ("aligned_image", "violating_image"))
    scratch = location.scratch_dir(dirname)
    tmp_path = scratch / f".{dirname}.parquet.tmp"
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dirname}.", suffix=".parquet.tmp", dir=scratch)
        os.close(fd)
        tmp_path = Path(tmp_name)
        _quiet_to_parquet(dataset, tmp_path)
        digest = sha256_file(tmp_path)
        size = tmp_path.stat().st_size
        location.write_file(f"{dirname}/{SHARD_DATA_FILE}", tmp_path)
    except (OSError, RuntimeError) as exc:
        if is_out_of_space(exc, scratch, estimate):
            raise out_of_space_error(f"shard {dirname} ({len(normalized)} rows)", scratch, estimate) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)
        if location.is_remote:
            _remove_empty_dir(scratch)

    commit = {
        "format": SHARD_FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "shard_index": shard_index,
        "shard_count": shard_count,
        "generation_key": generation_key,
        "rows": len(normalized),
        "columns": columns,
        "latent_shape": list(shapes["latent_shape"]) if shapes["latent_shape"] else None,
        "embed_shape": list(shapes["embed_shape"]) if shapes["embed_shape"] else None,
        **({"latent_dist_shape": list(shapes["latent_dist_shape"])} if shapes["latent_dist_shape"] else {}),
        "file": {"path": f"{dirname}/{SHARD_DATA_FILE}", "sha256": digest, "bytes": size},
        "counts": count_rows(normalized),
        "stats": dict(stats or {}),
        "metadata": dict(metadata or {}),
    }
    location.write_bytes(f"{dirname}/{SHARD_COMMIT_FILE}", _pretty_json_bytes(commit))
    log_event(logger, "shard written", location=location.uri, shard=dirname, rows=len(normalized))
    return commit


def _quiet_to_parquet(dataset: datasets.Dataset, path: Path) -> None:
    import datasets

    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        dataset.to_parquet(str(path))
    finally:
        if was_enabled:
            datasets.utils.logging.enable_progress_bar()


def _remove_empty_dir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def read_shard_commit(location: DatasetLocation, shard_index: int, shard_count: int) -> dict[str, Any] | None:
    """The shard's commit record, or None when the shard was never finished."""
    return location.read_json(f"{shard_dirname(shard_index, shard_count)}/{SHARD_COMMIT_FILE}")


def shard_is_complete(location: DatasetLocation, shard_index: int, shard_count: int, generation_key: str) -> bool:
    """True when the shard's commit exists, matches `generation_key`, and its data file has the recorded sha256.

    A data file without a commit (a killed run) or with a different hash (corruption) counts as incomplete: the
    caller regenerates the whole shard, never appends to it.
    """
    try:
        commit = read_shard_commit(location, shard_index, shard_count)
    except DataError:
        return False
    if not commit or commit.get("generation_key") != generation_key:
        return False
    recorded = commit.get("file", {})
    return location.sha256(recorded.get("path", "")) == recorded.get("sha256")


def merge_shards(location: DatasetLocation | str | Path, *, shard_count: int, name: str, dataset_id: str,
                 principle_set_hash: str, generation_key: str | None = None, config: Mapping[str, Any] | None = None,
                 seed: int | None = None, generator_model_hash: str | None = None,
                 judge_ids: Mapping[str, str] | None = None, source: str = "generated",
                 store: Any = None, allow_empty: bool = False) -> dict[str, Any]:
    """Check every shard's commit (and its data hash), then write `manifest.json` last. Returns the manifest."""
    location = open_location(location, store=store)
    commits = []
    problems = []
    for index in range(shard_count):
        commit = read_shard_commit(location, index, shard_count)
        dirname = shard_dirname(index, shard_count)
        if commit is None:
            problems.append(f"{dirname} has no {SHARD_COMMIT_FILE} (not generated, or its run was killed)")
            continue
        if generation_key is not None and commit.get("generation_key") != generation_key:
            problems.append(f"{dirname} was generated with a different config")
            continue
        actual = location.sha256(commit["file"]["path"])
        if actual != commit["file"]["sha256"]:
            problems.append(f"{dirname}: sha256 of {SHARD_DATA_FILE} does not match its commit (corrupted)")
            continue
        commits.append(commit)
    if problems:
        raise DataError(f"cannot merge {location.uri}: " + "; ".join(problems) + " — (re)run generation for them")

    shapes = {(tuple(c["latent_shape"] or ()), tuple(c["embed_shape"] or ()), tuple(c.get("latent_dist_shape") or ()),
               tuple(c["columns"])) for c in commits if c["rows"]}
    if len(shapes) > 1:
        raise DataError(f"cannot merge {location.uri}: shards disagree on their array columns or shapes "
                        f"{sorted(shapes)}")
    latent_dist_shape = next((c.get("latent_dist_shape") for c in commits if c["rows"]), None)
    columns = next((c["columns"] for c in commits if c["rows"]), list(REQUIRED_COLUMNS))
    total = sum(c["rows"] for c in commits)
    if total == 0 and not allow_empty:
        raise DataError(f"{location.uri}: no row in any shard (every candidate pair was rejected by the judges); "
                        "generate more candidates per scene or check the judge thresholds")
    by_principle: Counter[str] = Counter()
    by_scene: Counter[str] = Counter()
    stats: Counter[str] = Counter()
    for commit in commits:
        by_principle.update(commit["counts"]["by_principle"])
        by_scene.update(commit["counts"]["by_scene"])
        stats.update(commit.get("stats") or {})
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": name,
        "dataset_id": dataset_id,
        "source": source,
        "principle_set_hash": principle_set_hash,
        "num_rows": total,
        "columns": columns,
        "latent_shape": next((c["latent_shape"] for c in commits if c["rows"]), None),
        "embed_shape": next((c["embed_shape"] for c in commits if c["rows"]), None),
        **({"latent_dist_shape": latent_dist_shape} if latent_dist_shape else {}),
        "counts": {"by_principle": dict(sorted(by_principle.items())), "by_scene": dict(sorted(by_scene.items()))},
        "shards": [
            {"path": c["file"]["path"], "sha256": c["file"]["sha256"], "bytes": c["file"]["bytes"], "rows": c["rows"],
             "stats": c.get("stats") or {}}
            for c in commits
        ],
        "stats": dict(sorted(stats.items())),
        "seed": seed,
        "config": dict(config or {}),
        "generator_model_hash": generator_model_hash,
        "judge_ids": dict(judge_ids or {}),
        "generation_key": generation_key,
    }
    location.write_bytes(MANIFEST_FILE, _pretty_json_bytes(manifest))
    log_event(logger, "manifest written", location=location.uri, rows=total, shards=shard_count)
    return manifest


def write_rows_dataset(rows: Sequence[Mapping[str, Any]], out: str | Path | DatasetLocation, *,
                       principle_set_hash: str, name: str = "rows", num_shards: int = 1,
                       config: Mapping[str, Any] | None = None, seed: int | None = None,
                       generator_model_hash: str | None = None, judge_ids: Mapping[str, str] | None = None,
                       source: str = "rows", dataset_id: str | None = None, store: Any = None) -> str:
    """Write in-memory rows as a complete dataset (shards + manifest) and return its URI or path.

    Rows are dicts with at least prompt, principle_id, principle_text, scene, aligned_image and violating_image
    (PIL images, encoded bytes or file paths); see `normalize_row` for the defaults of the other columns. Rows are
    split into `num_shards` contiguous shards. Useful for tests and importers: no generation involved.
    """
    if not rows:
        raise DataError("no rows to write: a preference dataset needs at least one (aligned, violating) pair")
    if num_shards < 1:
        raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
    location = open_location(out, store=store)
    location.check_writable()
    num_shards = min(num_shards, len(rows))
    key_material = {"principle_set_hash": principle_set_hash, "source": source, "rows": len(rows),
                    "config": dict(config or {})}
    generation_key = sha256_bytes(canonical_json(key_material).encode("utf-8"))
    bounds = [round(i * len(rows) / num_shards) for i in range(num_shards + 1)]
    for index in range(num_shards):
        write_shard(location, rows[bounds[index]:bounds[index + 1]], shard_index=index, shard_count=num_shards,
                    generation_key=generation_key)
    merge_shards(location, shard_count=num_shards, name=name,
                 dataset_id=dataset_id or generation_key.split(":", 1)[1][:16], principle_set_hash=principle_set_hash,
                 generation_key=generation_key, config=config, seed=seed, generator_model_hash=generator_model_hash,
                 judge_ids=judge_ids, source=source)
    return location.uri


# --------------------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class PreferenceDataset:
    """A loaded, verified preference dataset.

    `rows` is a `datasets.Dataset` (Image columns decode to PIL images; array columns to nested lists — use
    `rows.with_format("numpy")` or `"torch"` for arrays). `scenes` maps each scene to its row indices: training
    redraws the violating image of a pair from the same scene. Scene names are unique across principles
    (`<principle_id>/<scene type>/<subject>`).
    """

    uri: str
    manifest: dict[str, Any]
    rows: datasets.Dataset
    manifest_sha256: str
    scenes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def principle_set_hash(self) -> str:
        return self.manifest["principle_set_hash"]

    @property
    def principle_ids(self) -> list[str]:
        return sorted(self.manifest["counts"]["by_principle"])

    @property
    def has_latents(self) -> bool:
        return all(name in self.rows.column_names for name in LATENT_COLUMNS)

    @property
    def has_latent_dists(self) -> bool:
        """The VAE posterior of both images (what training samples at every step)."""
        return all(name in self.rows.column_names for name in LATENT_DIST_COLUMNS)

    @property
    def has_flipped_latent_dists(self) -> bool:
        return all(name in self.rows.column_names for name in FLIPPED_LATENT_DIST_COLUMNS)

    @property
    def has_prompt_embeds(self) -> bool:
        return EMBED_COLUMN in self.rows.column_names

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def default_cache_dir() -> Path:
    from livo.paths import cache_dir

    return cache_dir("datasets")


def read_manifest(location: DatasetLocation | str | Path, *, store: Any = None) -> tuple[dict[str, Any], bytes]:
    location = open_location(location, store=store)
    data = location.read_bytes(MANIFEST_FILE)
    if data is None:
        raise InvalidDataError(f"{location.uri}: no {MANIFEST_FILE} — the dataset does not exist or its generation "
                               "has not finished (check the path, or run `livo generate` again to resume it)")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidDataError(f"{location.uri}/{MANIFEST_FILE}: not valid JSON ({exc}); regenerate the manifest "
                               "(`livo generate --merge-only`)") from None
    if not isinstance(manifest, dict):
        manifest = {}
    if manifest.get("format") != FORMAT_NAME:
        raise InvalidDataError(f"{location.uri}/{MANIFEST_FILE}: not a livo preference dataset manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{location.uri}: dataset format version {manifest.get('format_version')} is not supported "
                        f"(this livo reads version {FORMAT_VERSION}); regenerate or convert it")
    problems = manifest_problems(manifest)
    if problems:
        raise InvalidDataError(f"{location.uri}/{MANIFEST_FILE}: {'; '.join(problems)} — the manifest is damaged or "
                               "hand-edited; rewrite it (`livo generate --merge-only`, or import again)")
    return manifest, data


_MANIFEST_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "dataset_id": str, "principle_set_hash": str, "num_rows": int, "shards": list, "counts": dict,
}
_MANIFEST_SHARD_KEYS: dict[str, type | tuple[type, ...]] = {"path": str, "sha256": str, "rows": int}


def manifest_problems(manifest: Mapping[str, Any]) -> list[str]:
    """The required keys of a manifest that are missing or of the wrong type (empty list: usable)."""
    problems = []
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing:
        problems.append(f"required key(s) {', '.join(missing)} missing")
    for key, kind in _MANIFEST_KEYS.items():
        if key in manifest and (not isinstance(manifest[key], kind) or isinstance(manifest[key], bool)):
            problems.append(f"{key} is {type(manifest[key]).__name__}, expected {kind.__name__}")
    counts = manifest.get("counts")
    if isinstance(counts, dict):
        bad = [key for key in ("by_principle", "by_scene") if not isinstance(counts.get(key), dict)]
        if bad:
            problems.append(f"counts lacks {' and '.join(bad)}")
    shards = manifest.get("shards")
    for index, shard in enumerate(shards if isinstance(shards, list) else []):
        if not isinstance(shard, dict):
            problems.append(f"shards[{index}] is not an object")
            continue
        bad = [key for key, kind in _MANIFEST_SHARD_KEYS.items() if not isinstance(shard.get(key), kind)]
        if bad:
            problems.append(f"shards[{index}] lacks {', '.join(bad)}")
    if not problems and sum(shard["rows"] for shard in shards) != manifest["num_rows"]:
        problems.append(f"num_rows {manifest['num_rows']} differs from the sum of the shards' rows")
    return problems


def verify_dataset(uri_or_path: str | Path | DatasetLocation, *, store: Any = None, decode_images: bool = True,
                   cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Check a dataset as training will use it; raise on the first problem, naming the shard, row and column.

    1. the manifest has every required key; 2. every shard's sha256 matches the manifest (hashed where the data is: no
    download of a remote dataset when the store reports its hash) — a mismatch is a `DataError` (exit 1: the storage
    damaged it); 3. with `decode_images` (default), every shard's columns and types match the contract and every image
    decodes (PIL `verify()`, then `load()`) — an `InvalidDataError` (exit 2: the data itself is bad). Remote shards
    are downloaded into the cache for step 3.

    Returns {"uri", "num_rows", "shards", "manifest_sha256", "images_decoded"}.
    """
    location = open_location(uri_or_path, store=store)
    manifest, raw = read_manifest(location)
    bad = []
    for shard in manifest["shards"]:
        actual = location.sha256(shard["path"])
        if actual is None:
            bad.append(f"{shard['path']} is missing")
        elif actual != shard["sha256"]:
            bad.append(f"{shard['path']} has sha256 {actual[:19]}…, the manifest says {shard['sha256'][:19]}…")
    if bad:
        raise DataError(f"{location.uri}: corrupted dataset: " + "; ".join(bad) + " — regenerate the affected shards")
    images = 0
    if decode_images:
        local_root = _local_cache_root(location, manifest, cache_dir)
        first_row = 0
        for shard in manifest["shards"]:
            path = location.local_file(shard["path"], local_root, expected_sha256=shard["sha256"])
            images += check_shard_rows(path, f"{location.uri}/{shard['path']}", first_row=first_row)
            first_row += shard["rows"]
    return {"uri": location.uri, "num_rows": manifest["num_rows"], "shards": len(manifest["shards"]),
            "manifest_sha256": sha256_bytes(raw), "images_decoded": images}


def check_shard_rows(path: str | Path, where: str, *, first_row: int = 0, batch_rows: int = 64) -> int:
    """Check one shard file: schema, no null in a required column, every image decodes. Returns the images decoded.
    Raises `InvalidDataError` naming `where`, the row (in the shard and in the dataset) and the column."""
    import datasets
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(str(path))
        features = datasets.Features.from_arrow_schema(parquet.schema_arrow)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise InvalidDataError(f"{where}: not a readable parquet file ({type(exc).__name__}: {exc}); regenerate or "
                               "re-import that shard") from None
    check_schema(features, where)
    images = 0
    row = 0
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(REQUIRED_COLUMNS)):
        for name in REQUIRED_COLUMNS:
            column = batch.column(name)
            if column.null_count:
                offset = row + next(i for i, value in enumerate(column.is_null().to_pylist()) if value)
                raise InvalidDataError(f"{where}: row {offset} (dataset row {first_row + offset}) has no {name}; "
                                       "fix or drop that row and re-import")
        for name in ("aligned_image", "violating_image"):
            for index, value in enumerate(batch.column(name).to_pylist()):
                problem = image_problem(value.get("bytes"))
                if problem:
                    stored = f" ({value.get('path')})" if value.get("path") else ""
                    raise InvalidDataError(f"{where}: row {row + index} (dataset row {first_row + row + index}) "
                                           f"{name}{stored}: {problem}; replace that image and re-import, or "
                                           "regenerate the shard")
                images += 1
        row += batch.num_rows
    return images


def _local_cache_root(location: DatasetLocation, manifest: Mapping[str, Any], cache_dir: str | Path | None) -> Path:
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    return cache_root / manifest["dataset_id"] / sha256_bytes(location.uri.encode())[7:19]


def load_preference_dataset(uri_or_path: str | Path | DatasetLocation, *, verify: bool = True,
                            cache_dir: str | Path | None = None, store: Any = None) -> PreferenceDataset:
    """Load a dataset from a local directory or `s3://bucket/prefix`.

    Raises `DataError` when the manifest is missing (incomplete or absent dataset), the dataset is empty, a shard
    is missing, or (with `verify=True`) a shard's sha256 differs from the manifest.
    """
    import datasets

    location = open_location(uri_or_path, store=store)
    manifest, raw = read_manifest(location)
    if not manifest.get("num_rows") or not manifest.get("shards"):
        raise InvalidDataError(f"{location.uri}: the dataset is empty (0 rows); regenerate it with more candidates "
                               "per scene")
    local_root = _local_cache_root(location, manifest, cache_dir)
    files = []
    for shard in manifest["shards"]:
        if not shard["rows"]:
            continue
        path = location.local_file(shard["path"], local_root, expected_sha256=shard["sha256"])
        if verify:
            actual = sha256_file(path)
            if actual != shard["sha256"]:
                raise DataError(f"{location.uri}: shard {shard['path']} is corrupted ({actual[:19]}… != "
                                f"{shard['sha256'][:19]}… in the manifest); regenerate the dataset or that shard")
        files.append(str(path))

    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        rows = datasets.Dataset.from_parquet(files, cache_dir=str(local_root / "hf-cache"))
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{location.uri}: cannot read the shards ({type(exc).__name__}: {exc}); the dataset is "
                        "corrupted — regenerate it (load with verify=True to find the shard)") from exc
    finally:
        if was_enabled:
            datasets.utils.logging.enable_progress_bar()
    if len(rows) != manifest["num_rows"]:
        raise DataError(f"{location.uri}: the shards hold {len(rows)} rows but the manifest says "
                        f"{manifest['num_rows']}; the dataset is corrupted — regenerate it")
    check_schema(rows.features, location.uri)
    scenes: dict[str, list[int]] = defaultdict(list)
    for index, scene in enumerate(rows["scene"]):
        scenes[scene].append(index)
    return PreferenceDataset(uri=location.uri, manifest=manifest, rows=rows,
                             manifest_sha256=sha256_bytes(raw), scenes=dict(scenes))
