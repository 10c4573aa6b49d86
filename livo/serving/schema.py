"""The request and response schema of `livo serve` (docs/serving.md, "Server"), independent of KServe.

Requests become a list of `GenerationRequest`s (one per prompt) after validation: every problem is a `BadRequest`
with a one-line cause (HTTP 400). Responses carry PNG images as base64 strings.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from livo.serving.config import ServeConfig
from livo.serving.errors import BadRequest, VersionNotFound
from livo.serving.generator import AUTO, GenerationRequest, GenerationResult, ModelInfo

MAX_SEED = 2**63 - 1
NONE_WORDS = ("none",)
INSTANCE_FIELDS = ("prompt", "principle", "seed", "seeds", "num_images", "compare")
BODY_FIELDS = INSTANCE_FIELDS + ("instances", "version")
V2_INPUTS = ("prompt", "principle", "seed")
V2_PARAMETERS = ("principle", "seed", "num_images", "compare", "version")
# parameters the Open Inference Protocol itself defines; accepted and ignored
V2_RESERVED_PARAMETERS = ("binary_data_output", "binary_data", "binary_data_size", "content_type", "headers")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_prompt(value: Any, config: ServeConfig, where: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{where}: the prompt is not UTF-8 text") from None
    if not isinstance(value, str):
        raise BadRequest(f"{where}: the prompt must be a string, got {type(value).__name__}")
    prompt = value.strip()
    if not prompt:
        raise BadRequest(f"{where}: the prompt is empty; give the text of a prompt")
    if len(prompt) > config.max_prompt_chars:
        raise BadRequest(f"{where}: the prompt has {len(prompt)} characters; at most {config.max_prompt_chars} "
                         "(max_prompt_chars)")
    return prompt


def parse_principle(value: Any, info: ModelInfo, where: str) -> str | None:
    """AUTO, a principle id of the served version, or None (`"none"` / null)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise BadRequest(f"{where}: principle must be a string (auto, none or a principle id), got "
                         f"{type(value).__name__}")
    name = value.strip()
    if name.lower() == AUTO:
        return AUTO
    if name.lower() in NONE_WORDS:
        return None
    if info.principle(name) is None:
        known = ", ".join([p.id for p in info.principles] + [AUTO, "none"])
        raise BadRequest(f"{where}: unknown principle {name!r}; this model knows: {known}")
    return name


def parse_seed(value: Any, where: str) -> int:
    if not _is_int(value):
        shown = json.dumps(value) if _jsonable(value) else repr(value)
        raise BadRequest(f"{where}: a seed must be an integer, got {shown}")
    if not 0 <= value <= MAX_SEED:
        raise BadRequest(f"{where}: a seed must be in 0..{MAX_SEED}, got {value}")
    return int(value)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def parse_count(value: Any, config: ServeConfig, where: str) -> int:
    if not _is_int(value) or value < 1:
        raise BadRequest(f"{where}: num_images must be a positive integer, got {value!r}")
    if value > config.max_images_per_request:
        raise BadRequest(f"{where}: num_images is {value}; at most {config.max_images_per_request} images per "
                         "request (max_images_per_request)")
    return int(value)


def parse_seeds(seed: Any, seeds: Any, num_images: Any, config: ServeConfig, where: str) -> tuple[int, ...]:
    """The per-image seeds: `seeds` (one per image), or `seed`, seed+1, ... (a random base seed when absent)."""
    if seed is not None and seeds is not None:
        raise BadRequest(f"{where}: give seed or seeds, not both")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds:
            raise BadRequest(f"{where}: seeds must be a non-empty list of integers")
        count = parse_count(len(seeds), config, where) if num_images is None else parse_count(num_images, config, where)
        if len(seeds) != count:
            raise BadRequest(f"{where}: {len(seeds)} seeds for num_images={count}; give one seed per image")
        return tuple(parse_seed(s, where) for s in seeds)
    count = 1 if num_images is None else parse_count(num_images, config, where)
    base = secrets.randbelow(2**31) if seed is None else parse_seed(seed, where)
    if base + count - 1 > MAX_SEED:
        raise BadRequest(f"{where}: seed {base} + {count} images runs past {MAX_SEED}")
    return tuple(base + i for i in range(count))


