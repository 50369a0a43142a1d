"""One frozen `TransformerConfig` and the named presets used across the course.

Chapter 5 (assembling the transformer) explains every field; chapter 2 uses the tiny preset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from .attention import ATTENTION_PATHS
from .layers import ACTIVATIONS, GATED, NORM_TYPES, NORMS

KINDS = ("decoder", "encoder", "encoder-decoder")
POSITIONALS = ("sinusoidal", "learned", "rope", "none")
TASK_HEADS = ("none", "mlm", "classify")


def swiglu_width(d_model: int, multiple_of: int = 64) -> int:
    """SwiGLU's hidden width as Llama's code sets it: 2/3 of 4 d_model (so its three matrices hold about
    as many weights as a 4 d_model MLP's two), rounded up to a multiple of `multiple_of`.

    Llama uses multiple_of=256 (d_model=4096 gives 11008); the course's small models use 64, which
    keeps them near 8/3 d_model (d_model=128 gives 384, where 256 would give 512 = 4 d_model).
    """
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass(frozen=True)
class TransformerConfig:
    """Every size and choice of a model; `build_model(config)` turns it into an `nn.Module`.

    kind: "decoder" (GPT-style LM), "encoder" (BERT-style) or "encoder-decoder" (Vaswani et al. 2017).
    d_ff defaults to 4 * d_model, the ratio of the original paper; with activation="swiglu" it defaults
    to `swiglu_width(d_model)`, 8/3 d_model rounded up to a multiple of 64 (Llama's rule).
    norm is where each block's norm sits ("pre", "post", "none"); norm_type is which norm it is,
    "layer" (LayerNorm) or "rms" (RMSNorm), for every block norm and the final norm. layer_norm_eps is
    the eps of either kind. activation "swiglu" is the gated feed-forward block of Llama (`SwiGLU`).
    kv_heads: key/value heads (None: one per query head); fewer is grouped-query attention, 1 is
    multi-query attention. qk_norm: RMSNorm on each query and key head. bias: biases in every linear.
    """

    kind: str = "decoder"
    vocab_size: int = 256
    context_length: int = 256
    d_model: int = 128
    heads: int = 4
    layers: int = 4
    decoder_layers: int | None = None  # encoder-decoder only; defaults to `layers`
    d_ff: int | None = None
    norm: str = "pre"
    norm_type: str = "layer"
    positional: str = "learned"
    activation: str = "gelu"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model), as the original paper does
    embedding_norm: bool = False  # LayerNorm right after the embeddings, as BERT does
    segment_vocab_size: int = 0  # BERT's sentence A/B embeddings
    pooler: bool = False  # BERT's tanh pooler on the first token
    task_head: str = "none"  # encoder only: "mlm" or "classify"
    num_labels: int = 2
    layer_norm_eps: float = 1e-5
    rope_base: float = 10000.0
    pad_id: int | None = None
    kv_heads: int | None = None  # grouped-query attention; None: as many as heads
    qk_norm: bool = False
    attention_path: str = "fused"  # "fused": PyTorch's kernel; "einops": the readable path of chapter 2

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"TransformerConfig.{message}")

        def whole(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def choice(name: str, options, hint: str = "") -> None:
            value = getattr(self, name)
            need(isinstance(value, str) and value in options,
                 f"{name}={value!r} is not one of {tuple(options)}{hint}")

        choice("kind", KINDS)
        choice("norm", NORMS, "; 'pre' is x + F(LN(x)), 'post' is LN(x + F(x))")
        choice("norm_type", NORM_TYPES, "; 'layer' is LayerNorm, 'rms' is RMSNorm (scale only, as in Llama)")
        choice("positional", POSITIONALS)
        choice("activation", tuple(ACTIVATIONS) + GATED)
        choice("task_head", TASK_HEADS)
        choice("attention_path", ATTENTION_PATHS, "; both compute the same attention, to rounding")
        for name in ("vocab_size", "context_length", "d_model", "heads", "layers", "num_labels"):
            value = getattr(self, name)
            need(whole(value) and value > 0, f"{name}={value!r} must be a positive whole number")
        for name in ("d_ff", "decoder_layers", "kv_heads"):
            value = getattr(self, name)
            need(value is None or (whole(value) and value > 0), f"{name}={value!r} must be a positive whole number or None")
        need(whole(self.segment_vocab_size) and self.segment_vocab_size >= 0,
             f"segment_vocab_size={self.segment_vocab_size!r} must be a whole number >= 0 (0: no segment embeddings)")
        need(
            self.d_model % self.heads == 0,
            f"d_model={self.d_model} is not divisible by heads={self.heads}; d_head = d_model / heads must be a whole number",
        )
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            need(number(value) and 0.0 <= value < 1.0, f"{name}={value!r} must be a number in [0, 1)")
        if self.kv_heads is not None:
            need(self.heads % self.kv_heads == 0,
                 f"kv_heads={self.kv_heads} does not divide heads={self.heads}; each key/value head must serve "
                 "the same number of query heads (heads / kv_heads)")
        for name in ("bias", "tie_embeddings", "scale_embeddings", "embedding_norm", "pooler", "qk_norm"):
            value = getattr(self, name)
            need(isinstance(value, bool), f"{name}={value!r} must be True or False")
        need(number(self.layer_norm_eps) and self.layer_norm_eps > 0,
             f"layer_norm_eps={self.layer_norm_eps!r} must be a small positive number such as 1e-5; "
             "LayerNorm divides by sqrt(variance + eps)")
        need(number(self.rope_base) and self.rope_base > 1,
             f"rope_base={self.rope_base!r} must be a number greater than 1, so that frequencies fall from pair to pair")
        if self.positional == "sinusoidal":
            need(self.d_model % 2 == 0, f"d_model={self.d_model} must be even for sinusoidal positions: sine and cosine come in pairs")
        if self.positional == "rope":
            need(self.d_head % 2 == 0, f"d_head={self.d_head} must be even: rotary positions rotate pairs of features")
        if self.task_head != "none":
            need(self.kind == "encoder", f"task_head={self.task_head!r} needs kind='encoder', got kind={self.kind!r}")
        if self.activation in GATED and self.task_head == "mlm":
            need(False, f"activation={self.activation!r} cannot go with task_head='mlm': BERT's MLM transform "
                        "needs a plain activation such as 'gelu'")
        if self.pooler:
            need(self.kind == "encoder", f"pooler=True needs kind='encoder' (BERT's pooler), got kind={self.kind!r}")
        if self.pad_id is not None:
            need(whole(self.pad_id) and 0 <= self.pad_id < self.vocab_size,
                 f"pad_id={self.pad_id!r} must be None or a whole number in the vocabulary [0, {self.vocab_size})")

    @property
    def d_head(self) -> int:
        return self.d_model // self.heads

    @property
    def ff_width(self) -> int:
        """The feed-forward hidden width, d_ff, with the default filled in: 4 * d_model, or for
        activation="swiglu" `swiglu_width(d_model)`, about 8/3 d_model."""
        if self.d_ff is not None:
            return self.d_ff
        return swiglu_width(self.d_model) if self.activation in GATED else 4 * self.d_model

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads per attention layer: kv_heads, or heads when it is None."""
        return self.kv_heads if self.kv_heads is not None else self.heads

    @property
    def n_decoder_layers(self) -> int:
        return self.decoder_layers if self.decoder_layers is not None else self.layers

    def replace(self, **changes) -> "TransformerConfig":
        """A copy with some fields changed (validated again)."""
        names = [f.name for f in fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(f"TransformerConfig has no field {unknown[0]!r}; its fields are {', '.join(names)}")
        return replace(self, **changes)


class UnknownPresetError(KeyError):
    """A preset name that does not exist; the message lists the names that do."""

    def __str__(self) -> str:
        return str(self.args[0])


class Presets(dict):
    """The named configs; an unknown name is a KeyError that lists the valid ones."""

    def __missing__(self, name):
        raise UnknownPresetError(f"presets has no config named {name!r}; the presets are {', '.join(map(repr, self))}")


def _presets() -> dict[str, TransformerConfig]:
    bert = dict(
        kind="encoder", vocab_size=30522, context_length=512, norm="post", positional="learned",
        activation="gelu", embedding_norm=True, segment_vocab_size=2, pooler=True, layer_norm_eps=1e-12,
        pad_id=0,
    )
    return {
        # Small enough to train on a laptop CPU in about a minute: bytes in, bytes out.
        "tiny": TransformerConfig(
            kind="decoder", vocab_size=256, context_length=256, d_model=128, heads=4, layers=4, norm="pre",
            positional="learned", activation="gelu",
        ),
        # Vaswani et al. 2017, base model: shared ~37k BPE vocabulary between source and target,
        # tied input, output and pre-softmax weights, post-LN, ReLU, sinusoidal positions.
        # Dropout P = 0.1 on each sub-layer's output before the add & norm and on the embedding
        # sums, none on the attention weights (tensor2tensor's v1 base sets it to 0) or in the FFN.
        "original-base": TransformerConfig(
            kind="encoder-decoder", vocab_size=37000, context_length=512, d_model=512, heads=8, layers=6,
            d_ff=2048, norm="post", positional="sinusoidal", activation="relu", dropout=0.1,
            attention_dropout=0.0, scale_embeddings=True, tie_embeddings=True, layer_norm_eps=1e-6,
        ),
        "bert-base": TransformerConfig(d_model=768, heads=12, layers=12, **bert),
        "bert-large": TransformerConfig(d_model=1024, heads=16, layers=24, **bert),
        # Radford et al. 2019, the 124M model: pre-LN, final LayerNorm, tied embeddings, and the tanh
        # approximation of GELU that its weights were trained with.
        "gpt2-small": TransformerConfig(
            kind="decoder", vocab_size=50257, context_length=1024, d_model=768, heads=12, layers=12,
            norm="pre", positional="learned", activation="gelu_tanh", tie_embeddings=True,
        ),
        # The tiny model with Llama's choices (Touvron et al. 2023): RMSNorm before each sub-layer and at
        # the end, SwiGLU (d_ff 384), rotary positions, no biases, grouped-query attention with two
        # key/value heads for four query heads, an untied output head.
        "llama-tiny": TransformerConfig(
            kind="decoder", vocab_size=256, context_length=256, d_model=128, heads=4, kv_heads=2, layers=4,
            norm="pre", norm_type="rms", positional="rope", activation="swiglu", bias=False,
            tie_embeddings=False, layer_norm_eps=1e-5,
        ),
    }


presets: dict[str, TransformerConfig] = Presets(_presets())
