"""Entry point of one training rank: `python -m livo.training.launch [--config FILE] [key=value ...]`.

Works unchanged as a plain single process, under `torchrun --nproc_per_node N -m livo.training.launch ...`, and
under the `deepspeed` launcher (which passes `--local_rank`). In a Kubeflow Trainer TrainJob every node must start it
through torchrun (`torchrun -m livo.training.launch ...`, which reads the Trainer's `PET_*` variables); a node whose
`PET_NNODES`/`PET_NPROC_PER_NODE` ask for several processes but that was started without torchrun exits 2 instead of
training alone. Exit codes: 0 done, 2 bad input, 1 other failure,
143 (`PREEMPTED_EXIT_CODE`) stopped by SIGTERM after saving a checkpoint — rerun with `--resume` to continue.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from livo.errors import LivoError

# Shortcut flags -> config keys (anything else goes as key=value overrides).
_SHORTCUTS = {
    "dataset": "dataset",
    "output": "output",
    "model": "model",
    "max_steps": "max_steps",
    "loss": "loss.kind",
    "expected_principle_set_hash": "expected_principle_set_hash",
}


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments `livo train` and this launcher share."""
    parser.add_argument("--config", help="training config YAML (defaults: the authors' released run)")
    parser.add_argument("--preset", help="preset name or YAML; its model and `train:` section are the base config")
    parser.add_argument("--dataset", help="preference dataset: directory or s3://bucket/prefix")
    parser.add_argument("--output", help="run output: directory or s3://bucket/prefix")
    parser.add_argument("--model", help="base model: tiny | toy | toy-six | toy-sdxl | sd15 | sd21 | sdxl | sd15-random | sdxl-random | folder | s3:// URI | hub id")
    parser.add_argument("--max-steps", dest="max_steps", type=int, help="optimizer steps")
    parser.add_argument("--loss", choices=["livo", "dpo"], help="livo (default) or the Diffusion-DPO baseline")
    parser.add_argument("--expected-principle-set-hash", dest="expected_principle_set_hash",
                        help="refuse a dataset built for another principle set")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optimizer.lr=1e-5 zero_stage=3 checkpoint.every_steps=500")


def config_from_args(args: argparse.Namespace):
    """A validated `TrainingConfig` from the parsed arguments (no model, no dataset touched)."""
    from livo.training.config import load_training_config

    base: dict[str, Any] = {}
    if args.preset:
        from livo.presets import load_preset_config

        preset = load_preset_config(args.preset)
        base = {"model": preset.model.source, "tracking": preset.tracking, **preset.train}
    overrides = list(args.overrides or [])
    for attr, key in _SHORTCUTS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.resume:
        overrides.append("resume=true")
    return load_training_config(args.config, overrides, base=base)


def training_stage_run(config: Any, rank: int | None = None):
    """The experiment-tracking run of this training (`livo.tracking.stage_run("train", ...)`), opened by rank 0
    only (`RANK`, default 0); other ranks get a null tracker. The KFP run id comes from `LIVO_KFP_RUN_ID` when a
    pipeline task (or its TrainJob) sets it; without `MLFLOW_TRACKING_URI` the store is a SQLite file in a local
    output directory (else in the runs directory)."""
    import contextlib
    import os

    from livo import tracking

    if rank is None:
        rank = int(os.environ.get("RANK", "0") or 0)
    if rank != 0:
        return contextlib.nullcontext(tracking.NULL_TRACKER)
    output = str(config.output)
    # lazy: the run (and a local store in the output) appears with the trainer's first call, after its input checks
    return tracking.stage_run("train", backend=config.tracking, local_dir=None if "://" in output else output,
                              tags={"livo.output": output}, lazy=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m livo.training.launch",
                                     description="One rank of LiVO value-encoder training (DeepSpeed).")
    add_training_arguments(parser)
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                        help="set by the deepspeed launcher")
    parser.add_argument("--log-json", action="store_true", help="structured JSON logs on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from livo.log import configure_logging

    configure_logging(json_format=True if args.log_json else None)
    try:
        from livo.training import distributed as dist

        config = config_from_args(args)
        dist.ensure_launcher_env(args.local_rank)
        from livo.training.trainer import train

        try:
            with training_stage_run(config):
                return train(config).exit_code
        finally:
            dist.destroy()
    except LivoError as exc:
        print(f"livo: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
