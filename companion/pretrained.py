"""Checkpoints in Hugging Face layout loaded into the companion: GPT-2 and Llama as a `DecoderLM`, BERT
as an `EncoderLM`, and their tokenizers through `tokenizers`. Chapter 5 shows GPT-2 and BERT equal to
`transformers`, chapter 8 (modern decoders) Llama.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn

from .config import TransformerConfig, swiglu_width
from .models import _rotary, build_model

# What `download=True` fetches: config, tokenizer and safetensors weights, not the TF/Flax/ONNX copies.
HUB_PATTERNS = ["*.json", "*.safetensors"]


# ---------------------------------------------------------------- where the files are


def resolve(source: str | Path, *, download: bool = False, cache_dir: str | Path | None = None) -> Path:
    """The directory holding a checkpoint: `source` itself, or a hub name ("gpt2", "bert-base-uncased")
    found in the local Hugging Face cache. Fetched from the hub only when `download` is True."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(
            f"source={str(source)!r} is a file; give the directory that holds config.json and the weights"
        )
    from huggingface_hub import snapshot_download  # imported here: only hub names need it
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        found = snapshot_download(
            str(source), allow_patterns=HUB_PATTERNS, cache_dir=cache_dir, local_files_only=not download
        )
    except HFValidationError:
        raise FileNotFoundError(
            f"source={str(source)!r} is neither an existing directory nor a hub name such as 'gpt2'"
        ) from None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"source={str(source)!r} is not a directory and is not in the Hugging Face cache. Fetch it once "
            f"while online with load_pretrained({str(source)!r}, download=True), or "
            f"`hf download {source} config.json model.safetensors tokenizer.json`, or give a directory"
        ) from None
    return Path(found)


def read_weights(directory: Path) -> dict[str, Tensor]:
    """Every tensor of a checkpoint directory: model.safetensors (or its shards), else pytorch_model.bin."""
    from safetensors.torch import load_file

    if (directory / "model.safetensors").is_file():
        return load_file(directory / "model.safetensors")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weights = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            weights.update(load_file(directory / shard))
        return weights
    if (directory / "pytorch_model.bin").is_file():
        # weights_only: a pickle could run code; this reads tensors and nothing else.
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"{directory} holds no weights: expected model.safetensors, model.safetensors.index.json or "
        f"pytorch_model.bin; found {sorted(p.name for p in directory.iterdir())}"
    )


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no config.json; a checkpoint in Hugging Face layout needs one"
        )
    return json.loads(path.read_text())


# ---------------------------------------------------------------- configs

# Hugging Face activation names -> the companion's. gelu_new, gelu_fast and gelu_pytorch_tanh are
# three spellings of the same tanh approximation.
ACTIVATION_NAMES = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}


def _activation(hf: dict, key: str) -> str:
    name = hf.get(key, "gelu")
    if name not in ACTIVATION_NAMES:
        raise ValueError(f"config.json has {key}={name!r}; the companion knows {sorted(ACTIVATION_NAMES)}")
    return ACTIVATION_NAMES[name]


def _refuse(hf: dict, **unsupported) -> None:
    """Fail for settings that change what the model computes and that the companion does not have."""
    for key, value in unsupported.items():
        if key in hf and hf[key] != value:
            raise ValueError(f"config.json has {key}={hf[key]!r}; the companion supports only {value!r}")


def _d_ff(width: int | None, d_model: int) -> int | None:
    """None for the usual 4 * d_model, so a released model's config equals the companion's preset."""
    return None if width in (None, 4 * d_model) else width


def gpt2_config(hf: dict, weights: dict[str, Tensor]) -> TransformerConfig:
    """GPT-2 (Radford et al. 2019): pre-LN decoder, learned positions, tied head, tanh GELU."""
    _refuse(hf, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, add_cross_attention=False)
    return TransformerConfig(
        kind="decoder",
        vocab_size=hf["vocab_size"],
        context_length=hf["n_positions"],
        d_model=hf["n_embd"],
        heads=hf["n_head"],
        layers=hf["n_layer"],
        d_ff=_d_ff(hf.get("n_inner"), hf["n_embd"]),
        norm="pre",
        positional="learned",
        activation=_activation(hf, "activation_function"),
        dropout=hf.get("resid_pdrop", 0.0),
        attention_dropout=hf.get("attn_pdrop", 0.0),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
    )


