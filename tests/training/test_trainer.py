"""The trainer in one process (world of one, gloo): what changes, what is exported, what is logged, what resumes."""

from __future__ import annotations

import json

import pytest
import torch
from training_helpers import held_out_loss, load_exported, run_in_process, tiny_config

from livo.errors import ConfigError

LOSS_PARTS = ("loss", "theta_w", "ref_w", "theta_l", "ref_l", "hinge_w", "hinge_l")


@pytest.mark.slow
def test_only_the_value_encoder_changes_and_the_export_equals_live_weights(tmp_path, latent_dataset, single_rank_env):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline

    output = tmp_path / "run"
    trainer = run_in_process(tiny_config(latent_dataset, output, max_steps=6))
    assert trainer.result.exit_code == 0 and trainer.result.final_step == 6

    # Frozen modules: bit-identical to a fresh build of the same base model.
    fresh = build_tiny_pipeline(0)
    for name in ("unet", "vae", "text_encoder"):
        trained_state = getattr(trainer.models, name).state_dict()
        for key, tensor in getattr(fresh, name).state_dict().items():
            assert torch.equal(trained_state[key], tensor), f"{name}.{key} changed"

    # The value encoder moved away from its initialisation (a copy of the base text encoder).
    exported = load_exported(output)
    initial = fresh.text_encoder.state_dict()
    changed = [k for k, v in exported.items() if not torch.equal(v, initial[k])]
    assert len(changed) > len(exported) // 2

    # Export == live engine weights == ZeRO-2 consolidation of the final checkpoint.
    live = {k.removeprefix("text_model."): v for k, v in trainer.engine.module.state_dict().items()}
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(output / "checkpoints"), tag="step-00000006")
    consolidated = {k.removeprefix("text_model."): v for k, v in consolidated.items()}
    assert set(exported) == set(live) == set(consolidated)
    for key in exported:
        assert torch.equal(exported[key], live[key]), key
        assert torch.equal(exported[key], consolidated[key]), key
    assert ValueEncoder.from_pretrained(output / "value_encoder").hidden_size == 32

    # Logs and records: every loss part, lr, grad norm, throughput; result.json lists the exported files.
    lines = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    for line in lines:
        assert set(LOSS_PARTS + ("lr", "grad_norm", "samples_per_s")) <= set(line)
        assert line["lr"] == pytest.approx(1e-3)
        assert line["loss"] == pytest.approx(line["hinge_w"] + line["hinge_l"], rel=1e-5)
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(LOSS_PARTS) <= set(metrics) and metrics["final_step"] == 6 and metrics["samples_per_s"] > 0
    result = json.loads((output / "result.json").read_text())
    assert set(result["value_encoder"]["files"]) == {"config.json", "model.safetensors"}
    assert result["live_weights_sha256_by_rank"][0].startswith("sha256:")
    assert sorted(p.name for p in (output / "checkpoints").glob("step-*")) == ["step-00000003", "step-00000006"]


def test_k_value_tokens_train_export_and_refuse_a_mismatched_start(tmp_path, latent_dataset, single_rank_env):
    """`value_tokens=2` (issue 15): the DeepSpeed path trains k tokens, the export says so, a run started from it
    must ask for as many, and an SDXL-family base refuses it at the door."""
    from livo.errors import ConfigError
    from livo.modeling import ValueEncoder
    from livo.training.trainer import check_training_model

    output = tmp_path / "run"
    trainer = run_in_process(tiny_config(latent_dataset, output, max_steps=1, checkpoint={"every_steps": 1},
                                         value_tokens=2))
    assert trainer.result.exit_code == 0 and 0 < trainer.result.metrics["loss"] < 10
    assert ValueEncoder.from_pretrained(output / "value_encoder").value_tokens == 2
    assert trainer.config.fingerprint() != tiny_config(latent_dataset, output, max_steps=1).fingerprint()
    with pytest.raises(ConfigError, match="outputs 2 value token"):
        run_in_process(tiny_config(latent_dataset, tmp_path / "again", max_steps=1,
                                   init_value_encoder=str(output / "value_encoder")))
    with pytest.raises(ConfigError, match="value_tokens is not supported on SDXL"):
        check_training_model(tiny_config(latent_dataset, tmp_path / "x", model="toy-sdxl", value_tokens=2))


