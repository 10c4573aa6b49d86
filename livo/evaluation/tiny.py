"""Tiny random-weight models of the paper judges' classes (CLIPModel, LlavaForConditionalGeneration), built from
configs without a hub and saved in the `save_pretrained` layout the judges load: the `tiny` preset's counterpart for
judges, used by tests and benchmarks to run the real judge code paths. Their verdicts mean nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

JUDGE_WORDS = ("yes", "no", "does", "image", "contain", "content", "which", "generally", "answer", "user",
               "assistant", "<image>")


def _tokenizer():
    from livo.presets import TINY_WORDS, build_tiny_tokenizer

    return build_tiny_tokenizer(tuple(TINY_WORDS) + JUDGE_WORDS[:-1])


def _image_processor(side: int = 32):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def build_tiny_clip(directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tokenizer = _tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    CLIPProcessor(image_processor=_image_processor(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


def tiny_llava_config(tokenizer: Any, *, vision_layers: int = 2, vision_feature_layer: int = -2) -> Any:
    """A `LlavaConfig` of a few thousand parameters (32×32 images, 8×8 patches, a 2-layer Llama) for `tokenizer`,
    whose `<image>` token must exist."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                       num_hidden_layers=vision_layers, num_attention_heads=4, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
    )


def build_tiny_llava(directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = _tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.padding_side = "left"
    config = tiny_llava_config(tokenizer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    LlavaProcessor(image_processor=_image_processor(), tokenizer=tokenizer, patch_size=8,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   image_token="<image>").save_pretrained(directory)
    return directory
