"""The value encoder, the one-token conditioning merge, and the LiVO inference pipeline (LIVO_METHOD.md §1).

The value encoder is a trainable copy of the base model's CLIP text encoder. It reads `"<principle text>, <prompt>"`
and its pooled (EOS) output is prepended as one extra token to the frozen encoder's per-token output of the prompt
alone. Without the token the base model is unchanged, which is also why the base model serves as the loss's
reference model.

Sequence lengths follow the authors: training pads the prompt to the tokenizer's maximum (77, so the UNet sees 78
tokens); inference truncates the prompt to 76 tokens without padding (at most 77 with the value token) and builds the
unconditional embedding for classifier-free guidance at the same length.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from livo.errors import ConfigError, LivoError
from livo.weights import check_safetensors_files  # noqa: F401  (also part of this module's API)

VALUE_ENCODER_DIR = "value_encoder"  # the authors' released layout: <checkpoint>/value_encoder/
WEIGHTS_NAME = "model.safetensors"
# Says what a value encoder folder holds beyond a CLIPTextModel: its family (an SDXL one: two encoder copies) and, for
# the SD family, how many value tokens it outputs when more than the paper's one (absent: one token, the paper's layout)
VALUE_ENCODER_FILE = SDXL_VALUE_ENCODER_FILE = "livo_value_encoder.json"
TIME_SHIFT_FILE = "time_shift.safetensors"  # the SD-family time-embedding head (`time_shift_dim`), beside the encoder
TOKEN_ATTENTION_MODES = ("prepend", "additive")  # how the value token enters cross-attention (`ValueEncoder`)


def value_text(principle_text: str, prompt: str) -> str:
    """The value encoder's input string."""
    return f"{principle_text}, {prompt}"


