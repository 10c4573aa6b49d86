"""Load a registered version in one line, and generate with it (docs/serving.md, "Loading a registered version").

    pipe = RegisteredPipeline.from_registry("livo-toy@latest")        # or s3://bucket/models/livo-toy/v3/
    out = pipe("a photo of a bloody nurse", seed=0, num_images=4, compare=True)
    out.principle, out.choice.stage, out.choice.score, out.images, out.base_images, pipe.info.lineage_sha256

Loading, in order (nothing is built from a version that fails a step):
1. the reference resolves to `models/<name>/<version>/` (`ModelNotFound` for an unknown model or version);
2. `livo.registry.lineage.verify_version` — what `livo lineage verify` runs — finds no mismatch
   (`VersionNotVerified` otherwise; `verify="contents"` leaves out the two checks of sources outside the version: the
   principles file and the dataset manifest it was trained from, which may change or be unreachable where it serves);
3. lineage.json is read once; its sha256 must be what the (sealed) manifest records, so it is the verified record;
4. the stored principle set (principles.yaml of the version) must have the recorded principle-set hash;
5. the base model is loaded from the source the lineage names (`base_model.id`: a preset, a folder, a hub id, or an
   `s3://` mirror fetched through `livo.models.mirror` with this store's credentials), with the training seed (it
   decides the weights of the random-weight presets), uncast; its `livo.presets.pipeline_fingerprint` — what training
   recorded and evaluation and registration bound — must equal `base_model.fingerprint` (`BaseModelMismatch` names
   both); only then is it moved to `device` / `dtype`;
6. the value encoder is downloaded and its `weights_digest` must equal `model.weights_sha256`;
7. the retriever is built on the stored principle set (semantic stage when its offline sentence model is installed,
   the LLM stage when `LIVO_LLM_ENDPOINT` / `LIVO_LLM_MODEL` are set, as `livo retrieve`).

`livo.modeling` cannot import the registry (lower layers never import higher ones, tests/test_import_graph.py), so
the registry-aware pipeline is `RegisteredPipeline`, a `LiVOPipeline` subclass living here; `load_registered` is the
same as `RegisteredPipeline.from_registry`. Import them from `livo.serving.loading` (the package imports nothing).
Its errors live in `livo.errors` (importable without torch), each with the `http_status` the server answers with:
`ModelNotFound` 404, `UnknownPrinciple` 400 (both `ConfigError`, exit 2), `VersionNotVerified` 409 (`LivoError`,
exit 1), `BaseModelMismatch` 409 (`ConfigError`, exit 2).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from livo.errors import BaseModelMismatch, ConfigError, LivoError, UnknownPrinciple, VersionNotVerified
from livo.log import get_logger, log_event
from livo.modeling import LiVOPipeline, ValueEncoder, value_token_mask
from livo.registry.lineage import (
    LINEAGE_FILE,
    LineageRecord,
    check_manifest,
    parse_model_ref,
    value_encoder_digest,
    verify_version,
)
from livo.registry.versions import MANIFEST_FILE, MODELS_PREFIX, resolve_version, version_prefix

logger = get_logger("livo.serving")

AUTO = "auto"
VerifyMode = bool | Literal["full", "contents"]
# Mismatch subjects of `verify_version` that are sources outside the version (what it was trained from), not the
# files that are loaded: `verify="contents"` does not refuse a version for them.
EXTERNAL_SUBJECTS = frozenset({"principles", "dataset"})
_S3_VERSION_KEY = re.compile(rf"^{MODELS_PREFIX}/(?P<name>[^/]+)/(?P<version>[^/]+)/?$")


# ------------------------------------------------------------------------------------------------- result types
@dataclass(frozen=True)
class VersionInfo:
    """What was loaded; the server returns it with every response."""

    model: str
    version: str
    uri: str  # s3://bucket/models/<name>/<version>/
    lineage_sha256: str  # sha256:<hex> of lineage.json as stored (what the Kubeflow Model Registry entry records)
    report_uri: str
    weights_sha256: str
    base_model_id: str
    base_model_fingerprint: str
    principle_set_hash: str
    principle_ids: tuple[str, ...]
    verified: str  # "full" | "contents" | "skipped"

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "principle_ids": list(self.principle_ids), "ref": self.ref}


@dataclass(frozen=True)
class PrincipleChoice:
    """Which principle a call used and why.

    `stage`: the retriever's deciding stage for `"auto"` (`keyword`, `semantic`, `person-lexicon`, `person-semantic`,
    `llm`; `none` when no principle applies, `empty prompt`), `explicit` for a given id, `disabled` for None.
    `score`: for `semantic`, the classifier's probability for the principle (the retriever's threshold applies to it);
    for the person stages, the similarity of the closest bias examples; None otherwise. `margin`: for `semantic`, the
    probability minus the threshold; for `person-semantic`, the person vote. `confidence`: the calibrated probability
    that the chosen principle applies (for `none`: that none does; None where the stage is not calibrated, e.g. the
    LLM). `withheld`: principles the retriever chose but dropped below the confidence floor (id -> confidence).
    """

    id: str | None
    text: str | None
    requested: str | None
    stage: str
    category: str | None = None
    score: float | None = None
    margin: float | None = None
    applicable: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    inference_dropout: float = 0.0
    confidence: float | None = None
    withheld: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "applicable": list(self.applicable), "keywords": list(self.keywords),
                "withheld": dict(self.withheld)}


@dataclass
class RegisteredGeneration:
    """The images of one call, flattened in seed order, with the principle used and, with `compare`, the base model's
    images for the same seeds (`base_images[i]` pairs with `images[i]`)."""

    images: list[Any]
    prompt: str
    principle: str | None
    choice: PrincipleChoice
    seeds: list[int]
    used_value_token: list[bool]
    version: VersionInfo
    base_images: list[Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- pipeline
class RegisteredPipeline(LiVOPipeline):
    """A `LiVOPipeline` loaded from a registered version, with its principle set, retriever and version info.

    `generate` works as on `LiVOPipeline`; calling the pipeline chooses the principle (`"auto"`: the retriever).
    """

    def __init__(self, base_pipeline: Any, value_encoder: ValueEncoder, *, principles: Any, retriever: Any,
                 info: VersionInfo):
        super().__init__(base_pipeline, value_encoder)
        self.principles = principles
        self.retriever = retriever
        self.info = info

    @classmethod
    def from_registry(cls, ref: str, *, store: Any = None, device: str | None = None, dtype: Any = None,
                      verify: VerifyMode = True, semantic: bool | None = None, retriever: Any = None,
                      progress: bool = False, min_confidence: float | None = None) -> RegisteredPipeline:
        """Load a registered version: `ref` is `s3://<bucket>/models/<name>/<version>[/]`, or `name`, `name@vN`,
        `name@N`, `name@latest` in `store` (default `ObjectStore.from_env()`).

        `verify`: True/"full" (default) refuses any mismatch `livo lineage verify` reports; "contents" ignores those
        of the sources outside the version (principles file, dataset manifest); False skips verification (the
        lineage-vs-manifest, principle-set and weights digests below are checked anyway). `semantic`: the retriever's
        semantic stage (None: on when its sentence model is installed). `retriever`: use this one instead.
        `min_confidence`: the retriever's confidence floor for "auto" (None: the principles' own).
        """
        return _load(cls, ref, store=store, device=device, dtype=dtype, verify=verify, semantic=semantic,
                     retriever=retriever, progress=progress, min_confidence=min_confidence)

    # ---- principle choice
    def choose_principle(self, prompt: str, principle: str | None = AUTO) -> PrincipleChoice:
        """The principle for `prompt`: `"auto"` asks the retriever, an id picks it (`UnknownPrinciple` lists the
        known ids), None means none (base behaviour)."""
        if principle is None:
            return PrincipleChoice(id=None, text=None, requested=None, stage="disabled")
        if not isinstance(principle, str):
            raise ConfigError(f"principle must be 'auto', a principle id or None, got {type(principle).__name__}")
        if principle != AUTO:
            if principle not in self.principles:
                raise UnknownPrinciple(f"unknown principle {principle!r} for {self.info.ref}; known ids: "
                                       f"{', '.join(self.principles.ids)} (or 'auto', or none)")
            chosen = self.principles.get(principle)
            return PrincipleChoice(id=chosen.id, text=chosen.text, requested=principle, stage="explicit",
                                   category=chosen.category, inference_dropout=float(chosen.inference_dropout))
        explanation = self.retriever.explain(prompt)
        pid = explanation["principle"]
        stage = explanation["decided_by"]
        score = margin = None
        if pid is not None:
            semantic = (explanation.get("semantic") or {}).get(pid) or {}
            if stage == "semantic":
                score = semantic.get("probability")
                margin = None if score is None else round(score - explanation["threshold"], 4)
            elif stage == "person-semantic":
                margin = (explanation.get("person") or {}).get("semantic_margin")
                score = (explanation.get("bias_scores") or {}).get(pid)
            elif stage == "person-lexicon":
                score = (explanation.get("bias_scores") or {}).get(pid)
        chosen = self.principles.get(pid) if pid is not None else None
        return PrincipleChoice(
            id=pid, text=chosen.text if chosen else None, requested=AUTO, stage=stage,
            category=chosen.category if chosen else None,
            score=float(score) if score is not None else None, margin=float(margin) if margin is not None else None,
            applicable=tuple(explanation.get("all") or ()),
            keywords=tuple((explanation.get("keyword_hits") or {}).get(pid, ())) if pid else (),
            inference_dropout=float(chosen.inference_dropout) if chosen else 0.0,
            confidence=explanation.get("confidence"),
            withheld=tuple(sorted((explanation.get("withheld") or {}).items())),
        )

    # ---- generation
    def __call__(self, prompt: str, principle: str | None = AUTO, *, seed: int = 0, num_images: int = 1,
                 seeds: Sequence[int] | None = None, compare: bool = False, inference_dropout: float | None = None,
                 negative_prompt: str | None = None, num_inference_steps: int = 25, guidance_scale: float = 7.5,
                 height: int | None = None, width: int | None = None, batch_size: int = 8,
                 progress: bool = False) -> RegisteredGeneration:
        """`num_images` images of `prompt`, image i with seed `seed + i` — or one image per seed of `seeds` (then
        `seeds[0]` also draws the value-token positions, as `seed` does otherwise).

        The chosen principle's `inference_dropout` applies as in evaluation: exactly round(n·(1 − p)) images carry the
        value token, at positions drawn from `seed` (`livo.modeling.value_token_mask`); `inference_dropout` overrides
        it. Images without the token are bit-identical to the base model's. `compare=True` adds the base model's
        images for the same seeds (only the images with the token are generated twice).
        """
        if not isinstance(prompt, str):
            raise ConfigError(f"the prompt must be a string, got {type(prompt).__name__}")
        if seeds is not None:
            if isinstance(seeds, str | bytes) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                         for s in seeds):
                raise ConfigError(f"seeds must be whole numbers, got {seeds!r}")
            seeds = list(seeds)
            if not seeds:
                raise ConfigError("seeds is empty; give at least one seed")
            seed, num_images = seeds[0], len(seeds)
        if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
            raise ConfigError(f"num_images must be a positive whole number, got {num_images!r}")
        choice = self.choose_principle(prompt, principle)
        dropout = choice.inference_dropout if inference_dropout is None else float(inference_dropout)
        settings = dict(negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, height=height, width=width, batch_size=batch_size,
                        progress=progress)
        seeds = seeds if seeds is not None else [seed + i for i in range(num_images)]
        mask = value_token_mask(num_images, dropout, seed) if choice.id else [False] * num_images
        out = self.generate([prompt], choice.text, num_images_per_prompt=num_images, seed=seed, seeds=seeds,
                            inference_dropout=dropout if choice.id else 0.0, **settings)
        if out.used_value_token != mask:  # the same rule, the same seed: a change in either breaks this promise
            raise LivoError(f"internal error: value-token positions {out.used_value_token} differ from {mask}")
        base_images = None
        if compare:
            base_images = list(out.images)
            token_positions = [i for i, used in enumerate(mask) if used]
            if token_positions:
                base = self.generate([prompt] * len(token_positions), None, seeds=[seeds[i] for i in token_positions],
                                     **settings)
                for i, image in zip(token_positions, base.images, strict=True):
                    base_images[i] = image
        log_event(logger, "generated", model=self.info.ref, principle=choice.id, stage=choice.stage,
                  images=num_images, with_token=sum(mask), compare=compare)
        return RegisteredGeneration(
            images=list(out.images), prompt=prompt, principle=choice.id, choice=choice, seeds=seeds,
            used_value_token=list(out.used_value_token), version=self.info, base_images=base_images,
            settings={k: v for k, v in settings.items() if k not in ("batch_size", "progress")}
                     | {"seed": seed, "num_images": num_images, "inference_dropout": dropout if choice.id else None},
        )


def load_registered(ref: str, *, store: Any = None, device: str | None = None, dtype: Any = None,
                    verify: VerifyMode = True, semantic: bool | None = None, retriever: Any = None,
                    progress: bool = False, min_confidence: float | None = None) -> RegisteredPipeline:
    """`RegisteredPipeline.from_registry(ref, ...)`."""
    return RegisteredPipeline.from_registry(ref, store=store, device=device, dtype=dtype, verify=verify,
                                            semantic=semantic, retriever=retriever, progress=progress,
                                            min_confidence=min_confidence)


# ------------------------------------------------------------------------------------------------------ loading
def resolve_reference(ref: str, store: Any = None) -> tuple[Any, str, str]:
    """(store, name, version) of a reference, the version resolved (`ModelNotFound` when it is not registered)."""
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError("model reference is empty; give s3://<bucket>/models/<name>/<version> or NAME[@VERSION]")
    ref = ref.strip()
    if ref.startswith("s3://"):
        from livo.store import ObjectStore, parse_s3_uri

        _, key = parse_s3_uri(ref)
        match = _S3_VERSION_KEY.match(key)
        if not match:
            raise ConfigError(f"model reference {ref!r}: a registered version's URI is "
                              f"s3://<bucket>/{MODELS_PREFIX}/<name>/<version>/ (e.g. …/{MODELS_PREFIX}/livo-toy/v3/)")
        store = store.for_uri(ref) if store is not None else ObjectStore.for_uri(ref)
        name, version = match.group("name"), match.group("version")
        version_prefix(name, version)  # a malformed name or version is bad input, before any request
    else:
        if "/" in ref:
            raise ConfigError(f"model reference {ref!r}: write NAME[@VERSION] (e.g. livo-toy@v3) or the version's "
                              f"s3://<bucket>/{MODELS_PREFIX}/<name>/<version>/ URI")
        name, version = parse_model_ref(ref)
        if store is None:
            from livo.store import ObjectStore

            store = ObjectStore.from_env()
    return store, name, resolve_version(store, name, version)


def _verify(store: Any, name: str, version: str, verify: VerifyMode) -> str:
    if verify is False:
        log_event(logger, "lineage verification skipped", model=f"{name}@{version}")
        return "skipped"
    if verify not in (True, "full", "contents"):
        raise ConfigError(f"verify={verify!r}: use True (or 'full'), 'contents' or False")
    mode = "contents" if verify == "contents" else "full"
    problems = verify_version(store, name, version)
    ignored = [p for p in problems if p.subject in EXTERNAL_SUBJECTS] if mode == "contents" else []
    refused = [p for p in problems if p not in ignored]
    for problem in ignored:
        log_event(logger, "provenance source changed (verify=contents: not refused)", model=f"{name}@{version}",
                  subject=problem.subject, detail=problem.detail)
    if refused:
        listed = "; ".join(f"{p.subject}: {p.detail}" for p in refused[:3]) + ("; …" if len(refused) > 3 else "")
        external = all(p.subject in EXTERNAL_SUBJECTS for p in refused)
        hint = (" (only sources outside the version changed: pass verify='contents' to load it anyway)" if external
                else "")
        raise VersionNotVerified(
            f"{name}@{version} failed lineage verification, so it is not loaded: {len(refused)} mismatch(es): "
            f"{listed}{hint}; run `livo lineage verify {name}@{version}` for the full report, then restore or "
            "re-register the version", [(p.subject, p.detail) for p in refused])
    return mode


def _read_record(store: Any, prefix: str, ref: str, verified: bool) -> tuple[LineageRecord, str]:
    """The lineage record and the sha256 of lineage.json as stored, which the sealed manifest must record."""
    lineage_key = prefix + LINEAGE_FILE
    if not store.exists(lineage_key):
        raise VersionNotVerified(f"{ref} has no lineage record ({store.uri(lineage_key)}); it is not loaded — run "
                                 f"`livo lineage verify {ref}`", [(LINEAGE_FILE, "missing")])
    data = store.get_bytes(lineage_key)
    lineage_sha256 = "sha256:" + hashlib.sha256(data).hexdigest()
    manifest, issues = check_manifest(store.get_bytes(prefix + MANIFEST_FILE))
    recorded = ((manifest or {}).get("files") or {}).get(LINEAGE_FILE)
    if recorded != lineage_sha256 or (verified and issues):
        why = issues[0] if issues else f"lineage.json has sha256 {lineage_sha256}, the manifest records {recorded}"
        raise VersionNotVerified(f"{ref}: lineage.json does not match its sealed manifest ({why}; changed while "
                                 f"loading?); it is not loaded — run `livo lineage verify {ref}`",
                                 [(LINEAGE_FILE, why)])
    return LineageRecord.from_json_bytes(data, store.uri(lineage_key)), lineage_sha256


def _load_principles(store: Any, prefix: str, record: LineageRecord, ref: str) -> Any:
    from livo.principles import load_principles_text

    key = prefix + record.principles.stored_copy
    try:
        principles = load_principles_text(store.get_bytes(key).decode("utf-8"), source=store.uri(key))
    except UnicodeDecodeError as exc:
        raise VersionNotVerified(f"{store.uri(key)} is not UTF-8 text ({exc}); {ref} is not loaded",
                                 [(record.principles.stored_copy, "not UTF-8")]) from None
    if principles.hash != record.principles.hash:
        raise VersionNotVerified(f"{store.uri(key)} has principle-set hash {principles.hash}, the lineage records "
                                 f"{record.principles.hash}; {ref} is not loaded — run `livo lineage verify {ref}`",
                                 [(record.principles.stored_copy, "principle-set hash differs")])
    return principles


def load_base_model(record: LineageRecord, store: Any = None) -> Any:
    """The base pipeline the lineage names, as training loaded it (its seed, uncast), checked against the recorded
    fingerprint (`BaseModelMismatch` names both)."""
    from livo.presets import load_pipeline, pipeline_fingerprint

    source = record.base_model.id
    local = source
    if source.startswith("s3://"):  # a mirror: fetched, verified against its own manifest, cached by content
        from livo.models.mirror import fetch_model

        local = str(fetch_model(source, kind="diffusers", store=store, progress=False))
    base = load_pipeline(local, seed=record.training.seed)
    fingerprint = pipeline_fingerprint(base)
    expected = record.base_model.fingerprint
    if fingerprint != expected:
        raise BaseModelMismatch(
            f"{record.model.name}@{record.model.version} was trained and evaluated on base model {source!r} with "
            f"fingerprint {expected}, but {source!r} loads here with fingerprint {fingerprint}; it is not the same "
            "model (other weights, or another LIVO_SD15_PATH / mirror) — point the source at the model it was "
            "trained on, or register a version trained on this one", expected=expected, actual=fingerprint)
    return base


def _load_value_encoder(store: Any, prefix: str, record: LineageRecord, ref: str, progress: bool) -> ValueEncoder:
    path = record.model.value_encoder_path.strip("/")
    with tempfile.TemporaryDirectory(prefix="livo-serving-") as tmp:
        local = Path(tmp) / path
        store.download_dir(prefix + path, local, progress=progress)
        digest = value_encoder_digest(local)
        if digest != record.model.weights_sha256:
            raise VersionNotVerified(f"{ref}: the downloaded value encoder has weights digest {digest}, the lineage "
                                     f"records {record.model.weights_sha256}; it is not loaded — run `livo lineage "
                                     f"verify {ref}`", [(path, "weights digest differs")])
        return ValueEncoder.from_pretrained(local)


def _load(cls: type[RegisteredPipeline], ref: str, *, store: Any, device: str | None, dtype: Any,
          verify: VerifyMode, semantic: bool | None, retriever: Any, progress: bool,
          min_confidence: float | None = None) -> RegisteredPipeline:
    store, name, version = resolve_reference(ref, store)
    label = f"{name}@{version}"
    mode = _verify(store, name, version, verify)
    prefix = version_prefix(name, version)
    record, lineage_sha256 = _read_record(store, prefix, label, verified=mode != "skipped")
    if (record.model.name, record.model.version) != (name, version):
        raise VersionNotVerified(f"{store.uri(prefix + LINEAGE_FILE)} describes {record.model.name}@"
                                 f"{record.model.version}, not {label}; it is not loaded",
                                 [(LINEAGE_FILE, "describes another version")])
    principles = _load_principles(store, prefix, record, label)
    base = load_base_model(record, store)
    if device is not None or dtype is not None:
        from livo.presets import torch_dtype_named

        base = base.to(device=device, dtype=torch_dtype_named(dtype) if isinstance(dtype, str) else dtype)
    encoder = _load_value_encoder(store, prefix, record, label, progress)
    info = VersionInfo(
        model=name, version=version, uri=store.uri(prefix), lineage_sha256=lineage_sha256,
        report_uri=record.evaluation.report_uri, weights_sha256=record.model.weights_sha256,
        base_model_id=record.base_model.id, base_model_fingerprint=record.base_model.fingerprint,
        principle_set_hash=record.principles.hash, principle_ids=tuple(principles.ids), verified=mode,
    )
    from livo.retriever import deployed_retriever

    pipe = cls(base, encoder, principles=principles,
               retriever=(retriever if retriever is not None
                          else deployed_retriever(principles, semantic, min_confidence)),
               info=info)
    log_event(logger, "registered version loaded", model=label, uri=info.uri, weights=info.weights_sha256,
              base_model=info.base_model_id, verified=mode, device=str(pipe.device))
    return pipe


__all__ = ["AUTO", "PrincipleChoice", "RegisteredGeneration", "RegisteredPipeline", "VersionInfo",
           "load_base_model", "load_registered", "resolve_reference"]