def parse_bool(value: Any, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: {name} must be true or false, got {value!r}")
    return value


def _check_total(requests: Sequence[GenerationRequest], config: ServeConfig) -> None:
    total = sum(len(r.seeds) for r in requests)
    if total > config.max_images_per_request:
        raise BadRequest(f"the request asks for {total} images; at most {config.max_images_per_request} per request "
                         "(max_images_per_request)")


def check_version(version: Any, info: ModelInfo) -> None:
    if version is None:
        return
    if not isinstance(version, str) or version.strip() not in (info.version, f"{info.name}@{info.version}"):
        raise VersionNotFound(f"model version {version!r} is not served here; this server serves "
                              f"{info.name}@{info.version}")


def parse_v1(body: Any, info: ModelInfo, config: ServeConfig) -> list[GenerationRequest]:
    """A v1 body: `{"instances": [{prompt, principle?, seed?|seeds?, num_images?, compare?}, ...]}` (an instance may
    also be a bare prompt string) or one instance as the whole body."""
    if isinstance(body, bytes | bytearray):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"the body is not JSON ({exc})") from None
    if not isinstance(body, Mapping):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(BODY_FIELDS))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; fields: {', '.join(BODY_FIELDS)}")
    check_version(body.get("version"), info)
    if "instances" in body:
        extra = sorted(set(body) - {"instances", "version"})
        if extra:
            raise BadRequest(f"with instances, {extra[0]!r} belongs inside each instance")
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest("instances must be a non-empty list")
        if len(instances) > config.max_images_per_request:
            raise BadRequest(f"{len(instances)} instances; at most {config.max_images_per_request} images per request "
                             "(max_images_per_request)")
    else:
        instances = [{k: v for k, v in body.items() if k != "version"}]
    requests = []
    for index, instance in enumerate(instances):
        where = f"instances[{index}]" if "instances" in body else "request"
        if isinstance(instance, str):
            instance = {"prompt": instance}
        if not isinstance(instance, Mapping):
            raise BadRequest(f"{where}: must be an object with a prompt, or a prompt string")
        unknown = sorted(set(instance) - set(INSTANCE_FIELDS))
        if unknown:
            raise BadRequest(f"{where}: unknown field {unknown[0]!r}; fields: {', '.join(INSTANCE_FIELDS)}")
        if "prompt" not in instance:
            raise BadRequest(f"{where}: no prompt")
        requests.append(GenerationRequest(
            prompt=parse_prompt(instance["prompt"], config, where),
            principle=parse_principle(instance.get("principle", AUTO), info, where),
            seeds=parse_seeds(instance.get("seed"), instance.get("seeds"), instance.get("num_images"), config, where),
            compare=parse_bool(instance.get("compare", False), "compare", where),
        ))
    _check_total(requests, config)
    return requests


def _v2_values(infer_input: Any) -> list[Any]:
    data = infer_input.data
    if hasattr(data, "tolist"):
        data = data.tolist()
    if not isinstance(data, list):
        data = [data]
    flat: list[Any] = []
    for value in data:  # a shape [N, 1] tensor arrives nested
        flat.extend(value if isinstance(value, list) else [value])
    return flat


INTEGER_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