class ValueEncoder(nn.Module):
    """A CLIP text encoder whose pooled output becomes the value token. Every parameter is trainable.

    `value_tokens` k > 1 (issue 15's experiment, not the paper's): the value is the copy's last k final-layer states
    ending at the EOS position — k tokens of the kind the UNet reads, the last of which is the pooled output.

    `time_shift_dim` (issue 15's global channel, not the paper's): a linear head, zero at initialisation, maps the
    pooled output to a shift of the UNet's time embedding (`shifted_time_embedding`) — for SD v1.5 what SDXL's pooled
    text embedding is to its UNet, a conditioning every ResNet block reads; `forward` then returns `(token, shift)`.

    `token_attention` (issue 15's experiment, not the paper's): how the token enters the UNet's cross-attention.
    `prepend` (the paper) makes it one more key of the softmax, so its share is taken from the prompt's tokens;
    `additive` keeps the prompt's attention whole and adds the token's value with the share the softmax gives it
    (`additive_value_attention`). It is a property of the trained encoder: saved in its marker, and every sampler
    of the encoder (`LiVOPipeline`) applies it.

    `token_gain` (issue 15's experiment, not the paper's): one learned scalar g, 1 at initialisation, multiplies the
    value token(s). The pooled output leaves the final layer norm at an almost fixed norm, so the paper's token can
    turn but hardly grow; on some toy base models no token of that norm removes a mark that a longer one removes
    (docs/convergence.md, "The one-token ceiling"). g is saved in the marker (`token_gain`)."""

    family = "sd"

    def __init__(self, text_model, *, value_tokens: int = 1, time_shift_dim: int | None = None,
                 token_attention: str = "prepend", token_gain: float | None = None):
        super().__init__()
        if value_tokens < 1:
            raise ConfigError(f"value_tokens must be at least 1, got {value_tokens}")
        if token_attention not in TOKEN_ATTENTION_MODES:
            raise ConfigError(f"token_attention must be one of {' | '.join(TOKEN_ATTENTION_MODES)}, got "
                              f"{token_attention!r}")
        self.text_model = text_model
        self.value_tokens = int(value_tokens)
        self.token_attention = token_attention
        if token_gain is not None and not token_gain > 0:
            raise ConfigError(f"token_gain must be positive, got {token_gain}")
        # stored as log g: positive by construction, and a step of the optimiser changes g by a ratio
        self.log_token_gain = (None if token_gain is None
                               else nn.Parameter(torch.full((1,), math.log(token_gain), dtype=text_model.dtype)))
        self.time_shift = None
        if time_shift_dim:
            self.time_shift = nn.Linear(int(text_model.config.hidden_size), int(time_shift_dim))
            # zero: a fresh encoder is exactly the paper's one-token encoder, and training starts from the base model
            nn.init.zeros_(self.time_shift.weight)
            nn.init.zeros_(self.time_shift.bias)

    @property
    def time_shift_dim(self) -> int | None:
        return None if self.time_shift is None else int(self.time_shift.out_features)

    @property
    def token_gain(self) -> float | None:
        """The learned gain g of the value token(s), or None (the paper's encoder: no gain)."""
        return None if self.log_token_gain is None else float(self.log_token_gain.detach().exp())

    @classmethod
    def from_text_encoder(cls, text_encoder, *, value_tokens: int = 1, time_shift_dim: int | None = None,
                          token_attention: str = "prepend", token_gain: bool = False) -> ValueEncoder:
        """A trainable deep copy of `text_encoder` (the paper initialises from the base encoder's weights); with
        `token_gain`, a learned gain that starts at 1, so the fresh encoder is still the paper's."""
        model = copy.deepcopy(text_encoder)
        model.requires_grad_(True)
        model.train()
        encoder = cls(model, value_tokens=value_tokens, time_shift_dim=time_shift_dim, token_attention=token_attention,
                      token_gain=1.0 if token_gain else None)
        return encoder.to(device=model.device, dtype=model.dtype)

    @property
    def hidden_size(self) -> int:
        return int(self.text_model.config.hidden_size)

    def check_fits(self, text_encoder, tokenizer=None, *, where: str = "the value encoder",
                   text_encoder_2=None, unet=None) -> None:
        """Refuse (ConfigError, exit 2) a value encoder made for another base model: its token must have the width of
        the base text encoder's output, and it must read the base tokenizer's ids (and, with a time-embedding head,
        shift a time embedding as wide as `unet`'s). Called before any image or step."""
        if text_encoder_2 is not None:
            raise ConfigError(f"{where} is an SD v1.5-family value encoder (one text encoder) but the base model is "
                              "SDXL-family (two): use a value encoder trained on this base model")
        base_width = int(text_encoder.config.hidden_size)
        if self.hidden_size != base_width:
            raise ConfigError(f"{where} outputs {self.hidden_size}-wide tokens but the base model's text encoder "
                              f"outputs {base_width}-wide ones: it was trained on another base model; use a value "
                              "encoder trained on this base model (its lineage names the base model it fits)")
        _check_vocabulary(self.text_model, text_encoder, tokenizer, where)
        if self.time_shift is not None and unet is not None and self.time_shift_dim != time_embedding_dim(unet):
            raise ConfigError(f"{where} shifts a {self.time_shift_dim}-wide time embedding but the base model's UNet "
                              f"has a {time_embedding_dim(unet)}-wide one: it was trained on another base model")

    def forward(self, input_ids: torch.Tensor):
        """`[B, D]` pooled output: the final-layer-norm hidden state at the EOS position; `[B, k, D]` for k value
        tokens (`value_states`); with a time-embedding head, the pair `(token(s), shift [B, T])`."""
        states = value_states(self.text_model, input_ids, self.value_tokens)
        tokens = states if self.log_token_gain is None else states * self.log_token_gain.exp().to(states.dtype)
        if self.time_shift is None:
            return tokens
        pooled = states if states.ndim == 2 else states[:, -1]
        return tokens, self.time_shift(pooled)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json` + `model.safetensors` (transformers' `save_pretrained` layout, safetensors only), and
        `livo_value_encoder.json` when the encoder outputs more than one token, has a time-embedding head (saved
        as `time_shift.safetensors`) or adds its token to the attention (`token_attention`)."""
        import json

        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.text_model.save_pretrained(directory, safe_serialization=True)
        marker: dict[str, Any] = {"family": self.family}
        if self.value_tokens > 1:
            marker.update(value_tokens=self.value_tokens,
                          token=f"the last {self.value_tokens} final-layer states ending at the EOS position")
        if self.time_shift is not None:
            save_file({name: tensor.detach().contiguous().cpu() for name, tensor in self.time_shift.state_dict().items()},
                      str(directory / TIME_SHIFT_FILE))
            marker["time_shift"] = {"file": TIME_SHIFT_FILE, "dim": self.time_shift_dim,
                                    "what": "linear head: pooled output -> shift of the UNet's time embedding"}
        if self.token_attention != "prepend":
            marker["token_attention"] = self.token_attention
        if self.log_token_gain is not None:
            marker["token_gain"] = self.token_gain
        if len(marker) > 1:
            (directory / VALUE_ENCODER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None) -> ValueEncoder:
        """Load from a directory in `save_pretrained` layout, or from a parent holding `value_encoder/` (the authors'
        released checkpoints), or from a Hugging Face hub id (`org/name`, resolved with `huggingface_hub`'s
        `snapshot_download`, from the local HF cache when `HF_HUB_OFFLINE` is set). An existing local path always
        wins over a hub id of the same spelling. Only safetensors weights are accepted."""
        from safetensors import SafetensorError
        from transformers import CLIPTextModel

        directory = resolve_value_encoder_dir(path if Path(path).expanduser().exists() or not looks_like_hub_id(path)
                                              else download_value_encoder(str(path)))
        marker = _read_marker(directory)
        if marker.get("family") == SDXLValueEncoder.family:
            return SDXLValueEncoder.from_pretrained(directory, torch_dtype=torch_dtype)
        if marker.get("family", cls.family) != cls.family:
            raise ConfigError(f"{directory}: value encoder family {marker.get('family')!r}; livo knows 'sd' and 'sdxl'")
        value_tokens = marker.get("value_tokens", 1)
        if not isinstance(value_tokens, int) or value_tokens < 1:
            raise ConfigError(f"{directory / VALUE_ENCODER_FILE}: value_tokens must be a positive integer, got "
                              f"{value_tokens!r}")
        token_attention = marker.get("token_attention", "prepend")
        if token_attention not in TOKEN_ATTENTION_MODES:
            raise ConfigError(f"{directory / VALUE_ENCODER_FILE}: token_attention must be one of "
                              f"{' | '.join(TOKEN_ATTENTION_MODES)}, got {token_attention!r}")
        token_gain = marker.get("token_gain")
        if token_gain is not None and (isinstance(token_gain, bool) or not isinstance(token_gain, int | float)
                                       or not math.isfinite(token_gain) or token_gain <= 0):
            raise ConfigError(f"{directory / VALUE_ENCODER_FILE}: token_gain must be a positive number, got "
                              f"{token_gain!r}")
        check_safetensors_files(sorted(directory.glob("*.safetensors")))
        kwargs: dict[str, Any] = {"use_safetensors": True}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        try:
            encoder = cls(CLIPTextModel.from_pretrained(directory, **kwargs), value_tokens=value_tokens,
                          time_shift_dim=_time_shift_dim(directory, marker), token_attention=token_attention,
                          token_gain=token_gain)
            if encoder.time_shift is not None:
                _load_time_shift(encoder, directory)
        except SafetensorError as exc:  # passed the header check but its data is bad
            raise ConfigError(f"{directory}: value encoder weights are corrupt ({exc}); copy or export them "
                              "again") from exc
        except (OSError, ValueError) as exc:  # e.g. config.json is not JSON, or does not describe these weights
            raise ConfigError(f"{directory}: cannot load the value encoder "
                              f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
                              "it must be a CLIPTextModel save_pretrained folder") from exc
        return encoder.to(dtype=torch_dtype) if torch_dtype is not None else encoder


def _time_shift_dim(directory: Path, marker: dict[str, Any]) -> int | None:
    """The width of the marker's time-embedding head (None: the paper's layout, no head)."""
    head = marker.get("time_shift")
    if head is None:
        return None
    if not isinstance(head, dict) or not isinstance(head.get("dim"), int) or head["dim"] < 1:
        raise ConfigError(f"{directory / VALUE_ENCODER_FILE}: time_shift must be an object with a positive integer "
                          f"dim, got {head!r}")
    if not (directory / TIME_SHIFT_FILE).is_file():
        raise ConfigError(f"{directory}: its marker names a time-embedding head but {TIME_SHIFT_FILE} is missing; "
                          "copy or export the value encoder again")
    return head["dim"]


def _load_time_shift(encoder: ValueEncoder, directory: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(directory / TIME_SHIFT_FILE))
    expected = {name: tuple(t.shape) for name, t in encoder.time_shift.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        raise ConfigError(f"{directory / TIME_SHIFT_FILE}: expected tensors {expected}, found {found}; copy or export "
                          "the value encoder again")
    encoder.time_shift.load_state_dict(state)


def time_embedding_dim(unet) -> int:
    """The width of a diffusers UNet's time embedding (1280 for SD v1.5), which a time-shift head writes into."""
    return int(unet.time_embedding.linear_2.out_features)


@contextmanager
def shifted_time_embedding(unet, shift: torch.Tensor | None, *, guided: bool = False) -> Iterator[None]:
    """Within the block, every call of `unet` adds `shift` (`[N, T]`) to its time embedding (a forward hook on
    `unet.time_embedding`; the base weights are untouched). A call must have N rows; with `guided`, a call of 2N rows
    is the diffusers pipelines' classifier-free-guidance batch `[unconditional; conditional]`, and only the
    conditional half is shifted (as SDXL's pooled value embedding reaches only the conditional branch). None: no-op."""
    if shift is None:
        yield
        return

    def add_shift(module, args, output):
        rows = output.shape[0]
        if rows == shift.shape[0]:
            extra = shift
        elif guided and rows == 2 * shift.shape[0]:
            extra = torch.cat([torch.zeros_like(shift), shift])
        else:
            raise RuntimeError(f"time-embedding shift for {shift.shape[0]} rows but the UNet was called with {rows}")
        return output + extra.to(device=output.device, dtype=output.dtype)

    handle = unet.time_embedding.register_forward_hook(add_shift)
    try:
        yield
    finally:
        handle.remove()


class _AdditiveValueTokenProcessor:
    """Cross-attention in which the first `tokens` keys are value tokens that do not displace the prompt: for the rows
    that carry them, `softmax(prompt keys) · V_prompt + share · V_token`, where `share` is what the plain softmax over
    all keys would give the tokens. Rows without tokens, and self-attention, go to the layer's own processor."""

    def __init__(self, inner, tokens: int, rows_of):
        self.inner, self.tokens, self.rows_of = inner, tokens, rows_of

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        rows = self.rows_of(hidden_states.shape[0]) if encoder_hidden_states is not None else None
        if rows is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if (attention_mask is not None or hidden_states.ndim != 3 or attn.norm_cross or attn.group_norm is not None
                or attn.spatial_norm is not None or attn.residual_connection
                or getattr(attn, "norm_q", None) is not None):
            raise RuntimeError("additive value-token attention supports the plain cross-attention of SD-family UNets "
                               "only (no mask, no cross norm, no residual)")
        if rows.start == 0:
            return self._additive(attn, hidden_states, encoder_hidden_states)
        # classifier-free guidance: the unconditional half carries no token. The layer's own processor runs on the
        # whole batch, so that half is bit-identical to a plain call (kernels are not batch-size invariant).
        out = self.inner(attn, hidden_states, encoder_hidden_states, None, temb, **kwargs).clone()
        out[rows] = self._additive(attn, hidden_states[rows], encoder_hidden_states[rows])
        return out

    def _additive(self, attn, hidden_states, context):
        batch, length, _ = hidden_states.shape
        heads = attn.heads
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        width = query.shape[-1] // heads
        query, key, value = (t.view(batch, -1, heads, width).transpose(1, 2) for t in (query, key, value))
        logits = (query @ key.transpose(-1, -2)).float() * attn.scale
        mixed = additive_token_mix(logits, value, self.tokens)
        mixed = mixed.transpose(1, 2).reshape(batch, length, heads * width)
        return attn.to_out[1](attn.to_out[0](mixed)) / attn.rescale_output_factor


def additive_token_mix(logits: torch.Tensor, value: torch.Tensor, tokens: int) -> torch.Tensor:
    """The additive value token's attention output from attention `logits` (`[..., L_q, n + L]`, the first `tokens`
    keys the value tokens) and `value` (`[..., n + L, d]`): `softmax(prompt logits) · V_prompt + share · V_token`, with
    `share` what the plain softmax over all keys gives the tokens."""
    share = logits.softmax(-1)[..., :tokens]
    prompt = logits[..., tokens:].softmax(-1)
    return prompt.to(value.dtype) @ value[..., tokens:, :] + share.to(value.dtype) @ value[..., :tokens, :]


@contextmanager
def additive_value_attention(unet, tokens: int | None, *, rows: int | None = None) -> Iterator[None]:
    """Within the block, the UNet's cross-attention layers treat the first `tokens` keys as additive value tokens
    (`ValueEncoder.token_attention == "additive"`): every row of a call when `rows` is None (training's value
    passes), or, for a call of `rows` prompts, all of them, or only the conditional half of a classifier-free-guidance
    batch of 2 × `rows` (generation). The layers' processors are restored on exit. `tokens` None: no-op."""
    if not tokens:
        yield
        return

    def rows_of(batch: int) -> slice:
        if rows is None or batch == rows:
            return slice(0, batch)
        if batch == 2 * rows:
            return slice(rows, batch)
        raise RuntimeError(f"additive value tokens for {rows} prompts but the UNet was called with {batch} rows")

    original = unet.attn_processors
    unet.set_attn_processor({name: _AdditiveValueTokenProcessor(processor, tokens, rows_of)
                             if name.endswith("attn2.processor") else processor
                             for name, processor in original.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(original)


def additive_tokens(value_encoder) -> int | None:
    """The number of value tokens that `value_encoder` (or the DeepSpeed engine around it) adds to the attention, or
    None when it prepends them."""
    value_encoder = getattr(value_encoder, "module", value_encoder)
    if getattr(value_encoder, "token_attention", "prepend") == "additive":
        return int(value_encoder.value_tokens)
    return None


class SDXLValueEncoder(nn.Module):
    """The value encoder of an SDXL-family base model (issue 18, docs/architecture.md): trainable copies of both text
    encoders read `"<principle>, <prompt>"`, and the value token is each copy's hidden state at the EOS position in
    the layer the UNet reads (the penultimate one, as `StableDiffusionXLPipeline.encode_prompt`), side by side. At
    initialisation it is the frozen encoders' own EOS state of that text: in the distribution of the prompt's tokens,
    as SD v1.5's pooled output (the final-layer-norm EOS state) is in the distribution of its last hidden states.
    With `shift_pooled` (candidate (b), the default the trainer builds, chosen by measurement on the toy SDXL) the
    second copy's projected pooled output of the value text also replaces the prompt's pooled `text_embeds` for
    images with a principle; without it (candidate (a)) they are left alone. Saved as `text_encoder/` and
    `text_encoder_2/` (transformers layout, safetensors) plus `livo_value_encoder.json`, which names the family and
    the pooled choice."""

    family = "sdxl"

    def __init__(self, text_model, text_model_2, *, shift_pooled: bool = False):
        super().__init__()
        self.text_model = text_model
        self.text_model_2 = text_model_2
        # candidate (b): the second copy's projected pooled output of the value text also replaces the prompt's pooled
        # `text_embeds` for images with a principle (forward then returns (token, pooled))
        self.shift_pooled = shift_pooled

    @classmethod
    def from_text_encoders(cls, text_encoder, text_encoder_2, *, shift_pooled: bool = False) -> SDXLValueEncoder:
        models = [copy.deepcopy(m) for m in (text_encoder, text_encoder_2)]
        for model in models:
            model.requires_grad_(True)
            model.train()
        return cls(*models, shift_pooled=shift_pooled)

    @property
    def hidden_size(self) -> int:
        return int(self.text_model.config.hidden_size) + int(self.text_model_2.config.hidden_size)

    def forward(self, input_ids: torch.Tensor):
        """`[B, D1 + D2]`: both copies' penultimate hidden state at the EOS position; with `shift_pooled`, the pair
        `(token, pooled [B, P])`."""
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        eos = _eos_positions(input_ids, self.text_model.config)
        first = self.text_model(input_ids=input_ids, output_hidden_states=True)
        second = self.text_model_2(input_ids=input_ids, output_hidden_states=True)
        token = torch.cat([first.hidden_states[-2][rows, eos], second.hidden_states[-2][rows, eos]], dim=-1)
        return (token, second.text_embeds) if self.shift_pooled else token

    def check_fits(self, text_encoder, tokenizer=None, *, where: str = "the value encoder",
                   text_encoder_2=None, unet=None) -> None:
        if text_encoder_2 is None:
            raise ConfigError(f"{where} is an SDXL value encoder (two text encoders) but the base model has one text "
                              "encoder: use a value encoder trained on this base model")
        for ours, theirs, name in ((self.text_model, text_encoder, "first"), (self.text_model_2, text_encoder_2,
                                                                              "second")):
            if int(ours.config.hidden_size) != int(theirs.config.hidden_size):
                raise ConfigError(f"{where}: its {name} encoder is {ours.config.hidden_size} wide, the base model's "
                                  f"{theirs.config.hidden_size}: it was trained on another base model")
        _check_vocabulary(self.text_model, text_encoder, tokenizer, where)

    def save_pretrained(self, directory: str | Path) -> Path:
        import json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.text_model.save_pretrained(directory / "text_encoder", safe_serialization=True)
        self.text_model_2.save_pretrained(directory / "text_encoder_2", safe_serialization=True)
        (directory / SDXL_VALUE_ENCODER_FILE).write_text(json.dumps(
            {"family": self.family, "token": "penultimate EOS state of both encoder copies, concatenated",
             "pooled": "value" if self.shift_pooled else "prompt", "parts": ["text_encoder", "text_encoder_2"]},
            indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, torch_dtype: torch.dtype | None = None) -> SDXLValueEncoder:

        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        directory = Path(directory)
        marker = _read_marker(directory)
        if marker.get("family") != cls.family:
            raise ConfigError(f"{directory}: value encoder family {marker.get('family')!r}, expected 'sdxl'")
        kwargs: dict[str, Any] = {"use_safetensors": True, **({"dtype": torch_dtype} if torch_dtype else {})}
        parts = []
        for name, model_class in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            check_safetensors_files(sorted((directory / name).glob("*.safetensors")))
            try:
                parts.append(model_class.from_pretrained(directory / name, **kwargs))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{directory / name}: cannot load this part of the SDXL value encoder "
                                  f"({_first_line(exc)})") from exc
        return cls(*parts, shift_pooled=marker.get("pooled", "prompt") == "value")


def _read_marker(directory: Path) -> dict[str, Any]:
    """`livo_value_encoder.json` of a value encoder folder ({} when there is none: the paper's one-token layout)."""
    import json

    path = directory / VALUE_ENCODER_FILE
    if not path.is_file():
        return {}
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(marker, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return marker


def value_states(text_model, input_ids: torch.Tensor, value_tokens: int = 1) -> torch.Tensor:
    """The value token(s) a CLIP text model computes for `input_ids`: its pooled output `[B, D]` (the final-layer
    state at the EOS position) for one token; for k the last k final-layer states ending there, `[B, k, D]` (clamped at
    the first position for texts shorter than k)."""
    output = text_model(input_ids=input_ids)
    if value_tokens == 1:
        return output.pooler_output
    eos = _eos_positions(input_ids, text_model.config)
    positions = (eos[:, None] - torch.arange(value_tokens - 1, -1, -1, device=eos.device)).clamp(min=0)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]
    return output.last_hidden_state[rows, positions]


def _check_vocabulary(text_model, text_encoder, tokenizer, where: str) -> None:
    """The value encoder reads the base tokenizer's ids: it must know every one of them."""
    vocab = int(text_model.config.vocab_size)
    needed = len(tokenizer) if tokenizer is not None else int(text_encoder.config.vocab_size)
    if vocab < needed:
        raise ConfigError(f"{where} knows {vocab} token ids but the base model's tokenizer has {needed}: it was "
                          "trained on another base model; use a value encoder trained on this base model")


def sdxl_encode(text_encoder, text_encoder_2, input_ids, input_ids_2=None) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning as `StableDiffusionXLPipeline.encode_prompt` builds it: both encoders' penultimate hidden
    states side by side (`[B, L, D1+D2]`) and the second encoder's projected pooled output (`[B, P]`)."""
    first = text_encoder(input_ids, output_hidden_states=True)
    second = text_encoder_2(input_ids if input_ids_2 is None else input_ids_2, output_hidden_states=True)
    return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds


def _eos_positions(input_ids: torch.Tensor, config) -> torch.Tensor:
    """Where CLIP pools: the first EOS token (the highest id for the legacy eos_token_id 2, as transformers does)."""
    if int(config.eos_token_id) == 2:
        return input_ids.to(torch.int).argmax(dim=-1)
    return (input_ids == int(config.eos_token_id)).int().argmax(dim=-1)


def is_sdxl(pipe) -> bool:
    """Whether a diffusers pipeline is of the SDXL family (two text encoders, added conditions)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def vae_needs_fp32(pipe) -> bool:
    """SDXL's VAE overflows in fp16 and says so (`force_upcast` in its config, which diffusers' SDXL pipeline reads
    to decode): it encodes in fp32. SD-family VAEs keep the dtype they are given (the SD v1.5 path is unchanged)."""
    return is_sdxl(pipe) and bool(getattr(pipe.vae.config, "force_upcast", False))


def value_encoder_for(pipe, *, sdxl_shift_pooled: bool = True, value_tokens: int = 1, time_shift: bool = False,
                      token_attention: str = "prepend", token_gain: bool = False):
    """A fresh value encoder for `pipe`'s family: a trainable copy of its text encoder(s); for SDXL, candidate (b)
    unless `sdxl_shift_pooled=False` (the training default, `TrainingConfig.sdxl_shift_pooled`); for SD, with a
    time-embedding head as wide as the UNet's when `time_shift` (`TrainingConfig.value_time_shift`) and the token's
    way into the attention (`TrainingConfig.value_token_attention`), and a learned token gain when `token_gain`
    (`TrainingConfig.value_token_gain`)."""
    if is_sdxl(pipe):
        if value_tokens != 1 or time_shift or token_attention != "prepend" or token_gain:
            raise ConfigError("value_tokens above 1, value_time_shift, value_token_attention and value_token_gain are "
                              "not supported on SDXL-family base models (SDXL's value path shifts its pooled "
                              "embedding instead)")
        return SDXLValueEncoder.from_text_encoders(pipe.text_encoder, pipe.text_encoder_2,
                                                   shift_pooled=sdxl_shift_pooled)
    return ValueEncoder.from_text_encoder(pipe.text_encoder, value_tokens=value_tokens,
                                         time_shift_dim=time_embedding_dim(pipe.unet) if time_shift else None,
                                         token_attention=token_attention, token_gain=token_gain)


HUB_ALLOW_PATTERNS = ["config.json", "*.safetensors", f"{VALUE_ENCODER_DIR}/*"]
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_hub_id(path: str | Path) -> bool:
    """`org/name` spelled as a string (a `Path`, or anything starting with `.`, `/` or `~`, is a local path)."""
    return isinstance(path, str) and not path.startswith((".", "/", "~")) and bool(_HUB_ID_RE.match(path))


def download_value_encoder(repo_id: str, *, revision: str | None = None) -> Path:
    """The local snapshot of a hub repository holding a value encoder (its top-level config + safetensors, or its
    `value_encoder/` folder), downloaded with `snapshot_download` or, with `HF_HUB_OFFLINE` set, taken from the local
    HF cache (`HF_HUB_CACHE`, else `HF_HOME/hub`; read now, not at import)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from livo.models.mirror import hub_settings

    cache_dir, offline = hub_settings()
    where = f"the local HF cache ({cache_dir or 'default location'}; HF_HUB_OFFLINE is set)" if offline else "the hub"
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                      allow_patterns=HUB_ALLOW_PATTERNS))
    except (RepositoryNotFoundError, RevisionNotFoundError, LocalEntryNotFoundError) as exc:
        hint = ("download it where a hub is reachable (or unset HF_HUB_OFFLINE), or pass a local folder"
                if offline else "check the id, or pass a local folder")
        raise ConfigError(f"value encoder {repo_id!r}: no such path, and no such hub repository in {where} "
                          f"({_first_line(exc)}); {hint}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise LivoError(f"value encoder {repo_id!r}: cannot download it from {where} ({_first_line(exc)}); "
                        "retry, or fill the HF cache on a machine with hub access and set HF_HUB_OFFLINE=1") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_value_encoder_dir(path: str | Path) -> Path:
    """The directory that holds the value encoder's config and safetensors weights, with a clear error otherwise."""
    path = Path(path)
    candidates = [path, path / VALUE_ENCODER_DIR]
    for candidate in candidates:
        if (candidate / "config.json").is_file() and any(candidate.glob("*.safetensors")):
            return candidate
        if (candidate / SDXL_VALUE_ENCODER_FILE).is_file():  # two encoder copies in sub-folders (SDXLValueEncoder)
            return candidate
    for candidate in candidates:
        if (candidate / "config.json").is_file() and (
            any(candidate.glob("*.bin")) or any(candidate.glob("*.pt")) or any(candidate.glob("*.ckpt"))
        ):
            raise ConfigError(
                f"{candidate}: value encoder weights are not safetensors; livo loads safetensors only — convert them "
                "with `CLIPTextModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)` in a trusted "
                "environment"
            )
    raise ConfigError(
        f"{path}: no value encoder found (expected config.json + model.safetensors in it or in {VALUE_ENCODER_DIR}/)"
    )


def tokenize_value_inputs(tokenizer, principle_texts: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
    """Token ids `[B, max_len]` of `"<principle>, <prompt>"`, padded and truncated to the tokenizer's maximum."""
    if len(principle_texts) != len(prompts):
        raise ValueError(f"{len(principle_texts)} principle texts for {len(prompts)} prompts")
    texts = [value_text(p, x) for p, x in zip(principle_texts, prompts, strict=True)]
    return tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids `[B, max_len]` of the prompts alone, padded to the tokenizer's maximum (training layout)."""
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Frozen per-token embeddings `[B, max_len, D]` of the prompts, padded (training layout)."""
    ids = tokenize_prompts(tokenizer, prompts).to(text_encoder.device)
    return text_encoder(input_ids=ids)[0]


def prepend_value_token(value_vec: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
    """`concat([v[:, None, :], E(prompt)], dim=1)`: `[B, D]` + `[B, L, D]` -> `[B, L+1, D]`; k value tokens
    `[B, k, D]` give `[B, L+k, D]`."""
    if (value_vec.ndim not in (2, 3) or prompt_embeds.ndim != 3 or value_vec.shape[0] != prompt_embeds.shape[0]
            or value_vec.shape[-1] != prompt_embeds.shape[-1]):
        raise ValueError(f"expected [B, D] (or [B, k, D]) and [B, L, D], got {tuple(value_vec.shape)} and "
                         f"{tuple(prompt_embeds.shape)}")
    tokens = value_vec[:, None, :] if value_vec.ndim == 2 else value_vec
    return torch.cat([tokens.to(prompt_embeds.dtype), prompt_embeds], dim=1)


def training_conditioning(
    text_encoder,
    value_encoder: ValueEncoder,
    tokenizer,
    prompts: Sequence[str],
    principle_texts: Sequence[str],
    prompt_embeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
    """`(cond_value [B, L+1, D], cond_plain [B, L, D], extra)` for one training batch.

    `cond_plain` comes from the frozen encoder (or precomputed `prompt_embeds` from the dataset) without autograd;
    `cond_value` carries gradient into the value encoder only. `extra` is None, or what `compute_denoising_errors`'
    `added_cond_kwargs` applies to the value passes only: for a value encoder with a time-embedding head,
    `"value_time_shift": [B, T]` (with gradient); for one whose token is additive, `"value_token_additive": k`.
    """
    device = next(value_encoder.parameters()).device
    if prompt_embeds is None:
        prompt_embeds = encode_prompts(text_encoder, tokenizer, prompts)
    cond_plain = prompt_embeds.to(device).detach()
    value_ids = tokenize_value_inputs(tokenizer, principle_texts, prompts).to(device)
    value_out = value_encoder(value_ids)
    extra: dict[str, Any] = {}
    if isinstance(value_out, tuple):
        value_out, extra["value_time_shift"] = value_out
    if additive_tokens(value_encoder):
        extra["value_token_additive"] = additive_tokens(value_encoder)
    return prepend_value_token(value_out, cond_plain), cond_plain, extra or None


@torch.no_grad()
def frozen_value_token(text_encoder, tokenizer, prompts: Sequence[str], principle_texts: Sequence[str],
                       value_tokens: int = 1) -> torch.Tensor:
    """The frozen text encoder's value token(s) of `"<principle>, <prompt>"` (`value_states`: `[B, D]`, or
    `[B, k, D]`) — what a fresh value encoder computes (where training starts)."""
    ids = tokenize_value_inputs(tokenizer, principle_texts, prompts).to(text_encoder.device)
    return value_states(text_encoder, ids, value_tokens)


def sdxl_training_conditioning(
    text_encoder,
    text_encoder_2,
    value_encoder: SDXLValueEncoder,
    tokenizer,
    prompts: Sequence[str],
    principle_texts: Sequence[str],
    resolution: int,
    tokenizer_2=None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`(cond_value [B, 78, D1+D2], cond_plain [B, 77, D1+D2], added_cond_kwargs)` for one SDXL training batch:
    the prompt padded to 77 through both frozen encoders (penultimate hidden states side by side), the value token
    prepended, and SDXL's added conditions — the prompt's pooled `text_embeds` and the `time_ids` of an uncropped
    `resolution`² image — shared by every pass; with a `shift_pooled` value encoder, `value_text_embeds` (the value
    text's pooled output, with gradient) replaces `text_embeds` in the value passes (`compute_denoising_errors`)."""
    device = next(value_encoder.parameters()).device
    ids = tokenize_prompts(tokenizer, prompts).to(device)
    # each encoder reads its own tokenizer's padding (SDXL's second tokenizer pads with another token)
    ids_2 = tokenize_prompts(tokenizer_2, prompts).to(device) if tokenizer_2 is not None else None
    with torch.no_grad():
        cond_plain, pooled = sdxl_encode(text_encoder, text_encoder_2, ids, ids_2)
    value_out = value_encoder(tokenize_value_inputs(tokenizer, principle_texts, prompts).to(device))
    value_vec, value_pooled = value_out if isinstance(value_out, tuple) else (value_out, None)
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=pooled.dtype,
                            device=device).repeat(len(prompts), 1)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    if value_pooled is not None:  # candidate (b): the value passes read the value text's pooled output instead
        added["value_text_embeds"] = value_pooled.to(pooled.dtype)
    return prepend_value_token(value_vec, cond_plain), cond_plain, added


@dataclass
class LiVOGeneration:
    """Images of a `LiVOPipeline.generate` call, flattened prompt-major, with how each was made."""

    images: list[Any]
    prompts: list[str]
    principles: list[str | None]
    seeds: list[int]
    used_value_token: list[bool]


def value_token_mask(num_images: int, dropout: float, seed: int, prompt_index: int = 0) -> list[bool]:
    """Which of `num_images` images use the value token under `inference_dropout`.

    The split is exact — `round(n·(1−p))` images get the token, as in the paper's 25-with / 25-without protocol —
    and the positions are a seeded permutation, so the same seed always gives the same mask.
    """
    if not 0.0 <= dropout <= 1.0:
        raise ConfigError(f"inference_dropout must be in [0, 1], got {dropout}")
    with_token = int(math.floor(num_images * (1.0 - dropout) + 0.5))
    order = np.random.default_rng([seed, prompt_index]).permutation(num_images)
    mask = np.zeros(num_images, dtype=bool)
    mask[order[:with_token]] = True
    return mask.tolist()


class LiVOPipeline:
    """Generates with an explicit principle per prompt on top of a diffusers `StableDiffusionPipeline` (or an
    SDXL-family `StableDiffusionXLPipeline`, with an `SDXLValueEncoder`).

    Images without a principle (or whose token was dropped by the inference dropout) go through the base pipeline
    exactly as a plain call would, so they are bit-identical to it for the same seeds and batch.
    """

    def __init__(self, base_pipeline, value_encoder: ValueEncoder | None = None):
        if value_encoder is not None:
            value_encoder.check_fits(base_pipeline.text_encoder, base_pipeline.tokenizer,
                                     text_encoder_2=getattr(base_pipeline, "text_encoder_2", None),
                                     unet=base_pipeline.unet)
        self.base = base_pipeline
        self.value_encoder = value_encoder
        if value_encoder is not None:
            value_encoder.eval()
            value_encoder.requires_grad_(False)
            value_encoder.to(device=base_pipeline.text_encoder.device, dtype=base_pipeline.text_encoder.dtype)

    @classmethod
    def from_pretrained(cls, base_source: str, value_encoder_path: str | Path | None, *, device: str | None = None,
                        dtype: torch.dtype | None = None) -> LiVOPipeline:
        from livo.presets import load_pipeline

        base = load_pipeline(base_source, device=device, dtype=dtype)
        encoder = ValueEncoder.from_pretrained(value_encoder_path) if value_encoder_path else None
        return cls(base, encoder)

    @property
    def device(self) -> torch.device:
        return self.base.text_encoder.device

    def _principle_text(self, principle: Any) -> str | None:
        if principle is None:
            return None
        return principle if isinstance(principle, str) else principle.text

    @torch.no_grad()
    def _value_embeddings(self, prompt: str, principle_text: str, negative_prompt: str | None):
        """`(prompt_embeds [1, n+1, D], negative_embeds [1, n+1, D])` for one prompt with the value token; SDXL adds
        `(pooled, negative_pooled)`: the prompt's own pooled output is kept (the token is the only change); an SD value
        encoder with a time-embedding head adds its `shift [1, T]`."""
        if is_sdxl(self.base):
            return self._sdxl_value_embeddings(prompt, principle_text, negative_prompt)
        prompt_embeds = self._unpadded_prompt_embeds(prompt)
        value_ids = tokenize_value_inputs(self.base.tokenizer, [principle_text], [prompt]).to(self.device)
        value_out = self.value_encoder(value_ids)
        value_vec, shift = value_out if isinstance(value_out, tuple) else (value_out, None)
        merged = prepend_value_token(value_vec, prompt_embeds)
        (negative,) = self._negative_embeds(negative_prompt, merged.shape[1])
        if shift is not None:  # the time-embedding head: applied to the conditional branch in `generate`
            return merged, negative, shift
        return merged, negative

    def _unpadded_prompt_embeds(self, prompt: str) -> torch.Tensor:
        """The SD prompt part of the value-token sequence: unpadded, truncated to leave room for the value tokens."""
        tokenizer = self.base.tokenizer
        room = getattr(self.value_encoder, "value_tokens", 1)
        ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length - room,
                        return_tensors="pt").input_ids.to(self.device)
        return self.base.text_encoder(input_ids=ids)[0]

    @torch.no_grad()
    def unpadded_embeddings(self, prompt: str, negative_prompt: str | None = None) -> tuple[torch.Tensor, ...]:
        """The encoding control: `prompt` encoded as the value-token path encodes it, without the token —
        `(prompt_embeds, negative_embeds)` (SDXL adds `(pooled, negative_pooled)`). The base model on these
        separates what the shorter, unpadded sequence does from what the token does (docs/evaluation.md)."""
        if is_sdxl(self.base):
            tokens, pooled = self._sdxl_tokens(prompt, None)
            negative, negative_pooled = self._negative_embeds(negative_prompt, tokens.shape[1])
            return tokens, negative, pooled, negative_pooled
        prompt_embeds = self._unpadded_prompt_embeds(prompt)
        return prompt_embeds, *self._negative_embeds(negative_prompt, prompt_embeds.shape[1])

    def _negative_embeds(self, negative_prompt: str | None, length: int) -> tuple[torch.Tensor, ...]:
        """The unconditional embedding at `length` tokens: `(negative,)`, SDXL `(negative, negative_pooled)` (zeros
        for an empty negative prompt where the pipeline's config asks for them)."""
        if is_sdxl(self.base):
            negative, negative_pooled = self._sdxl_tokens(negative_prompt or "", length)
            if not negative_prompt and getattr(self.base.config, "force_zeros_for_empty_prompt", False):
                negative, negative_pooled = torch.zeros_like(negative), torch.zeros_like(negative_pooled)
            return negative, negative_pooled
        ids = self.base.tokenizer(negative_prompt or "", padding="max_length", max_length=length, truncation=True,
                                  return_tensors="pt").input_ids.to(self.device)
        return (self.base.text_encoder(input_ids=ids)[0],)

    def _sdxl_tokens(self, text: str, length: int | None):
        """`sdxl_encode` of `text`, unpadded (`length` None, at most 76 tokens) or padded to `length`."""
        ids = []
        for tokenizer in (self.base.tokenizer, self.base.tokenizer_2):
            if length is None:
                ids.append(tokenizer(text, truncation=True, max_length=tokenizer.model_max_length - 1,
                                     return_tensors="pt").input_ids.to(self.device))
            else:
                ids.append(tokenizer(text, padding="max_length", max_length=length, truncation=True,
                                     return_tensors="pt").input_ids.to(self.device))
        return sdxl_encode(self.base.text_encoder, self.base.text_encoder_2, *ids)

    def _sdxl_value_embeddings(self, prompt: str, principle_text: str, negative_prompt: str | None):
        tokens, pooled = self._sdxl_tokens(prompt, None)
        value_ids = tokenize_value_inputs(self.base.tokenizer, [principle_text], [prompt]).to(self.device)
        value_out = self.value_encoder(value_ids)
        if isinstance(value_out, tuple):  # candidate (b): the value text's pooled output replaces the prompt's
            value_out, pooled = value_out[0], value_out[1].to(pooled.dtype)
        merged = prepend_value_token(value_out, tokens)
        negative, negative_pooled = self._negative_embeds(negative_prompt, merged.shape[1])
        return merged, negative, pooled, negative_pooled

    def generate(
        self,
        prompts: str | Sequence[str],
        principles: Any = None,
        *,
        num_images_per_prompt: int = 1,
        seed: int = 0,
        seeds: Sequence[int] | None = None,
        inference_dropout: float | None = None,
        negative_prompt: str | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 8,
        progress: bool = False,
        unpadded: bool = False,
    ) -> LiVOGeneration:
        """Generate `num_images_per_prompt` images per prompt.

        `principles`: None, one principle (text or `Principle`) for every prompt, or one per prompt (None allowed).
        `inference_dropout`: share of images generated without the token; None = each `Principle`'s own
        `inference_dropout` (0 for plain texts). Image i of the flattened grid uses `seeds[i]`, else `seed + i`.
        `unpadded`: images without the token use the encoding control (`unpadded_embeddings`) instead of the base
        pipeline's padded encoding.
        """
        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompt_list:
            raise ConfigError("no prompts to generate")
        if principles is None or isinstance(principles, str) or hasattr(principles, "text"):
            per_prompt = [principles] * len(prompt_list)
        else:
            per_prompt = list(principles)
            if len(per_prompt) != len(prompt_list):
                raise ConfigError(f"{len(per_prompt)} principles given for {len(prompt_list)} prompts")
        if any(p is not None for p in per_prompt) and self.value_encoder is None:
            raise ConfigError("a principle was given but this pipeline has no value encoder; load one first")
        total = len(prompt_list) * num_images_per_prompt
        image_seeds = list(seeds) if seeds is not None else [seed + i for i in range(total)]
        if len(image_seeds) != total:
            raise ConfigError(f"{len(image_seeds)} seeds given for {total} images")

        jobs = []  # (flat index, prompt, principle text or None)
        for p_idx, (prompt, principle) in enumerate(zip(prompt_list, per_prompt, strict=True)):
            text = self._principle_text(principle)
            dropout = inference_dropout
            if dropout is None:
                dropout = float(getattr(principle, "inference_dropout", 0.0) or 0.0)
            mask = value_token_mask(num_images_per_prompt, dropout, seed, p_idx) if text else [False] * num_images_per_prompt
            for k in range(num_images_per_prompt):
                jobs.append((p_idx * num_images_per_prompt + k, prompt, text if mask[k] else None))

        self.base.set_progress_bar_config(disable=not progress)
        call_kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height,
                           width=width, output_type="pil")
        images: list[Any] = [None] * total
        plain = [j for j in jobs if j[2] is None and not unpadded]
        for start in range(0, len(plain), batch_size):
            chunk = plain[start:start + batch_size]
            out = self.base(
                prompt=[j[1] for j in chunk],
                negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
                generator=[torch.Generator("cpu").manual_seed(image_seeds[j[0]]) for j in chunk],
                **call_kwargs,
            )
            for j, image in zip(chunk, out.images, strict=True):
                images[j[0]] = image

        # Images with the token: batch those whose merged sequences have the same length (no padding is added).
        cache: dict[tuple[str, str], tuple[torch.Tensor, ...]] = {}
        by_length: dict[int, list[tuple[int, str, str]]] = {}
        # The encoding control's images (`unpadded`) go the same way, keyed with no principle and with no value hooks.
        for job in (j for j in jobs if j[2] is not None or unpadded):
            key = (job[1], job[2])
            if key not in cache:
                cache[key] = (self._value_embeddings(job[1], job[2], negative_prompt) if job[2] is not None
                              else self.unpadded_embeddings(job[1], negative_prompt))
            by_length.setdefault((cache[key][0].shape[1], job[2] is None), []).append(job)
        for (_, control), group in by_length.items():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                embeds = [cache[(j[1], j[2])] for j in chunk]
                pooled = ({"pooled_prompt_embeds": torch.cat([e[2] for e in embeds]),
                           "negative_pooled_prompt_embeds": torch.cat([e[3] for e in embeds])}
                          if len(embeds[0]) == 4 else {})
                shift = torch.cat([e[2] for e in embeds]) if len(embeds[0]) == 3 else None
                additive = None if control else additive_tokens(self.value_encoder)
                with (shifted_time_embedding(self.base.unet, shift, guided=True),
                      additive_value_attention(self.base.unet, additive, rows=len(chunk))):
                    out = self.base(
                        prompt_embeds=torch.cat([e[0] for e in embeds]),
                        negative_prompt_embeds=torch.cat([e[1] for e in embeds]),
                        generator=[torch.Generator("cpu").manual_seed(image_seeds[j[0]]) for j in chunk],
                        **pooled,
                        **call_kwargs,
                    )
                for j, image in zip(chunk, out.images, strict=True):
                    images[j[0]] = image

        return LiVOGeneration(
            images=images,
            prompts=[j[1] for j in jobs],
            principles=[self._principle_text(per_prompt[j[0] // num_images_per_prompt]) for j in jobs],
            seeds=image_seeds,
            used_value_token=[j[2] is not None for j in jobs],
        )
