"""One frozen `TransformerConfig` and the named presets used across the course.

Chapter 5 (assembling the transformer) explains every field; chapter 2 uses the tiny preset.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .layers import ACTIVATIONS, NORMS

KINDS = ("decoder", "encoder", "encoder-decoder")
POSITIONALS = ("sinusoidal", "learned", "rope", "none")
TASK_HEADS = ("none", "mlm", "classify")


@dataclass(frozen=True)
class TransformerConfig:
    """Every size and choice of a model; `build_model(config)` turns it into an `nn.Module`.

    kind: "decoder" (GPT-style LM), "encoder" (BERT-style) or "encoder-decoder" (Vaswani et al. 2017).
    d_ff defaults to 4 * d_model, the ratio of the original paper.
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

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.kind in KINDS, f"kind={self.kind!r} is not one of {KINDS}")
        need(self.norm in NORMS, f"norm={self.norm!r} is not one of {NORMS}; 'pre' is x + F(LN(x)), 'post' is LN(x + F(x))")
        need(self.positional in POSITIONALS, f"positional={self.positional!r} is not one of {POSITIONALS}")
        need(self.activation in ACTIVATIONS, f"activation={self.activation!r} is not one of {tuple(ACTIVATIONS)}")
        need(self.task_head in TASK_HEADS, f"task_head={self.task_head!r} is not one of {TASK_HEADS}")
        for name in ("vocab_size", "context_length", "d_model", "heads", "layers", "num_labels"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive whole number")
        for name in ("d_ff", "decoder_layers"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and value > 0), f"{name}={value!r} must be a positive whole number or None")
        need(self.segment_vocab_size >= 0, f"segment_vocab_size={self.segment_vocab_size} must be >= 0")
        need(
            self.d_model % self.heads == 0,
            f"d_model={self.d_model} is not divisible by heads={self.heads}; d_head = d_model / heads must be a whole number",
        )
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            need(0.0 <= value < 1.0, f"{name}={value} must be in [0, 1)")
        if self.positional == "rope":
            need(self.d_head % 2 == 0, f"rotary positions rotate pairs of features, so d_head={self.d_head} must be even")
        if self.task_head != "none":
            need(self.kind == "encoder", f"task_head={self.task_head!r} needs kind='encoder', got kind={self.kind!r}")
        if self.pad_id is not None:
            need(0 <= self.pad_id < self.vocab_size, f"pad_id={self.pad_id} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def d_head(self) -> int:
        return self.d_model // self.heads

    @property
    def ff_width(self) -> int:
        """The feed-forward hidden width, d_ff, with the default 4 * d_model filled in."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def n_decoder_layers(self) -> int:
        return self.decoder_layers if self.decoder_layers is not None else self.layers

    def replace(self, **changes) -> "TransformerConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


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
    }


presets: dict[str, TransformerConfig] = _presets()
