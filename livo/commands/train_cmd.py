"""`livo train`: train a value encoder (DeepSpeed) on a preference dataset; see docs/training.md."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from livo.training.launch import add_training_arguments

    parser = subparsers.add_parser(
        "train", help="train a value encoder on a preference dataset (DeepSpeed)",
        description="Train the value encoder with the LiVO loss (or Diffusion-DPO). Defaults are the authors' released "
                    "run; override any key with KEY=VALUE. Exit codes: 0 done, 2 bad input, 1 failure, 143 stopped "
                    "by SIGTERM after a checkpoint (rerun with --resume).")
    add_training_arguments(parser)
    parser.add_argument("--nproc", type=int, default=1,
                        help="ranks on this machine (one per GPU); >1 starts them with torchrun. Default 1")
    parser.set_defaults(func=handle_train)


def _forwarded_arguments(args: argparse.Namespace) -> list[str]:
    forwarded: list[str] = []
    for flag, attr in (("--config", "config"), ("--preset", "preset"), ("--dataset", "dataset"),
                       ("--output", "output"), ("--model", "model"), ("--max-steps", "max_steps"),
                       ("--loss", "loss"), ("--expected-principle-set-hash", "expected_principle_set_hash")):
        value = getattr(args, attr)
        if value is not None:
            forwarded += [flag, str(value)]
    if args.resume:
        forwarded.append("--resume")
    return forwarded + list(args.overrides or [])


def handle_train(args: argparse.Namespace) -> int:
    from livo.errors import ConfigError
    from livo.training.launch import config_from_args, training_stage_run

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    config = config_from_args(args)  # bad input fails here, before any rank starts
    config.batch_layout(args.nproc)
    if args.nproc > 1:
        from livo.training.jobs import run_local_ranks

        return run_local_ranks(args.nproc, _forwarded_arguments(args))
    from livo.training import distributed
    from livo.training.trainer import train

    distributed.ensure_launcher_env()
    try:
        with training_stage_run(config, rank=0):
            result = train(config)
    finally:
        distributed.destroy()
    if result.exit_code == 0:
        print(f"value encoder: {result.output_uri.rstrip('/')}/value_encoder  (loss {result.metrics.get('loss')})")
    return result.exit_code