def test_value_time_shift_trains_the_head_exports_it_and_refuses_what_cannot_take_it(tmp_path, latent_dataset,
                                                                                     single_rank_env):
    """`value_time_shift=true` (issue 15): the DeepSpeed path moves the zero-initialised time-embedding head, the
    export carries it, the knob enters the fingerprint only when on, and SDXL, compile and a mismatched start are
    refused."""
    from livo.modeling import ValueEncoder
    from livo.training.trainer import check_training_model

    output = tmp_path / "run"
    trainer = run_in_process(tiny_config(latent_dataset, output, max_steps=2, checkpoint={"every_steps": 2},
                                         value_time_shift=True))
    assert trainer.result.exit_code == 0 and 0 < trainer.result.metrics["loss"] < 10
    exported = ValueEncoder.from_pretrained(output / "value_encoder")
    assert exported.time_shift_dim == 128 and exported.time_shift.weight.abs().sum() > 0
    live = trainer.engine.module.time_shift
    assert torch.equal(exported.time_shift.weight, live.weight.detach().float().cpu())
    plain = tiny_config(latent_dataset, output, max_steps=2, checkpoint={"every_steps": 2})
    assert trainer.config.fingerprint() != plain.fingerprint()
    assert plain.fingerprint() == tiny_config(latent_dataset, output, max_steps=2, checkpoint={"every_steps": 2},
                                              value_time_shift=False).fingerprint()
    with pytest.raises(ConfigError, match="has a time-embedding head but value_time_shift=false"):
        run_in_process(tiny_config(latent_dataset, tmp_path / "again", max_steps=1,
                                   init_value_encoder=str(output / "value_encoder")))
    with pytest.raises(ConfigError, match="value_time_shift is not supported on SDXL"):
        check_training_model(tiny_config(latent_dataset, tmp_path / "x", model="toy-sdxl", value_time_shift=True))
    from livo.training.config import load_training_config

    with pytest.raises(ConfigError, match="cannot be combined with compile"):
        load_training_config(overrides=["value_time_shift=true", "compile=true"],
                             base={"model": "tiny", "dataset": latent_dataset, "output": str(tmp_path / "y")})


def test_an_additive_value_token_trains_exports_and_refuses_what_cannot_take_it(tmp_path, latent_dataset,
                                                                                  single_rank_env):
    """`value_token_attention=additive` (issue 15): the DeepSpeed path trains it, the export says so in its marker,
    the knob enters the fingerprint only when it is not the paper's, and SDXL, compile and a start encoder of the
    other kind are refused."""
    from livo.modeling import ValueEncoder
    from livo.training.config import load_training_config
    from livo.training.trainer import check_training_model

    output = tmp_path / "run"
    trainer = run_in_process(tiny_config(latent_dataset, output, max_steps=2, checkpoint={"every_steps": 2},
                                         value_token_attention="additive"))
    assert trainer.result.exit_code == 0 and 0 < trainer.result.metrics["loss"] < 10
    assert ValueEncoder.from_pretrained(output / "value_encoder").token_attention == "additive"
    plain = tiny_config(latent_dataset, output, max_steps=2, checkpoint={"every_steps": 2})
    assert trainer.config.fingerprint() != plain.fingerprint()
    assert plain.fingerprint() == tiny_config(latent_dataset, output, max_steps=2, checkpoint={"every_steps": 2},
                                              value_token_attention="prepend").fingerprint()
    with pytest.raises(ConfigError, match="trained with token_attention=additive but value_token_attention=prepend"):
        run_in_process(tiny_config(latent_dataset, tmp_path / "again", max_steps=1,
                                   init_value_encoder=str(output / "value_encoder")))
    with pytest.raises(ConfigError, match="value_token_attention is not supported on SDXL"):
        check_training_model(tiny_config(latent_dataset, tmp_path / "x", model="toy-sdxl",
                                         value_token_attention="additive"))
    with pytest.raises(ConfigError, match="cannot be combined with compile"):
        load_training_config(overrides=["value_token_attention=additive", "compile=true"],
                             base={"model": "tiny", "dataset": latent_dataset, "output": str(tmp_path / "y")})


