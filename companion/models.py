"""Encoder and decoder blocks and the models built from them, plus `build_model` and `count_parameters`.

Chapter 5 (assembling the transformer) explains them; every other chapter uses them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .attention import Dropout, KVCacheLayer, MultiHeadAttention, padding_mask
from .config import TransformerConfig
from .device import check_values
from .layers import ACTIVATIONS, GATED, FeedForward, LayerNorm, SwiGLU, make_norm, residual
from .positions import LearnedPositions, RotaryEmbedding, SinusoidalPositions
from .validation import token_ids, whole_number


def check_start_pos(start_pos) -> None:
    whole_number(
        "start_pos",
        start_pos,
        0,
        note="the position of the first token given; with caches, the number of positions already cached",
    )


def check_ids(ids: Tensor, config: TransformerConfig, name: str = "ids", start_pos: int = 0) -> None:
    """Raise a clear error for token ids the model cannot take: their kind and shape, their positions
    against the context, and (in eager mode, see `device.check_values`) their values against the
    vocabulary."""
    token_ids(name, ids, config.vocab_size, read_values=False)
    check_start_pos(start_pos)
    if start_pos + ids.shape[1] > config.context_length:
        raise ValueError(
            f"{name} has shape {tuple(ids.shape)}"
            + (f" starting at position {start_pos}" if start_pos else "")
            + f" but the model's context is {config.context_length} positions;"
            " truncate the sequence or use a config with a longer context_length"
        )
    if check_values():  # compiled, or decoding its own tokens: reading values would sync and break graphs
        token_ids(name, ids, config.vocab_size)


def check_caches(caches, layers: int, start_pos: int, name: str = "caches") -> None:
    """Caches must hold one layer each, and exactly the start_pos positions that come before the new tokens."""
    if caches is None:
        return
    if (
        isinstance(caches, (str, bytes))
        or not hasattr(caches, "__len__")
        or not hasattr(caches, "__getitem__")
    ):
        raise TypeError(
            f"{name} must be a list of per-layer caches (see new_caches), got {type(caches).__name__}"
        )
    if len(caches) != layers:
        raise ValueError(
            f"{name} has {len(caches)} layers but the model has {layers}; make them with new_caches(config, ...)"
        )
    for i, cache in enumerate(caches):
        if len(cache) != start_pos:
            raise ValueError(
                f"start_pos={start_pos} but {name}[{i}] already holds {len(cache)} positions; start_pos must be "
                f"the number of positions already cached ({len(cache)}), or use fresh caches"
            )


class Embeddings(nn.Module):
    """Token lookup, plus positions (added here unless rotary), segments, optional norm, dropout."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.positions: nn.Module | None = {
            "sinusoidal": lambda: SinusoidalPositions(config.context_length, config.d_model),
            "learned": lambda: LearnedPositions(config.context_length, config.d_model),
        }.get(config.positional, lambda: None)()
        self.segments = (
            nn.Embedding(config.segment_vocab_size, config.d_model) if config.segment_vocab_size else None
        )
        self.norm = LayerNorm(config.d_model, config.layer_norm_eps) if config.embedding_norm else None
        self.dropout = Dropout(config.dropout)
        self.scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0
        # Small embeddings (std d_model^-1/2, as in Vaswani et al.'s code): a tied output head then
        # starts with logits of variance ~1 instead of ~d_model, and scale_embeddings=True brings
        # the token vectors back to unit variance on the way in.
        for table in (self.tokens, getattr(self.positions, "embedding", None), self.segments):
            if table is not None:
                nn.init.normal_(table.weight, std=config.d_model**-0.5)

    def forward(self, ids: Tensor, positions: Tensor, segments: Tensor | None = None) -> Tensor:
        x = self.tokens(ids) * self.scale
        if self.positions is not None:
            x = x + self.positions(positions)
        if self.segments is not None:
            x = x + self.segments(torch.zeros_like(ids) if segments is None else segments)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


