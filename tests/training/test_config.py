"""TrainingConfig: released-run defaults, YAML + overrides, bad input, DeepSpeed JSON merging."""

from __future__ import annotations

import json

import pytest

from livo.errors import ConfigError
from livo.training.config import TrainingConfig, load_training_config
from livo.training.distributed import DistEnv


def test_defaults_are_the_released_run():
    config = TrainingConfig()
    assert (config.loss.kind, config.loss.beta, config.loss.alpha, config.loss.gamma1, config.loss.gamma2) == (
        "livo", 1000.0, 500.0, 1.0, 0.5)
    opt = config.optimizer
    assert (opt.lr, opt.betas, opt.weight_decay, opt.eps, opt.max_grad_norm, opt.warmup_steps) == (
        1e-6, (0.9, 0.999), 1e-2, 1e-8, 1.0, 0)
    assert config.per_device_batch_size == 8
    assert config.max_steps == 15000
    assert config.checkpoint.every_steps == 1000
    assert config.zero_stage == 2


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("max_steps: 50\nloss:\n  kind: dpo\noptimizer:\n  lr: 2.0e-5\n")
    config = load_training_config(path, ["optimizer.lr=3e-5", "checkpoint.every_steps=7"])
    assert config.max_steps == 50
    assert config.loss.kind == "dpo"
    assert config.optimizer.lr == 3e-5
    assert config.checkpoint.every_steps == 7


def test_shipped_default_yaml_matches_the_model_defaults():
    from livo.paths import config_dir

    assert load_training_config(config_dir() / "training" / "default.yaml") == TrainingConfig()


@pytest.mark.parametrize("override, fragment", [
    (["optimiser.lr=1e-4"], "optimiser: unknown key"),
    (["optimizer.learning_rate=1e-4"], "optimizer.learning_rate: unknown key"),
    (["optimizer.lr=-1e-4"], "optimizer.lr"),
    (["per_device_batch_size=0"], "per_device_batch_size"),
    (["loss.kind=kto"], "loss.kind"),
    (["optimizer.betas=[0.9, 1.5]"], "betas"),
])
def test_bad_values_are_config_errors(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_training_config(None, override)
    assert fragment in str(info.value)


def test_global_batch_layout():
    config = TrainingConfig(global_batch_size=16, gradient_accumulation_steps=2)
    assert config.batch_layout(4) == (2, 2, 16)
    assert config.batch_layout(1) == (8, 2, 16)
    with pytest.raises(ConfigError, match="not divisible by world size 3"):
        config.batch_layout(3)
    assert TrainingConfig(per_device_batch_size=4).batch_layout(8) == (4, 1, 32)


def test_global_and_per_device_must_agree():
    config = TrainingConfig(global_batch_size=16, per_device_batch_size=4)
    assert config.batch_layout(4) == (4, 1, 16)
    with pytest.raises(ConfigError, match="set only one"):
        config.batch_layout(2)
    with pytest.raises(ConfigError, match="not a multiple"):
        load_training_config(None, ["global_batch_size=10", "per_device_batch_size=4"])


def test_fingerprint_tracks_what_changes_the_step():
    base = TrainingConfig()
    assert base.fingerprint() == TrainingConfig(max_steps=3, log_every=1, resume=True).fingerprint()
    assert base.fingerprint() != TrainingConfig(seed=1).fingerprint()
    assert base.fingerprint() != TrainingConfig(loss={"kind": "dpo"}).fingerprint()


def test_knobs_added_later_keep_existing_fingerprints():
    """Checkpoints written before a knob existed still resume: the knob enters the fingerprint only when it is on."""
    default = "sha256:4ead9e1207b9818eeb1d17f19e051d9ba9b81bfa791c2cbbf7af4bd677476da1"  # before paired_violating_hinge
    assert TrainingConfig().fingerprint() == default
    assert TrainingConfig(loss={"paired_violating_hinge": True}).fingerprint() != default
    assert TrainingConfig(random_flip=True).fingerprint() != default


def test_plan_fills_deepspeed_config(tmp_path):
    from livo.training.trainer import plan_run

    config = TrainingConfig(dataset="unused", output=str(tmp_path), global_batch_size=8, device="cpu")
    plan = plan_run(config, DistEnv(rank=0, world_size=2, local_rank=0, local_world_size=2))
    ds = plan.ds_config
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 1, 8)
    assert ds["gradient_clipping"] == 1.0
    assert ds["zero_optimization"]["stage"] == 2 and plan.zero_stage == 2
    assert "torch_autocast" not in ds  # fp32 on CPU
    assert plan.precision == "fp32"


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_shipped_deepspeed_configs(stage, tmp_path):
    from livo.training.trainer import plan_run

    plan = plan_run(TrainingConfig(dataset="x", output=str(tmp_path), zero_stage=stage, device="cpu"),
                    DistEnv(0, 1, 0, 1))
    assert plan.zero_stage == stage


def test_bf16_autocast_keeps_fp32_master_weights(tmp_path):
    from livo.training.trainer import plan_run

    plan = plan_run(TrainingConfig(dataset="x", output=str(tmp_path), precision="bf16", device="cpu"),
                    DistEnv(0, 1, 0, 1))
    assert plan.ds_config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16",
                                                "lower_precision_safe_modules": []}
    assert "bf16" not in plan.ds_config and "fp16" not in plan.ds_config


def test_fp16_on_cpu_is_refused(tmp_path):
    from livo.training.trainer import plan_run

    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        plan_run(TrainingConfig(dataset="x", output=str(tmp_path), precision="fp16", device="cpu"),
                 DistEnv(0, 1, 0, 1))


@pytest.mark.parametrize("content, fragment", [
    ({"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2}}, "conflicts with the training config"),
    ({"optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 2}}, "remove the 'optimizer' section"),
    ({"bf16": {"enabled": True}}, "remove the 'bf16' section"),
])
def test_user_deepspeed_json_cannot_fight_the_config(tmp_path, content, fragment):
    from livo.training.trainer import plan_run

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=fragment):
        plan_run(TrainingConfig(dataset="x", output=str(tmp_path), deepspeed_config=str(path), device="cpu"),
                 DistEnv(0, 1, 0, 1))
