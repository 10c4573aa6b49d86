"""Mirror model weights into the object store and load them back, verified, through a content-keyed local cache.

A *mirror* is a prefix ``s3://bucket/prefix/`` holding the files of one model plus ``livo-mirror.json``:

    {"format": "livo-mirror/1", "kind": "diffusers" | "transformers", "source": "<folder or hub id>",
     "revision": "<hub commit>" | null, "files": {"unet/diffusion_pytorch_model.safetensors":
     {"sha256": "sha256:<hex>", "size": 3438167536}, ...}, "file_count": n, "total_bytes": n,
     "content_hash": "sha256:<hex>", "skipped": [{"path": ..., "reason": ...}], "created_at": ..., "livo_version": ...}

The manifest is written after every file was uploaded (and deleted first when a mirror is replaced), so a prefix
without it is an incomplete copy and is never loaded. Only safetensors weights are copied: pickle files (.bin, .pt,
.ckpt, ...) are skipped, and a folder whose weights are pickles only is refused.

`fetch_model(uri)` reads the manifest, and unless the cache already holds that content, downloads every file into a
temporary directory beside the cache entry, checks each sha256 and size against the manifest, and renames the
directory into place. The cache entry is named by the manifest's content hash (`content_hash`: sha256 over the sorted
``path, sha256, size`` lines), so two URIs of the same weights share one entry and a re-mirrored URI with new weights
gets a new one. Cache root: `LIVO_MODEL_CACHE`, else ``$LIVO_CACHE_DIR/models``, else ``~/.cache/livo/models``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livo.errors import ConfigError, LivoError
from livo.log import get_logger, log_event

logger = get_logger(__name__)

MANIFEST_NAME = "livo-mirror.json"
MANIFEST_FORMAT = "livo-mirror/1"
KINDS = ("diffusers", "transformers")
ENV_MODEL_CACHE = "LIVO_MODEL_CACHE"

SAFE_WEIGHT_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Weights of other frameworks: not pickles, but nothing livo loads (transformers/diffusers on torch read safetensors).
OTHER_WEIGHT_SUFFIXES = (".h5", ".msgpack", ".onnx", ".pb", ".tflite", ".ot")
PROGRESS_MIN_BYTES = 8 << 20
STALE_PARTIAL_S = 24 * 3600
_CHUNK = 1 << 20
_HEX40 = re.compile(r"[0-9a-f]{40}")


# ================================================================================================ source resolution
@dataclass
class LocalModel:
    """A model folder on this machine, what it is and where it came from."""

    path: Path
    kind: str
    source: str
    revision: str | None = None


@dataclass
class FilePlan:
    """The files of a model folder a mirror copies (relative POSIX paths) and those it leaves out, with why."""

    files: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def detect_kind(path: Path) -> str:
    if (path / "model_index.json").is_file():
        return "diffusers"
    if (path / "config.json").is_file():
        return "transformers"
    raise ConfigError(f"{path}: neither a diffusers pipeline folder (model_index.json) nor a transformers model folder "
                      f"(config.json); give the folder that save_pretrained wrote")


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).exists()


def resolve_source(source: str, *, revision: str | None = None, excludes: Iterable[str] = ()) -> LocalModel:
    """A local folder as is, or a hub id resolved with `huggingface_hub.snapshot_download` (from the local HF cache
    when `HF_HUB_OFFLINE` is set; `HF_HUB_CACHE` / `HF_HOME` are read at call time)."""
    if source.startswith("s3://"):
        raise ConfigError(f"{source}: SOURCE must be a local model folder or a hub id, not an object-store URI "
                          f"(`livo models fetch {source}` downloads a mirror into the local cache)")
    path = Path(source).expanduser()
    if path.is_dir():
        snapshot_revision = path.name if path.parent.name == "snapshots" and _HEX40.fullmatch(path.name) else None
        return LocalModel(path.resolve(), detect_kind(path), source, revision or snapshot_revision)
    if _looks_like_path(source) or source.count("/") != 1:
        raise ConfigError(f"model source {source!r} is neither an existing folder nor a hub id (org/name)")
    return _resolve_hub_id(source, revision, list(excludes))


def hub_settings() -> tuple[str | None, bool]:
    """(cache_dir, offline) from the environment now (huggingface_hub reads them once, at import)."""
    cache = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]).expanduser() / "hub") if os.environ.get("HF_HOME") else None)
    offline = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").lower() in (
        "1", "true", "yes", "on")
    return cache, offline


def _resolve_hub_id(repo_id: str, revision: str | None, excludes: list[str]) -> LocalModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache_dir, offline = hub_settings()
    ignore = [f"*{suffix}" for suffix in PICKLE_SUFFIXES + OTHER_WEIGHT_SUFFIXES] + excludes
    where = f"the local HF cache ({cache_dir or 'default location'})" if offline else "the hub"

    def download(allow: list[str] | None) -> Path:
        try:
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                          allow_patterns=allow, ignore_patterns=ignore))
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise ConfigError(f"hub id {repo_id!r}{f' at revision {revision}' if revision else ''} not found in "
                              f"{where} ({_first_line(exc)}); check the id, or mirror from a local folder") from None
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
            raise LivoError(f"cannot get {repo_id!r} from {where} ({_first_line(exc)}); run the mirror on a machine "
                            "with hub access, fill the HF cache there (HF_HUB_CACHE) or mirror a local folder") from None

    # First only the files that say what the model is, so a diffusers repo's extra single-file checkpoints
    # (SD v1.5 has 12 GB of them at the top level) are never downloaded.
    path = download(["model_index.json", "config.json"])
    kind = detect_kind(path)
    if kind == "diffusers":
        components = _diffusers_components(path)
        path = download(["model_index.json", "*.md", "*.txt", "LICENSE*"] + [f"{c}/*" for c in components])
    else:
        path = download(None)
    snapshot_revision = path.name if _HEX40.fullmatch(path.name) else revision
    log_event(logger, "hub snapshot resolved", repo=repo_id, revision=snapshot_revision, path=str(path),
              offline=offline)
    return LocalModel(path, kind, repo_id, snapshot_revision)


def _diffusers_components(path: Path) -> list[str]:
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path / 'model_index.json'} is not valid JSON ({exc})") from None
    return sorted(name for name, value in index.items()
                  if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None
                  and value[1] is not None)


def plan_files(model: LocalModel, excludes: Iterable[str] = ()) -> FilePlan:
    """Which files of `model` a mirror copies. Refuses (ConfigError) a folder whose weights are all pickles."""
    excludes = list(excludes)
    plan = FilePlan()
    components = set(_diffusers_components(model.path)) if model.kind == "diffusers" else None
    all_files = sorted(p for p in model.path.rglob("*") if p.is_file())
    for path in all_files:
        rel = path.relative_to(model.path).as_posix()
        parts = rel.split("/")
        reason = None
        if any(part.startswith(".") for part in parts):
            reason = "hidden file"
        elif rel == MANIFEST_NAME:
            reason = "an earlier mirror manifest"
        elif rel.endswith(PICKLE_SUFFIXES) or re.search(r"\.(bin|pt|pth|ckpt)\.index\.json$", rel):
            reason = "pickle weights (unsafe to load; livo loads safetensors only)"
        elif rel.endswith(OTHER_WEIGHT_SUFFIXES):
            reason = "weights of another framework (livo loads safetensors only)"
        elif any(fnmatch.fnmatch(rel, pattern) for pattern in excludes):
            reason = "excluded by --exclude"
        elif components is not None and len(parts) > 1 and parts[0] not in components:
            reason = f"not a component named in model_index.json ({', '.join(sorted(components))})"
        elif components is not None and len(parts) == 1 and rel.endswith(SAFE_WEIGHT_SUFFIXES):
            reason = "a single-file checkpoint beside the pipeline (diffusers loads the component folders)"
        if reason:
            plan.skipped.append({"path": rel, "reason": reason})
        else:
            plan.files.append(rel)
    _refuse_pickle_only(model, plan)
    if not plan.files:
        raise ConfigError(f"{model.source}: nothing to mirror (every file was skipped)")
    if not any(f.endswith(SAFE_WEIGHT_SUFFIXES) for f in plan.files):
        raise ConfigError(f"{model.source}: no safetensors weights found; livo loads safetensors only — save the model "
                          "with save_pretrained(..., safe_serialization=True) and mirror that folder")
    return plan


def _refuse_pickle_only(model: LocalModel, plan: FilePlan) -> None:
    """A folder that holds pickle weights but no safetensors beside them cannot be loaded safely: refuse it."""
    safe_dirs = {str(Path(f).parent) for f in plan.files if f.endswith(SAFE_WEIGHT_SUFFIXES)}
    pickled: dict[str, list[str]] = {}
    for item in plan.skipped:
        if item["reason"].startswith("pickle") and item["path"].endswith(PICKLE_SUFFIXES):
            pickled.setdefault(str(Path(item["path"]).parent), []).append(item["path"])
    included_dirs = {str(Path(f).parent) for f in plan.files}
    if model.kind == "diffusers":  # its weights live in the component folders; top-level checkpoints are extras
        included_dirs.discard(".")
    for folder, names in sorted(pickled.items()):
        if folder not in safe_dirs and folder in included_dirs:
            raise ConfigError(
                f"{model.source}: {', '.join(names)} are pickle weights with no safetensors beside them; livo loads "
                "safetensors only — convert them in a trusted environment "
                "(`X.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`) and mirror the result")


# ================================================================================================ manifest
def content_hash(files: dict[str, dict[str, Any]]) -> str:
    """sha256 over the sorted ``path\\tsha256\\tsize`` lines: equal for equal content, whatever the URI or source."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\t{files[rel]['sha256']}\t{int(files[rel]['size'])}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def _manifest_key(prefix: str) -> str:
    return f"{prefix}/{MANIFEST_NAME}" if prefix else MANIFEST_NAME


