"""Where a training run's outputs live, and how checkpoints become complete, resumable and exportable.

Layout under the run's `output` (a local directory or `s3://bucket/prefix`):

    checkpoints/step-00001000/   DeepSpeed files (model states, one ZeRO optimizer shard per rank),
                                 trainer_state.json (step, data position, config fingerprint),
                                 rng-rank<r>.safetensors (each rank's noise generator and torch RNG states),
                                 COMPLETE.json (written last: step, world size, sha256 of every file)
    value_encoder/               the final value encoder: config.json + model.safetensors (save_pretrained layout)
    metrics.json, train_log.jsonl, training_config.json
    result.json                  written last: the value encoder's file digests, metrics, config, dataset

A checkpoint without `COMPLETE.json` (a rank died while saving) is ignored by resume and overwritten when that step
is saved again; deletion removes `COMPLETE.json` first, so a half-deleted checkpoint is never taken for a complete one.
With an `s3://` output, DeepSpeed writes into a node-local staging directory first; each node's local rank 0 uploads
the files its ranks wrote, then global rank 0 writes the commit object listing all of them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from livo.errors import ConfigError, LivoError, StoreError
from livo.log import get_logger, log_event

log = get_logger("livo.training.checkpoint")

CHECKPOINTS_DIR = "checkpoints"
COMMIT_FILE = "COMPLETE.json"
TRAINER_STATE_FILE = "trainer_state.json"
VALUE_ENCODER_DIR = "value_encoder"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.json"
TRAIN_LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "training_config.json"
_TAG_RE = re.compile(r"^step-(\d{8})$")


def step_tag(step: int) -> str:
    return f"step-{step:08d}"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Temp file in the same directory, then rename: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def local_digests(directory: Path) -> dict[str, str]:
    """{relpath: sha256} of every file under `directory` (temp files excluded)."""
    return {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p.name != COMMIT_FILE
    }


class RunOutput:
    """A run's output location. `staging` is the node-local directory that mirrors the output layout."""

    uri: str
    staging: Path

    def checkpoint_dir(self, step: int) -> Path:
        """Local directory DeepSpeed writes the checkpoint of `step` into."""
        return self.staging / CHECKPOINTS_DIR / step_tag(step)

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def complete_steps(self) -> list[int]:
        raise NotImplementedError

    def publish_checkpoint_files(self, step: int) -> dict[str, str]:
        """Make the files this node wrote for `step` durable in the output; return {relpath: sha256}."""
        raise NotImplementedError

    def commit_checkpoint(self, step: int, files: dict[str, str], payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def fetch_checkpoint(self, step: int) -> Path:
        """A local directory holding the complete checkpoint of `step`, verified against its commit object."""
        raise NotImplementedError

    def delete_checkpoint(self, step: int) -> None:
        raise NotImplementedError

    def discard_local_copy(self, step: int) -> None:
        """Free node-local disk once a checkpoint is durable elsewhere (no-op when staging is the output)."""

    # -- final outputs ---------------------------------------------------------------------------------------------
    def publish_dir(self, local_dir: Path, name: str) -> dict[str, str]:
        """Put `local_dir` at `<output>/<name>/`, replacing what was there; return {relpath: sha256}."""
        raise NotImplementedError

    def put_json(self, name: str, obj: Any) -> None:
        raise NotImplementedError

    def put_file(self, local_path: Path, name: str) -> None:
        raise NotImplementedError

    def get_json(self, name: str) -> Any | None:
        raise NotImplementedError

    def get_text(self, name: str) -> str | None:
        """The UTF-8 text of `<output>/<name>`, or None when it does not exist."""
        raise NotImplementedError

    def fetch_file(self, name: str, target: Path) -> None:
        """Copy `<output>/<name>` to the local path `target`."""
        raise NotImplementedError

    def location_of(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"

    def check_writable(self) -> None:
        """Write and delete a small probe where checkpoints go, so an unwritable output fails in seconds, before
        any model is loaded, instead of at the first checkpoint. Raises `ConfigError` (exit 2) when the path given is
        unusable (not a directory, name too long) and `LivoError` (exit 1) when the environment is at fault
        (permission denied, read-only or full filesystem, I/O error, the object store refusing the write)."""
        raise NotImplementedError

    def prune(self, keep_last: int) -> list[int]:
        """Delete all but the newest `keep_last` complete checkpoints; return the deleted steps."""
        steps = self.complete_steps()
        doomed = steps[:-keep_last] if keep_last > 0 else steps
        for step in doomed:
            self.delete_checkpoint(step)
        if doomed:
            log_event(log, "checkpoints pruned", deleted=doomed, kept=steps[len(doomed):])
        return doomed


class LocalRunOutput(RunOutput):
    """A local (or shared, e.g. NFS/PVC) directory: DeepSpeed writes straight into it."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)
        self.staging = self.root

    def check_writable(self) -> None:
        probe_local_dir(self.root, "training output")

    def complete_steps(self) -> list[int]:
        base = self.root / CHECKPOINTS_DIR
        if not base.is_dir():
            return []
        steps = []
        for child in base.iterdir():
            match = _TAG_RE.match(child.name)
            if match and (child / COMMIT_FILE).is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def publish_checkpoint_files(self, step: int) -> dict[str, str]:
        directory = self.checkpoint_dir(step)
        return local_digests(directory) if directory.is_dir() else {}

    def commit_checkpoint(self, step: int, files: dict[str, str], payload: dict[str, Any]) -> None:
        write_json_atomic(self.checkpoint_dir(step) / COMMIT_FILE, {**payload, "files": files})

    def fetch_checkpoint(self, step: int) -> Path:
        directory = self.checkpoint_dir(step)
        commit = json.loads((directory / COMMIT_FILE).read_text())
        for relpath, digest in commit["files"].items():
            path = directory / relpath
            if not path.is_file():
                raise LivoError(f"checkpoint {directory} lacks {relpath} listed in its {COMMIT_FILE}; it was modified "
                                "after saving — delete that checkpoint directory to resume from an older one")
            if sha256_file(path) != digest:
                raise LivoError(f"checkpoint file {path} does not match the digest in its {COMMIT_FILE}; it is "
                                "corrupted — delete that checkpoint directory to resume from an older one")
        return directory

    def delete_checkpoint(self, step: int) -> None:
        directory = self.checkpoint_dir(step)
        (directory / COMMIT_FILE).unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)

    def publish_dir(self, local_dir: Path, name: str) -> dict[str, str]:
        target = self.root / name
        digests = local_digests(local_dir)
        if local_dir.resolve() == target.resolve():
            return digests
        self.root.mkdir(parents=True, exist_ok=True)
        if local_dir.resolve().parent != self.root:
            # Copy next to the target first, so that the final step is a rename within one filesystem.
            copy = self.root / f".{name}.incoming-{os.getpid()}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(local_dir, copy)
            local_dir = copy
        # Rename into place; the previous version is moved aside first and removed after.
        old = None
        if target.exists():
            old = target.with_name(f".{name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(local_dir, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return digests

    def put_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.root / name, obj)

    def put_file(self, local_path: Path, name: str) -> None:
        target = self.root / name
        if local_path.resolve() != target.resolve():
            shutil.copyfile(local_path, target)

    def get_json(self, name: str) -> Any | None:
        path = self.root / name
        return json.loads(path.read_text()) if path.is_file() else None

    def get_text(self, name: str) -> str | None:
        path = self.root / name
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def fetch_file(self, name: str, target: Path) -> None:
        shutil.copyfile(self.root / name, target)


class StoreRunOutput(RunOutput):
    """An object-store prefix; checkpoints are staged on node-local disk and uploaded."""

    def __init__(self, store, prefix: str, staging: str | Path):
        self.store = store
        self.prefix = prefix.strip("/")
        self.uri = store.uri(self.prefix)
        self.staging = Path(staging).expanduser().resolve()

    def _key(self, relpath: str) -> str:
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    def check_writable(self) -> None:
        probe_local_dir(self.staging, "staging directory (staging_dir) of the training output")
        probe = self._key(f".livo-write-probe-{socket.gethostname()}-{os.getpid()}")
        try:
            self.store.put_bytes(probe, b"livo write probe")
            self.store.delete(probe)
        except StoreError as exc:
            raise StoreError(f"cannot write the training output {self.uri}: {exc}") from None

    def _ckpt_key(self, step: int, relpath: str = "") -> str:
        base = self._key(f"{CHECKPOINTS_DIR}/{step_tag(step)}")
        return f"{base}/{relpath}" if relpath else base

    def complete_steps(self) -> list[int]:
        steps = []
        for key in self.store.list(self._key(CHECKPOINTS_DIR)):
            parts = key.rsplit("/", 2)
            if len(parts) == 3 and parts[2] == COMMIT_FILE:
                match = _TAG_RE.match(parts[1])
                if match:
                    steps.append(int(match.group(1)))
        return sorted(set(steps))

    def publish_checkpoint_files(self, step: int) -> dict[str, str]:
        directory = self.checkpoint_dir(step)
        digests = {}
        if directory.is_dir():
            for relpath in local_digests(directory):
                digests[relpath] = self.store.put_file(self._ckpt_key(step, relpath), directory / relpath)
        return digests

    def commit_checkpoint(self, step: int, files: dict[str, str], payload: dict[str, Any]) -> None:
        self.store.put_json(self._ckpt_key(step, COMMIT_FILE), {**payload, "files": files})

    def fetch_checkpoint(self, step: int) -> Path:
        directory = self.checkpoint_dir(step)
        if directory.is_dir() and (directory / COMMIT_FILE).is_file():
            try:
                if json.loads((directory / COMMIT_FILE).read_text())["files"] == local_digests(directory):
                    return directory  # this node still holds exactly the committed files
            except (ValueError, KeyError):
                pass
        shutil.rmtree(directory, ignore_errors=True)
        try:
            self.store.download_dir(self._ckpt_key(step), directory, require_commit=self._ckpt_key(step, COMMIT_FILE))
        except StoreError as exc:
            raise LivoError(f"cannot fetch checkpoint {self._ckpt_key(step)}: {exc}") from exc
        self.store.download_file(self._ckpt_key(step, COMMIT_FILE), directory / COMMIT_FILE)
        return directory

    def delete_checkpoint(self, step: int) -> None:
        commit = self._ckpt_key(step, COMMIT_FILE)
        if self.store.exists(commit):
            self.store.delete(commit)
        self.store.delete_prefix(self._ckpt_key(step))
        self.discard_local_copy(step)

    def discard_local_copy(self, step: int) -> None:
        shutil.rmtree(self.checkpoint_dir(step), ignore_errors=True)

    def publish_dir(self, local_dir: Path, name: str) -> dict[str, str]:
        if self.store.list(self._key(name)):
            self.store.delete_prefix(self._key(name))
        return self.store.upload_dir(self._key(name), local_dir, progress=False)

    def put_json(self, name: str, obj: Any) -> None:
        self.store.put_json(self._key(name), obj)

    def put_file(self, local_path: Path, name: str) -> None:
        self.store.put_file(self._key(name), local_path)

    def get_json(self, name: str) -> Any | None:
        key = self._key(name)
        return self.store.get_json(key) if self.store.exists(key) else None

    def get_text(self, name: str) -> str | None:
        key = self._key(name)
        return self.store.get_bytes(key).decode("utf-8") if self.store.exists(key) else None

    def fetch_file(self, name: str, target: Path) -> None:
        self.store.download_file(self._key(name), target)


# errno values that mean the environment, not the path the user gave, is at fault: exit 1 (docs/failure_contract.md:
# read-only or full volume, permission denied, I/O error). Anything else (the path is a file, too long...) means the
# path itself cannot be an output directory: bad input, exit 2.
_ENVIRONMENT_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EACCES,
                                 errno.EPERM})


def probe_local_dir(directory: Path, what: str) -> None:
    """Create `directory` if needed, write a small file there (fsynced) and delete it; one-line error otherwise."""
    from livo.data.dataset import out_of_space_error

    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".livo-write-probe-{socket.gethostname()}-", dir=directory)
        try:
            os.write(fd, b"livo write probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise out_of_space_error(f"a write probe of the {what}", directory) from None
        cause = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(directory) else ""
        if exc.errno in _ENVIRONMENT_ERRNOS:
            raise LivoError(f"cannot write the {what} {directory}: {cause}{where}; make it writable for this "
                            "user (or mount a writable volume there) and run again") from None
        raise ConfigError(f"cannot write the {what} {directory}: {cause}{where}; choose a directory you can "
                          "write (--output / output=...)") from None


def open_run_output(output: str, staging_dir: str | None = None) -> RunOutput:
    """`s3://bucket/prefix` -> the object store configured by `LIVO_S3_*`; anything else -> a local directory."""
    if output.startswith("s3://"):
        from livo.store import ObjectStore, parse_s3_uri

        store, prefix = ObjectStore.for_uri(output), parse_s3_uri(output)[1]
        if not prefix:
            raise ConfigError(f"output {output!r} names a whole bucket; give a prefix, e.g. s3://bucket/runs/train-1")
        staging = staging_dir or Path(tempfile.gettempdir()) / "livo-train" / hashlib.sha256(
            output.encode()).hexdigest()[:16]
        return StoreRunOutput(store, prefix, staging)
    if "://" in output:
        raise ConfigError(f"output {output!r}: unsupported scheme; use a local directory or s3://bucket/prefix")
    return LocalRunOutput(output)


# ----------------------------------------------------------------------------------------------------------------
# RNG state files: a uint8 tensor per generator, stored as safetensors (no pickle involved in loading).


def save_rng_state(path: Path, states: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({name: state.contiguous() for name, state in states.items()}, str(tmp))
    os.replace(tmp, path)


def load_rng_state(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise LivoError(f"checkpoint lacks {path.name}: it was written by a different number of ranks; resume with the "
                        "same world size it was saved with")
    return load_file(str(path))
