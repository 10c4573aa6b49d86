"""Benchmark: images/s of `livo generate` vs a bare diffusers pipeline call on the same model, batch and steps.

    .venv/bin/python benchmarks/generate.py                          # tiny preset, CPU
    .venv/bin/python benchmarks/generate.py --preset toy             # the toy model (needs its committed weights)
    python benchmarks/generate.py --preset sd15-random               # GPU: SD v1.5 architecture, random weights,
                                                                     # 512², 25 steps, fp16, SDPA, CUDA

Both sides use the same loaded pipeline, batch size, steps, resolution and guidance, and the same number of images.
"ours" is the whole generator: planning, two generation phases batched across scenes, judging every image
(toy judges, `judging.accept_all` so both sides make the same number of images), PNG encoding, parquet shards,
commit objects and the manifest — i.e. `run_generation` minus model loading and the weight fingerprint (both once
per task; reported apart). "bare" is `pipe(prompt=[...] * batch,
generator=..., ...)` in a loop. Each side runs `--repeat` times alternately after a warm-up; the best wall time counts
(shared machines are noisy). Prints one JSON object; docs/data.md records the results with this command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from benchlib import context, finished  # noqa: E402

# Toy-world vocabulary, so the toy judges (pixel-based, cheap, work on any image) can score every image.
PRINCIPLES_YAML = """\
version: 1
principles:
  - id: colour-equality
    text: gender equality
    category: bias
    retrieval: {person: true}
    evaluation: {attribute: colour, classes: [orange, blue]}
    generation:
      templates: ["a photo of a {subject}"]
      subjects: {career: [doctor, nurse, engineer, teacher, chef, pilot, doctor at work, nurse at work]}
      attribute_words: {orange: orange, blue: blue}