def _split(uri: str, store: Any = None) -> tuple[Any, str]:
    from livo.store import ObjectStore, parse_s3_uri

    _, key = parse_s3_uri(uri)
    store = store.for_uri(uri) if store is not None else ObjectStore.for_uri(uri)
    return store, key.strip("/")


def read_manifest(uri: str, store: Any = None) -> dict[str, Any]:
    """The validated manifest of the mirror at `uri` (ConfigError when there is none: the mirror is incomplete)."""
    store, prefix = _split(uri, store)
    key = _manifest_key(prefix)
    if not store.exists(key):
        raise ConfigError(f"{uri.rstrip('/')} has no {MANIFEST_NAME}: mirror it with "
                          f"`livo models mirror SOURCE {uri.rstrip('/')}` (a copy without it is incomplete)")
    manifest = store.get_json(key)
    _validate_manifest(manifest, store.uri(key))
    return manifest


def read_mirror_file(uri: str, rel: str, store: Any = None) -> bytes | None:
    """One small file of the mirror at `uri` (e.g. `model_index.json`), verified against its manifest entry; None when
    the mirror has no such file. For reading a model's configs without fetching its weights."""
    manifest = read_manifest(uri, store)
    entry = manifest["files"].get(rel)
    if entry is None:
        return None
    store, prefix = _split(uri, store)
    key = f"{prefix}/{rel}" if prefix else rel
    data = store.get_bytes(key)
    _check_entry(store, key, f"sha256:{hashlib.sha256(data).hexdigest()}", len(data), entry)
    return data