def _attention(config: TransformerConfig) -> MultiHeadAttention:
    return MultiHeadAttention(
        config.d_model,
        config.heads,
        bias=config.bias,
        dropout=config.attention_dropout,
        kv_heads=config.n_kv_heads,
        qk_norm=config.qk_norm,
        eps=config.layer_norm_eps,
        fused=config.attention_path == "fused",
    )


def _feed_forward(config: TransformerConfig) -> nn.Module:
    # No dropout inside the block (none in the paper, BERT or GPT-2): its output is dropped by the block.
    if config.activation in GATED:
        return SwiGLU(config.d_model, config.d_ff, 0.0, config.bias)
    return FeedForward(config.d_model, config.d_ff, config.activation, dropout=0.0, bias=config.bias)


def _norm(config: TransformerConfig) -> nn.Module:
    """The norm of one sub-layer: LayerNorm or RMSNorm, or nothing at all for norm="none"."""
    return (
        nn.Identity()
        if config.norm == "none"
        else make_norm(config.norm_type, config.d_model, config.layer_norm_eps)
    )


class _Block(nn.Module):
    """What every block shares: how a sub-layer joins the residual stream (chapter 4).

    Each sub-layer has its norm beside it (`attention` and `attention_norm`, ...), placed where
    config.norm says (`layers.residual`), and residual dropout on its output, before the add
    (config.dropout). `skip = False` removes the "x +" so chapter 4 can measure what it does.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm_placement = config.norm
        self.skip = True
        self.dropout = Dropout(config.dropout)

    def add(self, x: Tensor, norm: nn.Module, sublayer: nn.Module, *args, **kwargs) -> Tensor:
        """x with one sub-layer added: x + dropout(sublayer(norm(x))) for pre-norm,
        norm(x + dropout(sublayer(x))) for post-norm; args go to the sub-layer after its input."""
        return residual(
            x, lambda h: self.dropout(sublayer(h, *args, **kwargs)), norm, self.norm_placement, skip=self.skip
        )


class EncoderBlock(_Block):
    """Self-attention over all positions, then the feed-forward block."""

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        self.attention, self.attention_norm = _attention(config), _norm(config)
        self.feed_forward, self.feed_forward_norm = _feed_forward(config), _norm(config)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        padding: Tensor | None = None,
        rotary=None,
        positions: Tensor | None = None,
    ) -> Tensor:
        x = self.add(
            x,
            self.attention_norm,
            self.attention,
            mask=mask,
            padding=padding,
            rotary=rotary,
            positions=positions,
        )
        return self.add(x, self.feed_forward_norm, self.feed_forward)


class DecoderBlock(_Block):
    """Masked self-attention, then (if `cross`) attention over the encoder output, then feed-forward."""

    def __init__(self, config: TransformerConfig, cross: bool):
        super().__init__(config)
        self.attention, self.attention_norm = _attention(config), _norm(config)
        if cross:
            self.cross_attention, self.cross_attention_norm = _attention(config), _norm(config)
        else:
            self.cross_attention = self.cross_attention_norm = None
        self.feed_forward, self.feed_forward_norm = _feed_forward(config), _norm(config)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        padding: Tensor | None = None,
        causal: bool = True,
        rotary=None,
        positions: Tensor | None = None,
        cache: KVCacheLayer | None = None,
        cross_cache: KVCacheLayer | None = None,
    ) -> Tensor:
        x = self.add(
            x,
            self.attention_norm,
            self.attention,
            mask=mask,
            padding=padding,
            causal=causal,
            rotary=rotary,
            positions=positions,
            cache=cache,
        )
        if self.cross_attention is not None:
            if memory is None:
                raise ValueError("this decoder block has cross-attention; pass memory (the encoder output)")
            x = self.add(
                x,
                self.cross_attention_norm,
                self.cross_attention,
                memory,
                mask=memory_mask,
                cache=cross_cache,
            )
        return self.add(x, self.feed_forward_norm, self.feed_forward)


class Stack(nn.Module):
    """Blocks run in order and, for pre-norm, the final norm that pre-norm needs (LayerNorm or RMSNorm)."""

    def __init__(self, blocks: Sequence[nn.Module], config: TransformerConfig):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = (
            make_norm(config.norm_type, config.d_model, config.layer_norm_eps)
            if config.norm == "pre"
            else nn.Identity()
        )

    def forward(
        self,
        x: Tensor,
        *,
        caches: Sequence[KVCacheLayer] | None = None,
        cross_caches: Sequence[KVCacheLayer] | None = None,
        **kwargs,
    ) -> Tensor:
        """x through every block (kwargs go to each; caches[i] and cross_caches[i] to block i), then the
        final norm."""
        for i, block in enumerate(self.blocks):
            if caches is not None:
                kwargs["cache"] = caches[i]
            if cross_caches is not None:
                kwargs["cross_cache"] = cross_caches[i]
            x = block(x, **kwargs)
        return self.final_norm(x)


def _rotary(config: TransformerConfig) -> RotaryEmbedding | None:
    return (
        RotaryEmbedding(config.d_head, config.context_length, config.rope_base)
        if config.positional == "rope"
        else None
    )


def _positions(ids: Tensor, start_pos: int) -> Tensor:
    return torch.arange(start_pos, start_pos + ids.shape[1], device=ids.device)


def _output_head(config: TransformerConfig, embedding: nn.Embedding, bias: bool = False) -> nn.Linear:
    """The linear map from d_model to vocabulary logits. Tied (config.tie_embeddings), its weight is the
    token embedding's Parameter itself, one tensor used twice; the layer is then made on the meta device,
    so that making it draws no random numbers for a weight it does not keep."""
    tied = config.tie_embeddings
    head = nn.Linear(config.d_model, config.vocab_size, bias=False, device="meta" if tied else None)
    if tied:
        head.weight = embedding.weight
    if bias:
        head.bias = nn.Parameter(torch.zeros(config.vocab_size, device=embedding.weight.device))
    return head


class DecoderLM(nn.Module):
    """Decoder-only language model (GPT): ids (batch, seq) -> next-token logits (batch, seq, vocab)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if config.kind != "decoder":
            raise ValueError(f"DecoderLM needs kind='decoder', got {config.kind!r}")
        self.config = config
        self.embed = Embeddings(config)
        self.rotary = _rotary(config)
        self.decoder = Stack([DecoderBlock(config, cross=False) for _ in range(config.layers)], config)
        self.head = _output_head(config, self.embed.tokens)

    def hidden_states(
        self,
        ids: Tensor,
        *,
        caches: Sequence[KVCacheLayer] | None = None,
        start_pos: int = 0,
        causal: bool = True,
        mask: Tensor | None = None,
        padding: Tensor | None = None,
    ) -> Tensor:
        """Final hidden states (batch, seq, d_model), before the vocabulary head; each position has
        seen only itself and earlier positions. A task head can sit on them (chapter 7).

        mask: (q_pos, k_pos), the same for every sequence (e.g. sliding_window_mask), or 4-D
        (batch, heads, q_pos, k_pos). padding: (batch, seq) bool, True at real tokens."""
        check_ids(ids, self.config, "ids", start_pos)
        check_caches(caches, len(self.decoder.blocks), start_pos)
        if caches is not None and padding is not None:
            raise ValueError(
                "padding cannot be combined with caches: the cached keys have no padding flags; "
                "decode without padding, or recompute without caches"
            )
        positions = _positions(ids, start_pos)
        return self.decoder(
            self.embed(ids, positions),
            caches=caches,
            mask=mask,
            padding=padding,
            causal=causal,
            rotary=self.rotary,
            positions=positions,
        )

    def forward(
        self,
        ids: Tensor,
        *,
        caches: Sequence[KVCacheLayer] | None = None,
        start_pos: int = 0,
        causal: bool = True,
        mask: Tensor | None = None,
        padding: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Next-token logits (batch, seq, vocab). caches/start_pos: decode incrementally (chapter 6).
        causal=False lets every position see the future, which turns the model into a denoiser
        rather than a generator (chapter 6). mask and padding: see `hidden_states`.
        last_only: logits for the last position only, (batch, 1, vocab): all that generation needs,
        without the vocabulary head's cost at every other position."""
        hidden = self.hidden_states(
            ids, caches=caches, start_pos=start_pos, causal=causal, mask=mask, padding=padding
        )
        return self.head(hidden[:, -1:] if last_only else hidden)


class EncoderLM(nn.Module):
    """Encoder-only model (BERT): ids -> hidden states, or MLM logits, or class logits (task_head)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if config.kind != "encoder":
            raise ValueError(f"EncoderLM needs kind='encoder', got {config.kind!r}")
        self.config = config
        self.embed = Embeddings(config)
        self.rotary = _rotary(config)
        self.encoder = Stack([EncoderBlock(config) for _ in range(config.layers)], config)
        d = config.d_model
        self.pooler = nn.Sequential(nn.Linear(d, d), nn.Tanh()) if config.pooler else None
        if config.task_head == "mlm":
            # BERT's MLM head: a transform (dense + activation + LayerNorm), then the vocabulary
            # projection (tied to the token embedding) with a bias of its own.
            act = ACTIVATIONS[config.activation]()
            self.mlm_transform = nn.Sequential(nn.Linear(d, d), act, LayerNorm(d, config.layer_norm_eps))
            self.mlm_head = _output_head(config, self.embed.tokens, bias=True)
        elif config.task_head == "classify":
            self.classifier = nn.Sequential(Dropout(config.dropout), nn.Linear(d, config.num_labels))

    def hidden_states(
        self,
        ids: Tensor,
        segments: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        padding: Tensor | None = None,
    ) -> Tensor:
        """Hidden states (batch, seq, d_model).

        padding: (batch, seq) bool, True at real tokens; by default the tokens equal to config.pad_id
        are hidden from attention. mask: (q_pos, k_pos), the same for every sequence, or 4-D
        (batch, heads, q_pos, k_pos); it is combined with the padding."""
        check_ids(ids, self.config)
        self._check_segments(ids, segments)
        if padding is None and self.config.pad_id is not None:
            padding = ids != self.config.pad_id
        positions = _positions(ids, 0)
        return self.encoder(
            self.embed(ids, positions, segments),
            mask=mask,
            padding=padding,
            rotary=self.rotary,
            positions=positions,
        )

    def _check_segments(self, ids: Tensor, segments: Tensor | None) -> None:
        if segments is None:
            return
        if self.config.segment_vocab_size == 0:
            raise ValueError(
                "segments were given but this config has segment_vocab_size=0, so they would be ignored; "
                "use a config with segment_vocab_size >= 2 (BERT's sentence A/B)"
            )
        if (
            not isinstance(segments, Tensor)
            or segments.dtype.is_floating_point
            or segments.dtype == torch.bool
        ):
            raise TypeError(
                f"segments must be a tensor of integer segment ids like ids, got {segments!r:.80}"
            )
        if segments.shape != ids.shape:
            raise ValueError(
                f"segments has shape {tuple(segments.shape)}; it must match ids, {tuple(ids.shape)}"
            )
        if not check_values():
            return
        low, high = int(segments.min()), int(segments.max())
        if low < 0 or high >= self.config.segment_vocab_size:
            raise ValueError(
                f"segments holds ids in [{low}, {high}] but segment_vocab_size={self.config.segment_vocab_size} "
                f"allows [0, {self.config.segment_vocab_size - 1}]"
            )

    def pool(self, hidden: Tensor) -> Tensor:
        """One vector per sequence: the first token's state, through the pooler if there is one."""
        first = hidden[:, 0]
        return self.pooler(first) if self.pooler is not None else first

    def forward(
        self,
        ids: Tensor,
        segments: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        padding: Tensor | None = None,
    ) -> Tensor:
        hidden = self.hidden_states(ids, segments, mask, padding=padding)
        if self.config.task_head == "mlm":
            return self.mlm_head(self.mlm_transform(hidden))
        if self.config.task_head == "classify":
            return self.classifier(self.pool(hidden))
        return hidden


class EncoderDecoder(nn.Module):
    """Vaswani et al. 2017: the encoder reads the source, the decoder writes the target.

    One embedding is shared by source, target and the output projection (tie_embeddings).
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if config.kind != "encoder-decoder":
            raise ValueError(f"EncoderDecoder needs kind='encoder-decoder', got {config.kind!r}")
        self.config = config
        self.embed = Embeddings(config)
        self.rotary = _rotary(config)
        self.encoder = Stack([EncoderBlock(config) for _ in range(config.layers)], config)
        self.decoder = Stack([DecoderBlock(config, cross=True) for _ in range(config.decoder_layers)], config)
        self.head = _output_head(config, self.embed.tokens)

    def source_mask(self, src_ids: Tensor) -> Tensor | None:
        return None if self.config.pad_id is None else padding_mask(src_ids, self.config.pad_id)

    def encode(self, src_ids: Tensor) -> Tensor:
        check_ids(src_ids, self.config, "src_ids")
        positions = _positions(src_ids, 0)
        return self.encoder(
            self.embed(src_ids, positions),
            mask=self.source_mask(src_ids),
            rotary=self.rotary,
            positions=positions,
        )

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        *,
        caches: Sequence[KVCacheLayer] | None = None,
        cross_caches: Sequence[KVCacheLayer] | None = None,
        start_pos: int = 0,
        last_only: bool = False,
    ) -> Tensor:
        """Next-token logits (batch, tgt_seq, vocab) for the target so far, given the encoder output;
        last_only: for the last position only, (batch, 1, vocab), as generation needs."""
        check_ids(tgt_ids, self.config, "tgt_ids", start_pos)
        if (
            not isinstance(memory, Tensor)
            or memory.dim() != 3
            or memory.shape[0] != tgt_ids.shape[0]
            or memory.shape[-1] != self.config.d_model
        ):
            shown = tuple(memory.shape) if isinstance(memory, Tensor) else type(memory).__name__
            raise ValueError(
                f"memory={shown} must be the encoder output, (batch={tgt_ids.shape[0]}, src_seq, "
                f"d_model={self.config.d_model}); get it from model.encode(src_ids)"
            )
        check_caches(caches, len(self.decoder.blocks), start_pos)
        if cross_caches is not None and len(cross_caches) != len(self.decoder.blocks):
            raise ValueError(
                f"cross_caches has {len(cross_caches)} layers but the model has {len(self.decoder.blocks)}"
            )
        positions = _positions(tgt_ids, start_pos)
        x = self.decoder(
            self.embed(tgt_ids, positions),
            memory=memory,
            memory_mask=memory_mask,
            caches=caches,
            cross_caches=cross_caches,
            rotary=self.rotary,
            positions=positions,
        )
        return self.head(x[:, -1:] if last_only else x)

    def forward(self, src_ids: Tensor, tgt_ids: Tensor) -> Tensor:
        check_ids(src_ids, self.config, "src_ids")
        check_ids(tgt_ids, self.config, "tgt_ids")
        if src_ids.shape[0] != tgt_ids.shape[0]:
            raise ValueError(f"src_ids has batch {src_ids.shape[0]} but tgt_ids has batch {tgt_ids.shape[0]}")
        memory = self.encode(src_ids)
        return self.decode(tgt_ids, memory, self.source_mask(src_ids))


MODEL_CLASSES = {"decoder": DecoderLM, "encoder": EncoderLM, "encoder-decoder": EncoderDecoder}


def build_model(config: TransformerConfig) -> nn.Module:
    """The model a config describes: DecoderLM, EncoderLM or EncoderDecoder."""
    if not isinstance(config, TransformerConfig):
        raise TypeError(
            f"build_model takes a TransformerConfig (e.g. presets['tiny']), got {type(config).__name__}"
        )
    return MODEL_CLASSES[config.kind](config)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