"""

PRESETS = {
    # name: (model source, resolution, steps, dtype, device, batch)
    "tiny": ("tiny", 32, 4, None, "cpu", 8),
    "toy": ("toy", None, None, None, "cpu", 8),
    "sd15-random": ("sd15-random", 512, 25, "float16", "cuda", 8),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--scenes", type=int, default=8, help="scenes (prompts); images = 2 × scenes × candidates")
    parser.add_argument("--candidates", type=int, default=4, help="candidates per scene")
    parser.add_argument("--batch", type=int, help="images per pipeline call (default: preset's)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: preset's)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--out", help="also write the JSON result here")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    invocation = context("generate.py")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from livo.data.generate import (
        build_generate_config,
        load_generation_pipeline,
        prepare_generation,
        resolve_settings,
        run_generation,
    )

    source, resolution, steps, dtype, device, batch = PRESETS[args.preset]
    if device == "cuda" and not torch.cuda.is_available():
        print(f"--preset {args.preset} needs a CUDA GPU", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="livo-bench-generate-"))
    principles = work / "principles.yaml"
    principles.write_text(PRINCIPLES_YAML)
    scenes = min(args.scenes, 8)  # the principles above have 8 subjects
    images = 2 * scenes * args.candidates
    overrides = [
        f"model={source}", f"principles_file={principles}", "judging.attribute=toy-attribute",
        "judging.accept_all=true", f"candidates_per_scene={args.candidates}",
        f"max_prompts_per_principle={scenes}", f"device={device}", "num_shards=1",
    ]
    for key, value in (("resolution", resolution), ("num_inference_steps", args.steps or steps),
                       ("dtype", dtype), ("batch_size", args.batch or batch)):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = build_generate_config(overrides=overrides, preset="toy" if source == "toy" else "tiny")
    settings = resolve_settings(config)
    started = time.perf_counter()
    pipe = load_generation_pipeline(settings, device)
    load_seconds = time.perf_counter() - started
    from livo.presets import pipeline_fingerprint

    started = time.perf_counter()
    model_hash = pipeline_fingerprint(pipe)  # once per task in production; timed apart, not in either side
    fingerprint_seconds = time.perf_counter() - started

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def bare() -> tuple[float, float]:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, images, settings["batch_size"]):
            n = min(settings["batch_size"], images - start)
            pipe(prompt=["a photo of a doctor"] * n, negative_prompt=[""] * n,
                 generator=[torch.Generator("cpu").manual_seed(start + i) for i in range(n)],
                 num_inference_steps=settings["num_inference_steps"], guidance_scale=settings["guidance_scale"],
                 height=settings["resolution"], width=settings["resolution"], output_type="pil")
        sync()
        return time.perf_counter() - t0, time.process_time() - c0

    phases: list[dict[str, float]] = []

    def ours(run: int) -> tuple[float, float, float, int]:
        plan = prepare_generation(config, out=work / f"ours-{run}")
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        summary = run_generation(plan, pipe=pipe, model_hash=model_hash, progress=False)
        sync()
        assert summary.images_generated == images, (summary.images_generated, images)
        phases.append({"judge": summary.judge_seconds, "write": summary.write_seconds,
                       "judge_wait": summary.judge_wait_seconds, "precompute": summary.precompute_seconds,
                       "encode_wait": summary.encode_wait_seconds})
        return time.perf_counter() - t0, time.process_time() - c0, summary.generation_seconds, summary.rows

    # Warm-up: first calls pay for lazy initialisation (kernels, allocator, imports of the writer).
    pipe(prompt=["warm up"] * settings["batch_size"], num_inference_steps=2, height=settings["resolution"],
         width=settings["resolution"], output_type="pil")
    ours(-1)
    bare_times, bare_cpu, ours_times, ours_cpu, ours_pipeline_times = [], [], [], [], []
    rows = 0
    for run in range(args.repeat):
        wall, cpu = bare()
        bare_times.append(wall)
        bare_cpu.append(cpu)
        wall, cpu, in_pipeline, rows = ours(run)
        ours_times.append(wall)
        ours_cpu.append(cpu)
        ours_pipeline_times.append(in_pipeline)
    best_bare, best_ours = min(bare_times), min(ours_times)
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(pipe.unet.dtype).replace("torch.", ""),
        "attention": type(next(iter(pipe.unet.attn_processors.values()))).__name__,
        "resolution": settings["resolution"],
        "steps": settings["num_inference_steps"],
        "batch": settings["batch_size"],
        "images": images,
        "rows": rows,
        "model_load_seconds": round(load_seconds, 2),
        "fingerprint_seconds": round(fingerprint_seconds, 2),
        "bare_seconds": [round(t, 3) for t in bare_times],
        "ours_seconds": [round(t, 3) for t in ours_times],
        "ours_in_pipeline_seconds": [round(t, 3) for t in ours_pipeline_times],
        # judge calls run on a helper thread, overlapped with generation; writing the shard is not overlapped
        "ours_judge_seconds": [round(p["judge"], 3) for p in phases[1:]],
        "ours_write_seconds": [round(p["write"], 3) for p in phases[1:]],
        # the rest of ours minus bare: blocked on the judges at each phase's end, storing VAE posteriors and prompt
        # embeddings (bare stores nothing), blocked on the PNG encoder
        "ours_judge_wait_seconds": [round(p["judge_wait"], 3) for p in phases[1:]],
        "ours_precompute_seconds": [round(p["precompute"], 3) for p in phases[1:]],
        "ours_encode_wait_seconds": [round(p["encode_wait"], 3) for p in phases[1:]],
        "bare_images_per_second": round(images / best_bare, 3),
        "ours_images_per_second": round(images / best_ours, 3),
        "overhead_percent": round(100.0 * (best_ours - best_bare) / best_bare, 1),
        # CPU runs: process CPU time is far less sensitive than wall time to other processes on a shared machine.
        "bare_cpu_seconds": [round(t, 3) for t in bare_cpu],
        "ours_cpu_seconds": [round(t, 3) for t in ours_cpu],
        "overhead_percent_cpu_time": round(100.0 * (min(ours_cpu) - min(bare_cpu)) / min(bare_cpu), 1),
        "overhead_percent_cpu_time_median": round(
            100.0 * (statistics.median(ours_cpu) - statistics.median(bare_cpu)) / statistics.median(bare_cpu), 1),
        "seconds_per_image_ours": round(best_ours / images, 4),
    }
    shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(finished({**invocation, **result}))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