def bert_config(hf: dict, weights: dict[str, Tensor]) -> TransformerConfig:
    """BERT (Devlin et al. 2019): post-LN encoder with segment embeddings and an embedding LayerNorm.
    The pooler and the masked-LM head are built when the checkpoint has their weights."""
    _refuse(hf, position_embedding_type="absolute", is_decoder=False, add_cross_attention=False)
    return TransformerConfig(
        kind="encoder",
        vocab_size=hf["vocab_size"],
        context_length=hf["max_position_embeddings"],
        d_model=hf["hidden_size"],
        heads=hf["num_attention_heads"],
        layers=hf["num_hidden_layers"],
        d_ff=_d_ff(hf["intermediate_size"], hf["hidden_size"]),
        norm="post",
        positional="learned",
        activation=_activation(hf, "hidden_act"),
        dropout=hf.get("hidden_dropout_prob", 0.0),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.0),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        embedding_norm=True,
        segment_vocab_size=hf.get("type_vocab_size", 2),
        pooler="pooler.dense.weight" in weights,
        task_head="mlm" if "cls.predictions.transform.dense.weight" in weights else "none",
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        pad_id=hf.get("pad_token_id"),
    )


def llama_config(hf: dict, weights: dict[str, Tensor]) -> TransformerConfig:
    """Llama (Touvron et al. 2023) and the many models in its layout: pre-RMSNorm decoder, SwiGLU, rotary
    positions, grouped-query attention, no biases, an untied head unless tie_word_embeddings."""
    _refuse(hf, hidden_act="silu", attention_bias=False, mlp_bias=False, pretraining_tp=1)
    d_model, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, d_model // heads):
        raise ValueError(
            f"config.json has head_dim={hf['head_dim']!r}; the companion needs head_dim = "
            f"hidden_size / num_attention_heads = {d_model // heads}"
        )
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(
            f"config.json has rope type {rope.get('rope_type', rope.get('type'))!r}; the companion "
            "has only the default rotary embedding (no scaling)"
        )
    return TransformerConfig(
        kind="decoder",
        vocab_size=hf["vocab_size"],
        context_length=hf["max_position_embeddings"],
        d_model=d_model,
        heads=heads,
        kv_heads=hf.get("num_key_value_heads") or heads,
        layers=hf["num_hidden_layers"],
        norm="pre",
        norm_type="rms",
        d_ff=None if hf["intermediate_size"] == swiglu_width(d_model) else hf["intermediate_size"],
        positional="rope",
        activation="swiglu",
        attention_dropout=hf.get("attention_dropout", 0.0),
        bias=False,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
    )


# ---------------------------------------------------------------- the name tables

Convert = Callable[[Tensor], Tensor]


def same(t: Tensor) -> Tensor:
    return t


def transposed(t: Tensor) -> Tensor:
    """GPT-2's Conv1D stores its weight as (in, out); nn.Linear stores (out, in)."""
    return t.T if t.dim() == 2 else t


def qkv(part: int) -> Convert:
    """GPT-2 keeps query, key and value side by side in one Conv1D (c_attn, out = 3 d_model)."""

    def take(t: Tensor) -> Tensor:
        return transposed(t.chunk(3, dim=-1)[part])

    take.__name__ = f"{'qkv'[part]}_third_of_c_attn"
    return take