def test_a_token_gain_trains_at_its_own_rate_exports_and_refuses_what_cannot_take_it(tmp_path, latent_dataset,
                                                                                     single_rank_env):
    """`value_token_gain` (issue 15): the DeepSpeed path trains the gain in its own AdamW group (its rate, no decay),
    so after 2 steps g has moved by about 2 steps of that rate while the encoder's weights moved at theirs; the export
    carries g in its marker and reloads to the same token; the knob enters the fingerprint only when on; SDXL and a
    start encoder of the other kind are refused."""
    import math

    import torch

    from livo.modeling import ValueEncoder, tokenize_value_inputs
    from livo.training.trainer import check_training_model

    output = tmp_path / "run"
    trainer = run_in_process(tiny_config(latent_dataset, output, max_steps=2, checkpoint={"every_steps": 2},
                                         value_token_gain=True, value_token_gain_lr=0.05))
    assert trainer.result.exit_code == 0 and 0 < trainer.result.metrics["loss"] < 10
    groups = trainer.engine.optimizer.param_groups
    assert [(g["lr"], g["weight_decay"]) for g in groups][-1] == (0.05, 0.0)
    live = trainer.engine.module
    moved = abs(math.log(live.token_gain))
    assert 0.05 <= moved <= 0.1 + 1e-6  # Adam: about lr per step, 2 steps
    exported = ValueEncoder.from_pretrained(output / "value_encoder")
    assert exported.token_gain == pytest.approx(live.token_gain, rel=1e-6)
    ids = tokenize_value_inputs(trainer.models.tokenizer, ["gender equality"], ["a photo of a doctor"])
    with torch.no_grad():
        assert torch.allclose(exported(ids), live(ids.to(trainer.models.device)).cpu().float(), atol=1e-5)
    plain = tiny_config(latent_dataset, output, max_steps=2, checkpoint={"every_steps": 2})
    assert trainer.config.fingerprint() != plain.fingerprint()
    assert plain.fingerprint() == tiny_config(latent_dataset, output, max_steps=2, checkpoint={"every_steps": 2},
                                              value_token_gain_lr=0.5).fingerprint()
    with pytest.raises(ConfigError, match="has a token gain but value_token_gain=false"):
        run_in_process(tiny_config(latent_dataset, tmp_path / "again", max_steps=1,
                                   init_value_encoder=str(output / "value_encoder")))
    with pytest.raises(ConfigError, match="value_token_gain is not supported on SDXL"):
        check_training_model(tiny_config(latent_dataset, tmp_path / "x", model="toy-sdxl", value_token_gain=True))


@pytest.mark.slow
def test_images_are_encoded_when_the_dataset_has_no_latents(tmp_path, image_dataset, single_rank_env):
    trainer = run_in_process(tiny_config(image_dataset, tmp_path / "run", max_steps=2, per_device_batch_size=2,
                                         checkpoint={"every_steps": 2}))
    assert trainer.result.exit_code == 0
    assert trainer.models.vae.training is False
    assert trainer._precomputed_columns() == (False, False)
    assert 0 < trainer.result.metrics["loss"] < 10


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["livo", "dpo"])
def test_livo_and_dpo_steps_descend(tmp_path, latent_dataset, single_rank_env, kind):
    """One optimizer step through the whole DeepSpeed path lowers that step's loss (same batch, same noise): the
    gradient reaches the value encoder with the right sign for both losses."""
    import torch

    from livo.modeling import ValueEncoder
    from livo.training.data import PairBatches, PairSchedule
    from livo.training.trainer import noise_generator_seed, step_loss

    output = tmp_path / kind
    config = tiny_config(latent_dataset, output, max_steps=1, per_device_batch_size=8, optimizer={"lr": 1e-4},
                         loss={"kind": kind}, checkpoint={"every_steps": 1})
    trainer = run_in_process(config)
    schedule = PairSchedule.build(trainer.dataset.scenes, len(trainer.dataset), seed=0, per_device=8,
                                  accumulation=1, world_size=1)
    batch = PairBatches(trainer.dataset.rows, schedule, 0, use_latents=True, use_prompt_embeds=True,
                        resolution=None)[0]

    def loss_with(encoder) -> float:
        generator = torch.Generator().manual_seed(noise_generator_seed(0, 0))  # the noise of step 1
        with torch.no_grad():
            return float(step_loss(trainer.models, encoder, batch, generator, config.loss)[0])

    before = loss_with(ValueEncoder.from_text_encoder(trainer.models.text_encoder))
    after = loss_with(ValueEncoder.from_pretrained(output / "value_encoder"))
    logged = json.loads((output / "train_log.jsonl").read_text().splitlines()[0])
    assert logged["loss"] == pytest.approx(before, rel=1e-5)  # the trainer saw exactly this batch and noise
    assert after < before - 1e-4, (kind, before, after)


