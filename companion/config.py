"""One frozen `TransformerConfig` and the named presets used across the course.

Chapter 5 (assembling the transformer) explains every field; chapter 2 uses the tiny preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from .attention import ATTENTION_PATHS
from .layers import ACTIVATIONS, GATED, NORM_TYPES, NORMS
from .validation import expect, flag, fraction, is_number, is_whole, one_of, whole_number

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
    d_ff, the feed-forward hidden width, defaults to 4 * d_model, the ratio of the original paper; with
    activation="swiglu" to `swiglu_width(d_model)`, 8/3 d_model rounded up to a multiple of 64 (Llama's
    rule). decoder_layers (encoder-decoder only) defaults to `layers`. Both are filled in when the config
    is made, and `replace` works a default out again: tiny.replace(activation="swiglu").d_ff is 384.
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
    decoder_layers: int | None = None  # encoder-decoder only; None: as many as `layers`
    d_ff: int | None = None  # None: 4 * d_model, or swiglu_width(d_model) for activation="swiglu"
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
        for name, options, note in (
            ("kind", KINDS, ""),
            ("norm", NORMS, "'pre' is x + F(LN(x)), 'post' is LN(x + F(x))"),
            ("norm_type", NORM_TYPES, "'layer' is LayerNorm, 'rms' is RMSNorm (scale only, as in Llama)"),
            ("positional", POSITIONALS, ""),
            ("activation", tuple(ACTIVATIONS) + GATED, ""),
            ("task_head", TASK_HEADS, ""),
            ("attention_path", ATTENTION_PATHS, "both compute the same attention, to rounding"),
        ):
            one_of(f"TransformerConfig.{name}", getattr(self, name), options, note)
        for name in ("vocab_size", "context_length", "d_model", "heads", "layers", "num_labels"):
            whole_number(f"TransformerConfig.{name}", getattr(self, name))
        for name in ("d_ff", "decoder_layers", "kv_heads"):
            whole_number(f"TransformerConfig.{name}", getattr(self, name), or_none=True)
        whole_number(
            "TransformerConfig.segment_vocab_size",
            self.segment_vocab_size,
            0,
            note="0: no segment embeddings",
        )

        def need(ok: bool, name: str, expected: str) -> None:
            expect(ok, f"TransformerConfig.{name}", getattr(self, name), expected)

        need(
            self.d_model % self.heads == 0,
            "d_model",
            f"a multiple of heads={self.heads}: d_head = d_model / heads must be a whole number",
        )
        for name in ("dropout", "attention_dropout"):
            fraction(f"TransformerConfig.{name}", getattr(self, name))
        if self.kv_heads is not None:
            need(
                self.heads % self.kv_heads == 0,
                "kv_heads",
                f"a whole number that divides heads={self.heads}: each key/value head serves the same "
                "number of query heads (heads / kv_heads)",
            )
        for name in ("bias", "tie_embeddings", "scale_embeddings", "embedding_norm", "pooler", "qk_norm"):
            flag(f"TransformerConfig.{name}", getattr(self, name))
        need(
            is_number(self.layer_norm_eps) and self.layer_norm_eps > 0,
            "layer_norm_eps",
            "a small positive number such as 1e-5; LayerNorm divides by sqrt(variance + eps)",
        )
        need(
            is_number(self.rope_base) and self.rope_base > 1,
            "rope_base",
            "a number greater than 1, so that frequencies fall from pair to pair",
        )
        if self.positional == "sinusoidal":
            need(
                self.d_model % 2 == 0,
                "d_model",
                "an even number for sinusoidal positions: sine and cosine come in pairs",
            )
        if self.positional == "rope":
            expect(
                self.d_head % 2 == 0,
                "d_head",
                self.d_head,
                "an even number (d_model / heads): rotary positions rotate pairs of features",
            )
        if self.task_head != "none":
            need(
                self.kind == "encoder",
                "task_head",
                f"'none': a task head needs kind='encoder', got kind={self.kind!r}",
            )
        if self.activation in GATED and self.task_head == "mlm":
            need(
                False,
                "activation",
                "a plain activation such as 'gelu' with task_head='mlm': BERT's MLM "
                "transform has no gated form",
            )
        if self.pooler:
            need(
                self.kind == "encoder",
                "pooler",
                f"False unless kind='encoder' (BERT's pooler), got kind={self.kind!r}",
            )
        if self.pad_id is not None:
            need(
                is_whole(self.pad_id) and 0 <= self.pad_id < self.vocab_size,
                "pad_id",
                f"None or a whole number in the vocabulary [0, {self.vocab_size})",
            )
        # Fill in the sizes left to their defaults, so `config.d_ff` and `config.decoder_layers` always
        # hold the number the model is built with; `replace` works them out again unless it sets them.
        defaulted = frozenset(name for name in ("d_ff", "decoder_layers") if getattr(self, name) is None)
        object.__setattr__(self, "_defaulted", defaulted)
        if "d_ff" in defaulted:
            width = swiglu_width(self.d_model) if self.activation in GATED else 4 * self.d_model
            object.__setattr__(self, "d_ff", width)
        if "decoder_layers" in defaulted:
            object.__setattr__(self, "decoder_layers", self.layers)

    @property
    def d_head(self) -> int:
        return self.d_model // self.heads

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads per attention layer: kv_heads, or heads when it is None."""
        return self.kv_heads if self.kv_heads is not None else self.heads

    def replace(self, **changes) -> TransformerConfig:
        """A copy with some fields changed (validated again)."""
        names = [f.name for f in fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(
                f"TransformerConfig has no field {unknown[0]!r}; its fields are {', '.join(names)}"
            )
        return replace(self, **dict.fromkeys(self._defaulted) | changes)


class UnknownPresetError(KeyError):
    """A preset name that does not exist; the message lists the names that do."""

    def __str__(self) -> str:
        return str(self.args[0])


class Presets(dict):
    """The named configs; an unknown name is a KeyError that lists the valid ones."""

    def __missing__(self, name):
        raise UnknownPresetError(
            f"presets has no config named {name!r}; the presets are {', '.join(map(repr, self))}"
        )


def _presets() -> dict[str, TransformerConfig]:
    bert = dict(
        kind="encoder",
        vocab_size=30522,
        context_length=512,
        norm="post",
        positional="learned",
        activation="gelu",
        embedding_norm=True,
        segment_vocab_size=2,
        pooler=True,
        layer_norm_eps=1e-12,
        pad_id=0,
    )
    return {
        # Small enough to train on a laptop CPU in about a minute: bytes in, bytes out.
        "tiny": TransformerConfig(
            kind="decoder",
            vocab_size=256,
            context_length=256,
            d_model=128,
            heads=4,
            layers=4,
            norm="pre",
            positional="learned",
            activation="gelu",
        ),
        # Vaswani et al. 2017, base model: shared ~37k BPE vocabulary between source and target,
        # tied input, output and pre-softmax weights, post-LN, ReLU, sinusoidal positions.
        # Dropout P = 0.1 on each sub-layer's output before the add & norm and on the embedding
        # sums, none on the attention weights (tensor2tensor's v1 base sets it to 0) or in the FFN.
        "original-base": TransformerConfig(
            kind="encoder-decoder",
            vocab_size=37000,
            context_length=512,
            d_model=512,
            heads=8,
            layers=6,
            d_ff=2048,
            norm="post",
            positional="sinusoidal",
            activation="relu",
            dropout=0.1,
            attention_dropout=0.0,
            scale_embeddings=True,
            tie_embeddings=True,
            layer_norm_eps=1e-6,
        ),
        "bert-base": TransformerConfig(d_model=768, heads=12, layers=12, **bert),
        "bert-large": TransformerConfig(d_model=1024, heads=16, layers=24, **bert),
        # Radford et al. 2019, the 124M model: pre-LN, final LayerNorm, tied embeddings, and the tanh
        # approximation of GELU that its weights were trained with.
        "gpt2-small": TransformerConfig(
            kind="decoder",
            vocab_size=50257,
            context_length=1024,
            d_model=768,
            heads=12,
            layers=12,
            norm="pre",
            positional="learned",
            activation="gelu_tanh",
            tie_embeddings=True,
        ),
        # The tiny model with Llama's choices (Touvron et al. 2023): RMSNorm before each sub-layer and at
        # the end, SwiGLU (d_ff 384), rotary positions, no biases, grouped-query attention with two
        # key/value heads for four query heads, an untied output head.
        "llama-tiny": TransformerConfig(
            kind="decoder",
            vocab_size=256,
            context_length=256,
            d_model=128,
            heads=4,
            kv_heads=2,
            layers=4,
            norm="pre",
            norm_type="rms",
            positional="rope",
            activation="swiglu",
            bias=False,
            tie_embeddings=False,
            layer_norm_eps=1e-5,
        ),
    }


presets: dict[str, TransformerConfig] = Presets(_presets())
