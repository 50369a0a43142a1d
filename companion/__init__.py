"""Companion library of *Transformers, Piece by Piece*: a small einops transformer the chapters import.

from companion import presets, build_model, count_parameters
model = build_model(presets["tiny"])
"""

from .attention import (
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
    sliding_window_mask,
)
from .bpe import BPETokenizer
from .config import TransformerConfig, presets
from .decoding import KVCache, generate, kv_cache_bytes, new_caches
from .device import autocast, pick_device, seed_everything
from .models import DecoderLM, EncoderDecoder, EncoderLM, build_model, count_parameters
from .predecessors import RNNLM, BagOfTokensMLP, CausalCNN, WindowMLP
from .pretrained import load_pretrained, load_tokenizer
from .training import TrainConfig, train

__all__ = [
    "TransformerConfig",
    "presets",
    "build_model",
    "count_parameters",
    "DecoderLM",
    "EncoderLM",
    "EncoderDecoder",
    "MultiHeadAttention",
    "scaled_dot_product_attention",
    "causal_mask",
    "padding_mask",
    "sliding_window_mask",
    "pick_device",
    "autocast",
    "seed_everything",
    "generate",
    "KVCache",
    "new_caches",
    "kv_cache_bytes",
    "train",
    "TrainConfig",
    "load_pretrained",
    "load_tokenizer",
    "BPETokenizer",
    "WindowMLP",
    "BagOfTokensMLP",
    "CausalCNN",
    "RNNLM",
]
__version__ = "0.1.0"
