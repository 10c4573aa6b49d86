"""Helpers shared by the training and distributed tests: tiny preference datasets, fast configs, in-process runs.

Imported as a top-level module (`from training_helpers import ...`); tests/distributed puts this folder on sys.path.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

PRINCIPLE_SET_HASH = "sha256:" + "ab" * 32
SUBJECTS = ("doctor", "nurse", "teacher", "chef")
ROWS_PER_SCENE = 3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _image(color: tuple[int, int, int], seed: int, size: int = 32):
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color)[None, None, :] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def preference_rows() -> list[dict]:
    """4 scenes × 3 rows: reddish aligned images, bluish violating images."""
    rows = []
    for s, subject in enumerate(SUBJECTS):
        for k in range(ROWS_PER_SCENE):
            rows.append(dict(
                prompt=f"a photo of a {subject}", principle_id="gender-equality", principle_text="gender equality",
                scene=f"gender-equality/career/{subject}", aligned_image=_image((200, 60, 60), 10 * s + k),
                violating_image=_image((60, 60, 200), 100 + 10 * s + k)))
    return rows


def write_image_dataset(path: Path) -> str:
    """Images only: the trainer VAE-encodes them every step."""
    from livo.data.dataset import write_rows_dataset

    return write_rows_dataset(preference_rows(), path, principle_set_hash=PRINCIPLE_SET_HASH)


def write_latent_dataset(path: Path) -> str:
    """With the VAE posteriors (`aligned_latent_dist`/`violating_latent_dist`, and their mirror images') and
    `prompt_embeds` made by the tiny preset's VAE and text encoder, as `livo generate` stores them."""
    import torch

    from livo.data.dataset import write_rows_dataset
    from livo.modeling import encode_prompts
    from livo.presets import build_tiny_pipeline, pipeline_fingerprint
    from livo.training.data import image_to_tensor

    pipe = build_tiny_pipeline(0)
    rows = preference_rows()
    with torch.no_grad():
        for row in rows:
            for side in ("aligned", "violating"):
                pixels = image_to_tensor(row[f"{side}_image"], 32)[None]
                row[f"{side}_latent_dist"] = pipe.vae.encode(pixels).latent_dist.parameters[0].numpy()
                row[f"{side}_latent_dist_flipped"] = pipe.vae.encode(pixels.flip(-1)).latent_dist.parameters[0].numpy()
            row["prompt_embeds"] = encode_prompts(pipe.text_encoder, pipe.tokenizer, [row["prompt"]])[0].numpy()
    return write_rows_dataset(rows, path, principle_set_hash=PRINCIPLE_SET_HASH,
                              generator_model_hash=pipeline_fingerprint(pipe))


def tiny_config(dataset: str, output: Path, **overrides):
    """A fast training config on the tiny preset (lr large enough to move a random model in a few steps)."""
    from livo.training.config import TrainingConfig

    settings = dict(model="tiny", dataset=dataset, output=str(output), per_device_batch_size=4, max_steps=6,
                    optimizer={"lr": 1e-3}, log_every=1, checkpoint={"every_steps": 3}, seed=0)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return TrainingConfig(**settings)


def run_in_process(config):
    """Train in this process (world of one; the caller sets the launcher variables); returns the `Trainer`."""
    from livo.training import distributed
    from livo.training.trainer import Trainer

    trainer = Trainer(config)
    try:
        trainer.result = trainer.run()
    finally:
        distributed.destroy()
    return trainer


def load_exported(output: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(output) / "value_encoder" / "model.safetensors"))


def held_out_loss(value_encoder, dataset_path: str, kind: str, draws: int = 4) -> float:
    """The loss of every (aligned, own violating) pair of the latent dataset under fixed noise draws."""
    import torch

    from livo.data.dataset import load_preference_dataset
    from livo.presets import build_tiny_pipeline
    from livo.training.config import LossConfig
    from livo.training.trainer import Models, step_loss

    dataset = load_preference_dataset(dataset_path)
    rows = dataset.rows.with_format("numpy")
    batch = {"latent_dist_w": torch.tensor(np.asarray(rows["aligned_latent_dist"])),
             "latent_dist_l": torch.tensor(np.asarray(rows["violating_latent_dist"])),
             "prompt_embeds": torch.tensor(np.asarray(rows["prompt_embeds"])),
             "prompts": list(dataset.rows["prompt"]), "principle_texts": list(dataset.rows["principle_text"])}
    from diffusers import DDPMScheduler

    pipe = build_tiny_pipeline(0)
    models = Models(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                    noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config), value_encoder=value_encoder,
                    device=torch.device("cpu"), weight_dtype=torch.float32, base_fingerprint="")
    losses = []
    with torch.no_grad():
        for draw in range(draws):
            generator = torch.Generator().manual_seed(1000 + draw)
            loss, _ = step_loss(models, value_encoder, batch, generator, LossConfig(kind=kind))
            losses.append(float(loss))
    return float(np.mean(losses))