def _check_entry(store: Any, key: str, digest: str, size: int, entry: dict[str, Any]) -> None:
    if digest != entry["sha256"] or size != entry["size"]:
        raise LivoError(f"{store.uri(key)} has {digest} ({size} bytes), but {MANIFEST_NAME} records "
                        f"{entry['sha256']} ({entry['size']} bytes): the stored copy was modified or "
                        f"corrupted; mirror the model again with `livo models mirror`")


def _validate_manifest(manifest: Any, where: str) -> None:
    def bad(why: str) -> LivoError:
        return LivoError(f"{where} is malformed ({why}); mirror the model again with `livo models mirror`")

    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise bad(f"format is not {MANIFEST_FORMAT}")
    if manifest.get("kind") not in KINDS:
        raise bad(f"kind {manifest.get('kind')!r} is not one of {', '.join(KINDS)}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("no files")
    for rel, entry in files.items():
        if (not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel
                or any(part in ("", ".", "..") for part in rel.split("/"))):
            raise bad(f"unsafe path {rel!r}")
        if not isinstance(entry, dict) or not re.fullmatch(r"sha256:[0-9a-f]{64}", str(entry.get("sha256"))) \
                or not isinstance(entry.get("size"), int) or entry["size"] < 0:
            raise bad(f"entry of {rel} lacks sha256 or size")
    if manifest.get("content_hash") != content_hash(files):
        raise bad("content_hash does not match its files")


# ================================================================================================ mirror
class _ProgressReader:
    """A file object that advances a progress bar by every chunk read from it."""

    def __init__(self, handle: Any, bar: Any):
        self._handle, self._bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._bar.update(len(data))
        return data


def mirror_model(source: str, uri: str, *, store: Any = None, revision: str | None = None,
                 excludes: Iterable[str] = (), overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Copy the model at `source` (folder or hub id) to the mirror `uri`; return the manifest written (last)."""
    from tqdm.auto import tqdm

    from livo import __version__

    excludes = list(excludes)
    store, prefix = _split(uri, store)
    uri = store.uri(prefix)
    if not prefix:
        raise ConfigError(f"{uri}: give a prefix for the mirror, e.g. s3://{store.bucket}/mirrors/sd15")
    model = resolve_source(source, revision=revision, excludes=excludes)
    plan = plan_files(model, excludes)
    manifest_key = _manifest_key(prefix)
    wanted = {f"{prefix}/{rel}" for rel in plan.files}
    existing = set(store.list(prefix))
    stale = existing - wanted - {manifest_key}
    if stale and manifest_key not in existing and not overwrite:
        raise ConfigError(f"{uri} already holds {len(stale)} object(s) that are not part of this mirror (e.g. "
                          f"{sorted(stale)[0]}); choose an empty prefix or pass --overwrite to replace them")
    if manifest_key in existing:  # replacing a mirror: it is incomplete from now until the new manifest is written
        store.delete(manifest_key)
    for item in plan.skipped:
        log_event(logger, "file not mirrored", logging.WARNING, path=item["path"], reason=item["reason"])
    sizes = {rel: (model.path / rel).stat().st_size for rel in plan.files}
    total = sum(sizes.values())
    log_event(logger, "mirroring model", source=model.source, revision=model.revision, kind=model.kind, uri=uri,
              files=len(plan.files), bytes=total, skipped=len(plan.skipped))
    started = time.monotonic()
    files: dict[str, dict[str, Any]] = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"mirror {prefix}",
              disable=not progress or total < PROGRESS_MIN_BYTES) as bar:
        for rel in plan.files:
            with open(model.path / rel, "rb") as handle:
                digest = store.put_stream(f"{prefix}/{rel}", _ProgressReader(handle, bar), sizes[rel])
            files[rel] = {"sha256": digest, "size": sizes[rel]}
    for key in sorted(stale):
        store.delete(key)
    manifest = {
        "format": MANIFEST_FORMAT, "kind": model.kind, "source": model.source, "revision": model.revision,
        "files": files, "file_count": len(files), "total_bytes": total, "content_hash": content_hash(files),
        "skipped": plan.skipped, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "livo_version": __version__,
    }
    store.put_json(manifest_key, manifest)
    log_event(logger, "model mirrored", uri=uri, files=len(files), bytes=total, content_hash=manifest["content_hash"],
              seconds=round(time.monotonic() - started, 1))
    return manifest


# ================================================================================================ verify
def verify_mirror(uri: str, store: Any = None, progress: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Recompute the sha256 and size of every file the manifest lists; return (manifest, problems)."""
    from tqdm.auto import tqdm

    manifest = read_manifest(uri, store)
    store, prefix = _split(uri, store)
    problems: list[str] = []
    with tqdm(total=manifest["total_bytes"], unit="B", unit_scale=True, desc=f"verify {prefix}",
              disable=not progress or manifest["total_bytes"] < PROGRESS_MIN_BYTES) as bar:
        for rel, entry in sorted(manifest["files"].items()):
            key = f"{prefix}/{rel}"
            if not store.exists(key):
                problems.append(f"{rel}: missing")
                continue
            hasher, size = hashlib.sha256(), 0
            for block in store.open_stream(key):
                hasher.update(block)
                size += len(block)
                bar.update(len(block))
            digest = f"sha256:{hasher.hexdigest()}"
            if digest != entry["sha256"] or size != entry["size"]:
                problems.append(f"{rel}: sha256 {digest[:19]}…, {size} bytes; the manifest records "
                                f"{entry['sha256'][:19]}…, {entry['size']} bytes")
    if not problems:  # mismatches are the caller's to report (the CLI: one error line naming every file)
        log_event(logger, "mirror verified", uri=store.uri(prefix), files=len(manifest["files"]))
    return manifest, problems


def list_mirrors(uri: str, store: Any = None) -> list[tuple[str, dict[str, Any]]]:
    """(mirror URI, manifest) for every mirror under the prefix `uri`."""
    store, prefix = _split(uri, store)
    found = []
    for key in store.list(prefix):
        if key == MANIFEST_NAME or key.endswith("/" + MANIFEST_NAME):
            mirror_prefix = key[: -len(MANIFEST_NAME)].rstrip("/")
            found.append((store.uri(mirror_prefix), store.get_json(key)))
    return found


# ================================================================================================ fetch (cache)
def model_cache_dir() -> Path:
    """`LIVO_MODEL_CACHE`, else ``$LIVO_CACHE_DIR/models``, else ``~/.cache/livo/models``."""
    from livo.paths import cache_dir

    if os.environ.get(ENV_MODEL_CACHE):
        return Path(os.environ[ENV_MODEL_CACHE]).expanduser()
    return cache_dir("models")


def _entry_complete(entry: Path, manifest: dict[str, Any]) -> bool:
    """A cache entry is complete when it holds every manifest file at its size (hashes were checked on download)."""
    if not (entry / MANIFEST_NAME).is_file():
        return False
    for rel, item in manifest["files"].items():
        path = entry / rel
        if not path.is_file() or path.stat().st_size != item["size"]:
            return False
    return True


def _remove_stale_partials(root: Path) -> None:
    """Temporary download directories of killed processes, older than a day."""
    now = time.time()
    for partial in root.glob(".*.partial"):
        with contextlib.suppress(OSError):
            if now - partial.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(partial, ignore_errors=True)


def fetch_model(uri: str, *, kind: str | None = None, store: Any = None, progress: bool = True) -> Path:
    """The local directory holding the verified mirror at `uri`, downloaded into the cache once per content."""
    manifest = read_manifest(uri, store)
    store, prefix = _split(uri, store)
    uri = store.uri(prefix)
    if kind is not None and manifest["kind"] != kind:
        raise ConfigError(f"{uri} is a {manifest['kind']} mirror (source {manifest.get('source')}), but a {kind} "
                          f"model is needed here; point this setting at a {kind} mirror")
    root = model_cache_dir()
    entry = root / manifest["content_hash"].split(":", 1)[1]
    if _entry_complete(entry, manifest):
        log_event(logger, "model cache hit", uri=uri, path=str(entry))
        return entry
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LivoError(f"cannot create the model cache {root} ({exc}); set {ENV_MODEL_CACHE} to a writable "
                        "directory") from None
    with _cache_lock(root / f".{entry.name}.lock", uri):  # sibling ranks of one pod wait instead of downloading
        if _entry_complete(entry, manifest):
            log_event(logger, "model cache hit", uri=uri, path=str(entry))
            return entry
        _remove_stale_partials(root)
        if entry.exists():  # incomplete (a file deleted or truncated by hand): replace it
            log_event(logger, "model cache entry incomplete, downloading again", logging.WARNING, path=str(entry))
            _discard(entry, root)
        partial = Path(tempfile.mkdtemp(prefix=f".{entry.name[:16]}.", suffix=".partial", dir=root))
        try:
            _download_verified(store, prefix, manifest, partial, progress)
            (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                                 encoding="utf-8")
            os.rename(partial, entry)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    log_event(logger, "model cached", uri=uri, path=str(entry), files=manifest["file_count"],
              bytes=manifest["total_bytes"])
    return entry


@contextlib.contextmanager
def _cache_lock(path: Path, uri: str) -> Iterator[None]:
    """An exclusive `flock` on `path` (released when the process dies, so a killed fetch never blocks the next)."""
    import fcntl

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log_event(logger, "waiting for another process fetching the same model", uri=uri, lock=str(path))
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _discard(entry: Path, root: Path) -> None:
    """Move a directory out of the way atomically, then delete it (a reader never sees it half-deleted)."""
    trash = Path(tempfile.mkdtemp(prefix=".discard.", suffix=".partial", dir=root))
    os.rename(entry, trash / "entry")
    shutil.rmtree(trash, ignore_errors=True)


def _download_verified(store: Any, prefix: str, manifest: dict[str, Any], target: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    with tqdm(total=manifest["total_bytes"], unit="B", unit_scale=True, desc=f"fetch {prefix}",
              disable=not progress or manifest["total_bytes"] < PROGRESS_MIN_BYTES) as bar:
        for rel, entry in sorted(manifest["files"].items()):
            key = f"{prefix}/{rel}"
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            hasher, size = hashlib.sha256(), 0
            with open(path, "wb") as handle:
                for block in store.open_stream(key):
                    hasher.update(block)
                    handle.write(block)
                    size += len(block)
                    bar.update(len(block))
            _check_entry(store, key, f"sha256:{hasher.hexdigest()}", size, entry)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
