"""`livo serve MODEL`: load a registered version and serve it (KServe v1/v2 protocols, a page to try it, metrics)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a registered version: KServe predictor, page, metrics",
        description="Loads MODEL (verifying its lineage, base-model fingerprint and value-encoder digest; a version "
                    "that fails is never served: exit 2 for an unknown version or another base model, 1 for a failed "
                    "verification) and serves it until SIGINT/SIGTERM: KServe's v1 /v1/models/<name>:predict and v2 "
                    "/v2/models/<name>/infer, health routes, /metrics, and a page to try it at /. Settings: --config "
                    "YAML and --set KEY=VALUE (docs/serving.md, \"Server\").",
    )
    parser.add_argument("model", metavar="MODEL",
                        help="NAME@vN, NAME@latest, NAME, or s3://<bucket>/models/<name>/<version>/ (store from "
                             "LIVO_S3_*, else the embedded store of local `livo run`s in <runs dir>/store)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 in a pod)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8080)")
    parser.add_argument("--config", metavar="YAML", help="server settings file (fields in docs/serving.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set queue_size=32 (repeatable)")
    parser.add_argument("--device", help="torch device for the model (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="weights' dtype (default: float16 on cuda, else float32)")
    parser.add_argument("--verify", choices=["full", "contents", "off"], default="full",
                        help="lineage verification before serving: full (default), contents (ignore changes of the "
                             "principles file and dataset the version was trained from), off")
    parser.set_defaults(func=run)


def serve_config(args: argparse.Namespace):
    """The server's settings: defaults, then --config YAML, then --set KEY=VALUE, then --host / --port."""
    from pydantic import ValidationError

    from livo.config import format_validation_error, load_config
    from livo.errors import ConfigError
    from livo.serving.config import ServeConfig

    config = load_config(ServeConfig, args.config, args.overrides)
    try:  # the flags win over the file and --set; assignment validates them
        if args.host is not None:
            config.host = args.host
        if args.port is not None:
            config.port = args.port
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "command line")) from None
    if not config.host.strip():
        raise ConfigError("--host is empty: give an address such as 127.0.0.1 or 0.0.0.0")
    return config


def check_port_free(host: str, port: int) -> None:
    """Fail before loading a model (minutes) when the port is taken."""
    import socket

    from livo.errors import LivoError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise LivoError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host, "
                        "or stop what uses it") from None


def generation_settings(base_model_id: str, config) -> dict:
    """Sampler settings: the config's, else those of the preset the base model is (tiny, toy, sd15), else SD's."""
    from livo.errors import ConfigError
    from livo.presets import load_preset_config

    steps, guidance, resolution, batch = 25, 7.5, None, 8
    try:
        preset = load_preset_config(base_model_id)
    except ConfigError:
        preset = None
    if preset is not None and preset.model.source == base_model_id:
        generation = preset.generation
        steps, guidance, resolution, batch = (generation.num_inference_steps, generation.guidance_scale,
                                              generation.resolution, generation.batch_size)
    return dict(num_inference_steps=config.num_inference_steps or steps,
                guidance_scale=guidance if config.guidance_scale is None else config.guidance_scale,
                resolution=resolution, batch_size=batch, inference_dropout=config.inference_dropout)


def load_generator(ref: str, config, *, device: str | None = None, dtype: str | None = None,
                   verify: str = "full"):
    """The registered version as the server's `Generator` (livo.serving.loading does the loading and checks)."""
    import torch

    from livo.serving.generator import RegisteredGenerator
    from livo.serving.loading import load_registered

    if device is None and torch.cuda.is_available():
        device, dtype = "cuda", dtype or "float16"
    pipe = load_registered(ref, device=device, dtype=dtype, verify={"full": True, "off": False}.get(verify, verify),
                           semantic=config.semantic_retrieval,
                           min_confidence=config.retrieval.min_confidence)
    return RegisteredGenerator(pipe, **generation_settings(pipe.info.base_model_id, config))


@contextlib.contextmanager
def demo_store_if_unconfigured() -> Iterator[None]:
    """The configured store (`LIVO_S3_*`), else the embedded store `livo run` keeps in <runs dir>/store (so after
    `make demo`, `livo serve livo-toy@latest` is the one command), for as long as the server runs."""
    import os

    from livo.commands.run_cmd import object_store_env, patched_environ
    from livo.log import get_logger, log_event
    from livo.paths import runs_dir
    from livo.store import ENV_ENDPOINT

    store_dir = runs_dir() / "store"
    if os.environ.get(ENV_ENDPOINT) or not store_dir.is_dir():
        yield  # loading reports the missing store with its own hint
        return
    log_event(get_logger("livo.serve"), "no LIVO_S3_* set: serving from the local runs' embedded store",
              store=str(store_dir))
    with object_store_env(store_dir) as env, patched_environ(env):
        yield


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from livo.errors import ConfigError

    if importlib.util.find_spec("kserve") is None:
        raise ConfigError("`livo serve` needs the KServe SDK: pip install 'livo[serve]' (kserve==0.21.0)")
    config = serve_config(args)
    check_port_free(config.host, config.port)
    with demo_store_if_unconfigured():
        generator = load_generator(args.model, config, device=args.device, dtype=args.dtype, verify=args.verify)
        from livo.serving.server import serve

        serve(generator, config)
    return 0