def halves_to_pairs(d_head: int) -> Convert:
    """Hugging Face's Llama rotates feature i of each head with feature i + d_head/2 (it "rotates
    halves"); the companion's RoPE rotates adjacent pairs (2i, 2i+1). Reordering the rows of the query
    and key projections, the same way in every head, turns one convention into the other: q . k is
    unchanged by a permutation applied to both, and the values are not touched."""

    def reorder(t: Tensor) -> Tensor:
        return rearrange(t, "(heads two half) d_model -> (heads half two) d_model", two=2, half=d_head // 2)

    reorder.__name__ = "rotate_halves_to_pairs"
    return reorder


# (companion name, Hugging Face name, conversion). {i} runs over the layers, {p} over weight and bias.
GPT2_TABLE = [
    ("embed.tokens.weight", "wte.weight", same),
    ("embed.positions.embedding.weight", "wpe.weight", same),
    ("decoder.blocks.{i}.attention_norm.{p}", "h.{i}.ln_1.{p}", same),
    ("decoder.blocks.{i}.attention.to_q.{p}", "h.{i}.attn.c_attn.{p}", qkv(0)),
    ("decoder.blocks.{i}.attention.to_k.{p}", "h.{i}.attn.c_attn.{p}", qkv(1)),
    ("decoder.blocks.{i}.attention.to_v.{p}", "h.{i}.attn.c_attn.{p}", qkv(2)),
    ("decoder.blocks.{i}.attention.to_out.{p}", "h.{i}.attn.c_proj.{p}", transposed),
    ("decoder.blocks.{i}.feed_forward_norm.{p}", "h.{i}.ln_2.{p}", same),
    ("decoder.blocks.{i}.feed_forward.up.{p}", "h.{i}.mlp.c_fc.{p}", transposed),
    ("decoder.blocks.{i}.feed_forward.down.{p}", "h.{i}.mlp.c_proj.{p}", transposed),
    ("decoder.final_norm.{p}", "ln_f.{p}", same),
    ("head.weight", "lm_head.weight", same),  # only when the head is not tied
]

BERT_TABLE = [
    ("embed.tokens.weight", "embeddings.word_embeddings.weight", same),
    ("embed.positions.embedding.weight", "embeddings.position_embeddings.weight", same),
    ("embed.segments.weight", "embeddings.token_type_embeddings.weight", same),
    ("embed.norm.{p}", "embeddings.LayerNorm.{p}", same),
    ("encoder.blocks.{i}.attention.to_q.{p}", "encoder.layer.{i}.attention.self.query.{p}", same),
    ("encoder.blocks.{i}.attention.to_k.{p}", "encoder.layer.{i}.attention.self.key.{p}", same),
    ("encoder.blocks.{i}.attention.to_v.{p}", "encoder.layer.{i}.attention.self.value.{p}", same),
    ("encoder.blocks.{i}.attention.to_out.{p}", "encoder.layer.{i}.attention.output.dense.{p}", same),
    ("encoder.blocks.{i}.attention_norm.{p}", "encoder.layer.{i}.attention.output.LayerNorm.{p}", same),
    ("encoder.blocks.{i}.feed_forward.up.{p}", "encoder.layer.{i}.intermediate.dense.{p}", same),
    ("encoder.blocks.{i}.feed_forward.down.{p}", "encoder.layer.{i}.output.dense.{p}", same),
    ("encoder.blocks.{i}.feed_forward_norm.{p}", "encoder.layer.{i}.output.LayerNorm.{p}", same),
    ("pooler.0.{p}", "pooler.dense.{p}", same),
    ("mlm_transform.0.{p}", "cls.predictions.transform.dense.{p}", same),
    ("mlm_transform.2.{p}", "cls.predictions.transform.LayerNorm.{p}", same),
    ("mlm_head.bias", "cls.predictions.bias", same),
    ("mlm_head.weight", "cls.predictions.decoder.weight", same),  # only when the head is not tied
]


def llama_table(config: TransformerConfig) -> list:
    pairs = halves_to_pairs(config.d_head)
    return [
        ("embed.tokens.weight", "embed_tokens.weight", same),
        ("decoder.blocks.{i}.attention_norm.weight", "layers.{i}.input_layernorm.weight", same),
        ("decoder.blocks.{i}.attention.to_q.weight", "layers.{i}.self_attn.q_proj.weight", pairs),
        ("decoder.blocks.{i}.attention.to_k.weight", "layers.{i}.self_attn.k_proj.weight", pairs),
        ("decoder.blocks.{i}.attention.to_v.weight", "layers.{i}.self_attn.v_proj.weight", same),
        ("decoder.blocks.{i}.attention.to_out.weight", "layers.{i}.self_attn.o_proj.weight", same),
        ("decoder.blocks.{i}.feed_forward_norm.weight", "layers.{i}.post_attention_layernorm.weight", same),
        ("decoder.blocks.{i}.feed_forward.w1.weight", "layers.{i}.mlp.gate_proj.weight", same),
        ("decoder.blocks.{i}.feed_forward.w3.weight", "layers.{i}.mlp.up_proj.weight", same),
        ("decoder.blocks.{i}.feed_forward.w2.weight", "layers.{i}.mlp.down_proj.weight", same),
        ("decoder.final_norm.weight", "norm.weight", same),
        ("head.weight", "lm_head.weight", same),  # only when the head is not tied
    ]


# Tensors a checkpoint may hold that the companion has no place for, on purpose.
GPT2_UNUSED = {
    "h.{i}.attn.bias": "the causal mask, stored as a buffer by older checkpoints",
    "h.{i}.attn.masked_bias": "the mask fill value, stored as a buffer by older checkpoints",
}
BERT_UNUSED = {
    "embeddings.position_ids": "the positions 0..n-1, stored as a buffer",
    "cls.seq_relationship.{p}": "the next-sentence head of pre-training; the companion has none",
}

LLAMA_UNUSED = {
    "layers.{i}.self_attn.rotary_emb.inv_freq": "the rotary frequencies, stored as a buffer by older checkpoints",
}

# Tied copies: kept in some checkpoints, they must equal the tensor the companion shares.
GPT2_TIED = {"lm_head.weight": "wte.weight"}
BERT_TIED = {
    "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
LLAMA_TIED = {"lm_head.weight": "embed_tokens.weight"}

# model_type -> (prefix some checkpoints put before every name, config reader, table (or a function
# config -> table), unused, tied)
FAMILIES = {
    "gpt2": ("transformer.", gpt2_config, GPT2_TABLE, GPT2_UNUSED, GPT2_TIED),
    "bert": ("bert.", bert_config, BERT_TABLE, BERT_UNUSED, BERT_TIED),
    "llama": ("model.", llama_config, llama_table, LLAMA_UNUSED, LLAMA_TIED),
}


def _expand(name: str, layers: int) -> list[str]:
    names = [name.replace("{i}", str(i)) for i in range(layers)] if "{i}" in name else [name]
    return [n.replace("{p}", p) for n in names for p in ("weight", "bias")] if "{p}" in name else names


def _canonical(name: str, prefix: str) -> str:
    """One spelling for every name: without the task model's prefix, and LayerNorm's gamma and beta (as
    in the TensorFlow-converted BERT checkpoints) called weight and bias."""
    name = name.removeprefix(prefix)
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def tied_names(model: nn.Module) -> dict[str, str]:
    """Each name of a shared Parameter after its first, with that first name: a tied head's weight is
    the token embedding's (`{"head.weight": "embed.tokens.weight"}`)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        aliases.update({name: first[id(parameter)]} if id(parameter) in first else {})
        first.setdefault(id(parameter), name)
    return aliases


def map_weights(
    weights: dict[str, Tensor], model: nn.Module, model_type: str, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """The model's state dict, filled from a checkpoint's tensors through the family's table.

    Raises, naming the tensor, for a missing tensor, a leftover one, a shape that does not fit,
    and a tied copy that differs from the tensor it should equal.
    """
    _, _, table, unused, tied = FAMILIES[model_type]
    table = table(model.config) if callable(table) else table
    layers = model.config.layers
    expected = model.state_dict()
    aliases = tied_names(model)
    state: dict[str, Tensor] = {}
    used: set[str] = set()
    for ours, theirs, convert in table:
        for ours_name, their_name in zip(_expand(ours, layers), _expand(theirs, layers)):
            if ours_name not in expected or ours_name in aliases:
                continue  # a part this config does not build (an untied head, a pooler), or a tied one
            if their_name not in weights:
                raise KeyError(
                    f"the checkpoint has no tensor {their_name!r}, which the companion's {ours_name!r} needs"
                )
            tensor = convert(weights[their_name])
            if tuple(tensor.shape) != tuple(expected[ours_name].shape):
                raise ValueError(
                    f"tensor {their_name!r} has shape {tuple(weights[their_name].shape)}, which does not fit the "
                    f"companion's {ours_name!r} of shape {tuple(expected[ours_name].shape)}; does config.json "
                    "belong to these weights?"
                )
            state[ours_name] = tensor.to(dtype).contiguous()
            used.add(their_name)
    for copy, original in tied.items():
        if copy in weights and copy not in used and original in used:
            if not torch.equal(weights[copy], weights[original]):
                raise ValueError(f"tensor {copy!r} should be a tied copy of {original!r} but differs from it")
            used.add(copy)
    for alias, original in aliases.items():
        # One Parameter for both names, so that loading with assign=True keeps the two modules sharing it.
        state[original] = state[alias] = nn.Parameter(state[original])
    used |= {name for pattern in unused for name in _expand(pattern, layers)}
    leftover = sorted(set(weights) - used)
    if leftover:
        raise ValueError(
            f"the checkpoint holds {len(leftover)} tensor(s) the companion's {model_type} has no place for: "
            f"{leftover[:5]}"
        )
    return state


# ---------------------------------------------------------------- the public entry points


def load_pretrained(
    source: str | Path,
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A GPT-2 or Llama (`DecoderLM`) or BERT (`EncoderLM`, with its pooler and MLM head) checkpoint as a
    companion model, in eval mode, its config read from config.json.

    source: a directory in Hugging Face layout (config.json plus model.safetensors or pytorch_model.bin),
    or a hub name such as "gpt2", "gpt2-medium", "bert-base-uncased" or a Llama-layout model
    (`LlamaForCausalLM`, model_type "llama") found in the local cache;
    download=True fetches a missing one from the hub.
    """
    directory = resolve(source, download=download, cache_dir=cache_dir)
    hf = read_config(directory)
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"config.json has model_type={model_type!r}; the companion loads {sorted(FAMILIES)}")
    prefix, read, *_ = FAMILIES[model_type]
    weights = {_canonical(name, prefix): t for name, t in read_weights(directory).items()}
    config = read(hf, weights)
    with torch.device("meta"):  # shapes only: the weights arrive next, so skip the random initialisation
        model = build_model(config)
    model.load_state_dict(map_weights(weights, model, model_type, dtype), strict=True, assign=True)
    if getattr(model, "rotary", None) is not None:
        # Its cos/sin tables are computed, not stored: build them for real, outside the meta device.
        model.rotary = _rotary(config)
    return model.eval()


class PretrainedTokenizer:
    """A `tokenizers.Tokenizer` (GPT-2's byte-level BPE, BERT's WordPiece) with the interface of the
    companion's own tokenizers: encode, decode, vocab_size."""

    def __init__(self, backend):
        self.backend = backend

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    @property
    def special_tokens(self) -> dict[str, int]:
        """Each special token ("<|endoftext|>", "[CLS]", "[MASK]", ...) and its id."""
        return {t.content: i for i, t in sorted(self.backend.get_added_tokens_decoder().items()) if t.special}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; BERT's tokenizer adds [CLS] and [SEP] unless add_special_tokens is False."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"PretrainedTokenizer({type(self.backend.model).__name__}, vocab_size={self.vocab_size})"


def load_tokenizer(
    source: str | Path, *, download: bool = False, cache_dir: str | Path | None = None
) -> PretrainedTokenizer:
    """The tokenizer saved beside a checkpoint (tokenizer.json), from a directory or a cached hub name."""
    from tokenizers import Tokenizer

    directory = resolve(source, download=download, cache_dir=cache_dir)
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no tokenizer.json; found {sorted(p.name for p in directory.iterdir())}"
        )
    return PretrainedTokenizer(Tokenizer.from_file(str(path)))
