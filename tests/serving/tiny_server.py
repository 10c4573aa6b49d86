"""Starts the real `livo serve` server (livo.serving.server.serve) in this process, for the tests in this folder.

    python tests/serving/tiny_server.py --port P [--set KEY=VALUE ...]           # a tiny registered-style pipeline
    python tests/serving/tiny_server.py --port P --slow SECONDS [--set ...]      # a generator that sleeps per batch

The tiny pipeline is a `RegisteredPipeline` built offline: the `tiny` preset's random-weight base model, a value
encoder derived from its text encoder (perturbed, as a trained one would be), the shipped default principles, a
keyword-only retriever, and a `VersionInfo` as the registry would give (report: a local HTML file).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPORT_HTML = "<html><body><h1>LiVO evaluation report</h1></body></html>"


def tiny_generator(report: Path, steps: int = 2):
    import torch

    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline
    from livo.principles import load_principles
    from livo.retriever import ValueRetriever
    from livo.serving.generator import RegisteredGenerator
    from livo.serving.loading import RegisteredPipeline, VersionInfo

    torch.set_num_threads(1)
    base = build_tiny_pipeline(seed=0)
    encoder = ValueEncoder.from_text_encoder(base.text_encoder)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=noise))
    principles = load_principles()
    info = VersionInfo(model="livo-tiny", version="v3", uri="s3://livo-test/models/livo-tiny/v3/",
                       lineage_sha256="sha256:" + "ab" * 32, report_uri=str(report), weights_sha256="sha256:" + "cd" * 32,
                       base_model_id="tiny", base_model_fingerprint="sha256:" + "ef" * 32,
                       principle_set_hash=principles.hash, principle_ids=tuple(principles.ids), verified="skipped")
    pipe = RegisteredPipeline(base, encoder, principles=principles, retriever=ValueRetriever(principles, semantic=False),
                              info=info)
    return RegisteredGenerator(pipe, num_inference_steps=steps, guidance_scale=7.5, resolution=32)


class SlowGenerator:
    """Sleeps `delay` seconds per batch and returns 8x8 images coloured by seed; a batch with the prompt "fail"
    raises."""

    def __init__(self, delay: float):
        from livo.serving.generator import ModelInfo, PrincipleInfo

        self.delay = delay
        self._info = ModelInfo(name="slow", version="v1", lineage_sha256="sha256:" + "00" * 32,
                               principles=(PrincipleInfo("bloody", "no blood", "toxicity"),))

    def info(self):
        return self._info

    def generate(self, requests):
        from PIL import Image

        from livo.serving.generator import GenerationResult

        time.sleep(self.delay)
        if any(r.prompt == "fail" for r in requests):
            raise RuntimeError("the generator broke\non two lines")
        return [GenerationResult(images=[Image.new("RGB", (8, 8), (s % 256, 0, 0)) for s in r.seeds],
                                 principle=None, evidence={"stage": "none"}, value_token=[False] * len(r.seeds),
                                 base_images=None)
                for r in requests]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow", type=float, default=None)
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    from livo.config import load_config
    from livo.serving.config import ServeConfig
    from livo.serving.server import serve

    config = load_config(ServeConfig, None, [f"port={args.port}", *args.overrides])
    if args.slow is not None:
        generator = SlowGenerator(args.slow)
    else:
        report = args.report or Path(tempfile.mkdtemp(prefix="livo-tiny-server-")) / "report.html"
        report.write_text(REPORT_HTML)
        generator = tiny_generator(report, config.num_inference_steps or 2)
    serve(generator, config)


if __name__ == "__main__":
    main()