def parse_v2(inputs: Sequence[Any], parameters: Mapping[str, Any] | None, info: ModelInfo,
             config: ServeConfig) -> list[GenerationRequest]:
    """Open Inference Protocol v2: input `prompt` (BYTES [N]) and optional `principle` (BYTES [N] or [1]) and `seed`
    (an integer type, [N]: each prompt's first seed); parameters `principle`, `seed`, `num_images`, `compare`,
    `version` apply to every prompt."""
    parameters = {k: v for k, v in dict(parameters or {}).items() if k not in V2_RESERVED_PARAMETERS}
    unknown = sorted(set(parameters) - set(V2_PARAMETERS))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}; parameters: {', '.join(V2_PARAMETERS)}")
    check_version(parameters.get("version"), info)
    by_name = {}
    for infer_input in inputs:
        if infer_input.name not in V2_INPUTS:
            raise BadRequest(f"unknown input {infer_input.name!r}; inputs: {', '.join(V2_INPUTS)}")
        if infer_input.name in by_name:
            raise BadRequest(f"input {infer_input.name!r} given twice")
        by_name[infer_input.name] = infer_input
    if "prompt" not in by_name:
        raise BadRequest("no input named 'prompt' (datatype BYTES, one element per prompt)")
    if by_name["prompt"].datatype != "BYTES":
        raise BadRequest(f"input 'prompt' must have datatype BYTES, got {by_name['prompt'].datatype}")
    prompts = _v2_values(by_name["prompt"])
    if not prompts:
        raise BadRequest("input 'prompt' holds no prompt")
    if len(prompts) > config.max_images_per_request:
        raise BadRequest(f"{len(prompts)} prompts; at most {config.max_images_per_request} images per request "
                         "(max_images_per_request)")
    principles: list[Any] = [parameters.get("principle", AUTO)] * len(prompts)
    if "principle" in by_name:
        if "principle" in parameters:
            raise BadRequest("give principle as an input or as a parameter, not both")
        values = _v2_values(by_name["principle"])
        if len(values) not in (1, len(prompts)):
            raise BadRequest(f"input 'principle' has {len(values)} elements for {len(prompts)} prompts")
        principles = values * len(prompts) if len(values) == 1 else values
    seeds: list[Any] = [parameters.get("seed")] * len(prompts)
    if "seed" in by_name:
        if "seed" in parameters:
            raise BadRequest("give seed as an input or as a parameter, not both")
        if by_name["seed"].datatype not in INTEGER_TYPES:
            raise BadRequest(f"input 'seed' must have an integer datatype, got {by_name['seed'].datatype}")
        seeds = _v2_values(by_name["seed"])
        if len(seeds) != len(prompts):
            raise BadRequest(f"input 'seed' has {len(seeds)} elements for {len(prompts)} prompts")
    requests = []
    for index, prompt in enumerate(prompts):
        where = f"prompt[{index}]"
        requests.append(GenerationRequest(
            prompt=parse_prompt(prompt, config, where),
            principle=parse_principle(principles[index], info, where),
            seeds=parse_seeds(seeds[index], None, parameters.get("num_images"), config, where),
            compare=parse_bool(parameters.get("compare", False), "compare", where),
        ))
    _check_total(requests, config)
    return requests


def png_base64(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def v1_response(requests: Sequence[GenerationRequest], results: Sequence[GenerationResult],
                info: ModelInfo) -> dict[str, Any]:
    """The v1 answer; `results` hold images already encoded by `png_base64`."""
    predictions = []
    for request, result in zip(requests, results, strict=True):
        prediction: dict[str, Any] = {
            "prompt": request.prompt,
            "principle": result.principle.to_json() if result.principle else None,
            "evidence": result.evidence,
            "seeds": list(request.seeds),
            "images": list(result.images),
            "value_token": list(result.value_token),
        }
        if request.compare:
            prediction["base_images"] = list(result.base_images or [])
        predictions.append(prediction)
    return {"predictions": predictions, "model": model_block(info)}


def model_block(info: ModelInfo) -> dict[str, Any]:
    return {"name": info.name, "version": info.version, "lineage_sha256": info.lineage_sha256,
            "report_uri": info.report_uri, "base_model": info.base_model}
