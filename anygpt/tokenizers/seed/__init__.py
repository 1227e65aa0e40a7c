"""The SEED-2 image tokenizer network (EVA ViT-g, causal Q-Former, VQ, code decoder); the codec is in
``anygpt.tokenizers.image``."""

from anygpt.tokenizers.seed.model import IGNORED_QUANTIZER_KEYS, SeedQuantizer, load_parts
from anygpt.tokenizers.seed.qformer import causal_mask
from anygpt.tokenizers.seed.vit import EvaViT

__all__ = ["IGNORED_QUANTIZER_KEYS", "EvaViT", "SeedQuantizer", "causal_mask", "load_parts"]
