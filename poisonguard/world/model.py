"""The embedded world's tiny LLaVA: a real `LlavaForConditionalGeneration` built from configs.

CLIP-style vision tower (48 px, patch 16 -> 9 image tokens), LLaVA's 2-layer GELU projector, and a Llama LM
deep enough (6 layers) that early "content" layers and late "decision" layers can differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from poisonguard.world.scenes import IMAGE_SIZE
from poisonguard.world.tokenizer import IMAGE, PATCH_SIZE


@dataclass(frozen=True)
class WorldModelConfig:
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    vision_mlp: int = 256
    lm_hidden: int = 128
    lm_layers: int = 6
    lm_heads: int = 4
    lm_mlp: int = 256
    max_positions: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(cfg: WorldModelConfig, tokenizer, seed: int = 0):
    """Random-init LLaVA for the world's tokenizer. Deterministic for a given seed."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vocab = len(tokenizer)
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_mlp, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=cfg.lm_hidden, intermediate_size=cfg.lm_mlp,
        num_hidden_layers=cfg.lm_layers, num_attention_heads=cfg.lm_heads, num_key_value_heads=cfg.lm_heads,
        max_position_embeddings=cfg.max_positions, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )
    n_tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=n_tokens,
        projector_hidden_act="gelu", tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