@pytest.mark.slow
def test_livo_loss_falls_on_held_out_draws(tmp_path, latent_dataset, single_rank_env):
    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline

    output = tmp_path / "run"
    run_in_process(tiny_config(latent_dataset, output, max_steps=16, per_device_batch_size=4, log_every=4,
                               checkpoint={"every_steps": 1000}))
    before = held_out_loss(ValueEncoder.from_text_encoder(build_tiny_pipeline(0).text_encoder), latent_dataset, "livo")
    after = held_out_loss(ValueEncoder.from_pretrained(output / "value_encoder"), latent_dataset, "livo")
    assert after < before - 0.03, (before, after)


def test_existing_checkpoints_need_resume(tmp_path, image_dataset, single_rank_env):
    from livo.training.trainer import Trainer, check_resume_state

    output = tmp_path / "run"
    step_dir = output / "checkpoints" / "step-00000004"
    step_dir.mkdir(parents=True)
    (step_dir / "trainer_state.json").write_text(json.dumps({"config_fingerprint": "sha256:other", "world_size": 1}))
    (step_dir / "COMPLETE.json").write_text(json.dumps({"files": {}}))
    with pytest.raises(ConfigError, match="pass --resume"):
        check_resume_state(Trainer(tiny_config(image_dataset, output)).plan)
    with pytest.raises(ConfigError, match="different training settings"):
        check_resume_state(Trainer(tiny_config(image_dataset, output, resume=True)).plan)
    config = tiny_config(image_dataset, output, resume=True)
    (step_dir / "trainer_state.json").write_text(json.dumps({"config_fingerprint": config.fingerprint(),
                                                             "world_size": 2}))
    with pytest.raises(ConfigError, match="same number of ranks"):
        check_resume_state(Trainer(config).plan)
    (step_dir / "trainer_state.json").write_text(json.dumps({"config_fingerprint": config.fingerprint(),
                                                             "world_size": 1}))
    assert check_resume_state(Trainer(config).plan) == 4


def test_anchor_term_adds_lambda_times_the_aligned_error(tmp_path, latent_dataset, single_rank_env):
    """loss.anchor_weight λ adds exactly λ·mean(θw) to the paper's loss on the same batch and noise (issue 15)."""
    import torch

    from livo.modeling import ValueEncoder
    from livo.training.config import LossConfig
    from livo.training.data import PairBatches, PairSchedule
    from livo.training.trainer import step_loss

    config = tiny_config(latent_dataset, tmp_path / "run", max_steps=1, per_device_batch_size=4,
                         checkpoint={"every_steps": 1})
    trainer = run_in_process(config)
    schedule = PairSchedule.build(trainer.dataset.scenes, len(trainer.dataset), seed=0, per_device=4,
                                  accumulation=1, world_size=1)
    batch = PairBatches(trainer.dataset.rows, schedule, 0, use_latents=True, use_prompt_embeds=True,
                        resolution=None)[0]
    encoder = ValueEncoder.from_text_encoder(trainer.models.text_encoder)

    def loss_and_theta_w(anchor_weight: float) -> tuple[float, float]:
        with torch.no_grad():
            loss, stats = step_loss(trainer.models, encoder, batch, torch.Generator().manual_seed(5),
                                    LossConfig(anchor_weight=anchor_weight))
        return float(loss), float(stats[1])

    plain, theta_w = loss_and_theta_w(0.0)
    anchored, theta_w_again = loss_and_theta_w(250.0)
    assert theta_w_again == theta_w and theta_w > 0
    assert anchored - plain == pytest.approx(250.0 * theta_w, rel=1e-5)
    # loss.distill_weight reads the batch's aligned prompts (the teacher): a positive distance is added
    assert batch["aligned_prompts"] and all(isinstance(p, str) for p in batch["aligned_prompts"])
    with torch.no_grad():
        distilled, _ = step_loss(trainer.models, encoder, batch, torch.Generator().manual_seed(5),
                                 LossConfig(distill_weight=1000.0))
    assert float(distilled) > plain
    # loss.paired_violating_hinge reaches the violating hinge only: same errors and first hinge, another second hinge
    with torch.no_grad():
        _, paper_stats = step_loss(trainer.models, encoder, batch, torch.Generator().manual_seed(5), LossConfig())
        _, paired_stats = step_loss(trainer.models, encoder, batch, torch.Generator().manual_seed(5),
                                    LossConfig(paired_violating_hinge=True))
    assert paired_stats[1:6].tolist() == paper_stats[1:6].tolist()  # θw rw θl rl hinge_w
    assert float(paired_stats[6]) != float(paper_stats[6])  # hinge_l
