"""companion.pretrained: GPT-2, BERT and Llama checkpoints give the logits and tokens `transformers` gives
(fp32, within 1e-4), at a small size and at the real gpt2-small and bert-base sizes; clear errors otherwise.

Offline: every model is random-init, built here and saved with `save_pretrained` into tmp_path.
"""

import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the hub

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer

from companion import DecoderLM, EncoderLM, TransformerConfig, build_model, generate, presets
from companion.layers import ACTIVATIONS, GELUTanh
from companion.pretrained import load_pretrained, load_tokenizer
from helpers import random_ids

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
TOLERANCE = 1e-4  # fp32; the measured differences are ~3e-6 at full size

GPT2_SIZES = {
    "small": dict(n_layer=2, n_embd=48, n_head=4, vocab_size=97, n_positions=32),
    "gpt2-small": {},  # the defaults are the 124M model
}
BERT_SIZES = {
    "small": dict(
        num_hidden_layers=2,
        hidden_size=48,
        num_attention_heads=4,
        intermediate_size=96,
        vocab_size=97,
        max_position_embeddings=32,
    ),
    "bert-base": {},  # the defaults are bert-base-uncased
}


def _save(model, directory):
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", params=sorted(GPT2_SIZES))
def gpt2(request, tmp_path_factory):
    """(transformers model, its directory) for each size; random weights, no eos so generation runs on."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(**GPT2_SIZES[request.param], bos_token_id=None, eos_token_id=None)
    reference = transformers.GPT2LMHeadModel(config).eval()
    return reference, _save(reference, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module", params=sorted(BERT_SIZES))
def bert(request, tmp_path_factory):
    """BertForPreTraining, as bert-base-uncased was released: encoder, pooler, MLM and next-sentence heads."""
    torch.manual_seed(0)
    reference = transformers.BertForPreTraining(transformers.BertConfig(**BERT_SIZES[request.param])).eval()
    return reference, _save(reference, tmp_path_factory.mktemp("bert"))


def _ids(vocab_size, shape, low=0, seed=0):
    return random_ids(shape, vocab_size, seed, low)


# ---------------------------------------------------------------- GPT-2


def test_gpt2_logits_match_transformers(gpt2):
    reference, directory = gpt2
    model = load_pretrained(directory)
    assert isinstance(model, DecoderLM) and model.config.activation == "gelu_tanh"
    ids = _ids(reference.config.vocab_size, (2, 12))
    with torch.no_grad():
        difference = (model(ids) - reference(ids).logits).abs().max().item()
    assert difference < TOLERANCE


def assert_greedy_matches(reference, directory, new_tokens: int) -> None:
    """The loaded model's greedy tokens, with and without the cache, equal transformers' generate."""
    model = load_pretrained(directory)
    prompt = _ids(reference.config.vocab_size, (1, 5), seed=1)
    with torch.no_grad():
        expected = reference.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    assert expected.shape == (1, 5 + new_tokens)
    assert torch.equal(generate(model, prompt, new_tokens, use_cache=True), expected)
    assert torch.equal(generate(model, prompt, new_tokens, use_cache=False), expected)


def test_gpt2_greedy_tokens_match_transformers_with_and_without_cache(gpt2):
    assert_greedy_matches(*gpt2, new_tokens=12)


@pytest.mark.parametrize("gpt2", ["gpt2-small"], indirect=True)
def test_gpt2_small_checkpoint_is_the_gpt2_small_preset(gpt2):
    _, directory = gpt2
    loaded = load_pretrained(directory).config
    assert loaded.replace(dropout=0.0, attention_dropout=0.0) == presets["gpt2-small"]


@pytest.mark.parametrize("bert", ["bert-base"], indirect=True)
def test_bert_base_checkpoint_is_the_bert_base_preset(bert):
    _, directory = bert
    loaded = load_pretrained(directory).config
    assert loaded.replace(dropout=0.0, attention_dropout=0.0, task_head="none") == presets["bert-base"]


def test_untied_gpt2_head_loads_its_own_weight(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(**GPT2_SIZES["small"], tie_word_embeddings=False)
    reference = transformers.GPT2LMHeadModel(config).eval()
    model = load_pretrained(_save(reference, tmp_path))
    assert not model.config.tie_embeddings
    ids = _ids(97, (2, 9))
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() < TOLERANCE


def test_exact_gelu_would_miss_gpt2_by_far_more_than_the_tolerance(tmp_path):
    """The reason for gelu_tanh: with the exact GELU the same weights give visibly different logits."""
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(**GPT2_SIZES["small"], initializer_range=0.2)
    ).eval()
    model = load_pretrained(_save(reference, tmp_path))
    exact = build_model(model.config.replace(activation="gelu")).eval()
    exact.load_state_dict(model.state_dict())
    ids = _ids(97, (2, 12))
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() < TOLERANCE
        assert (exact(ids) - reference(ids).logits).abs().max().item() > 5 * TOLERANCE


# ---------------------------------------------------------------- BERT


def test_bert_hidden_states_pooler_and_mlm_logits_match_transformers_with_padding(bert):
    reference, directory = bert
    model = load_pretrained(directory)
    assert isinstance(model, EncoderLM) and model.pooler is not None and model.config.task_head == "mlm"
    ids = _ids(reference.config.vocab_size, (2, 12), low=1)  # 0 is [PAD]
    ids[1, 7:] = 0
    segments = torch.zeros_like(ids)
    segments[:, 4:] = 1
    attention_mask = (ids != 0).long()
    with torch.no_grad():
        expected = reference.bert(ids, attention_mask=attention_mask, token_type_ids=segments)
        expected_logits = reference(
            ids, attention_mask=attention_mask, token_type_ids=segments
        ).prediction_logits
        hidden = model.hidden_states(ids, segments)  # the padding mask comes from config.pad_id
        logits = model(ids, segments)
    assert (hidden - expected.last_hidden_state).abs().max().item() < TOLERANCE
    assert (model.pool(hidden) - expected.pooler_output).abs().max().item() < TOLERANCE
    assert (logits - expected_logits).abs().max().item() < TOLERANCE


def test_bert_without_heads_loads_as_a_bare_encoder(tmp_path):
    torch.manual_seed(0)
    reference = transformers.BertModel(
        transformers.BertConfig(**BERT_SIZES["small"]), add_pooling_layer=False
    )
    model = load_pretrained(_save(reference.eval(), tmp_path))
    assert model.pooler is None and model.config.task_head == "none"
    ids = _ids(97, (2, 9), low=1)
    with torch.no_grad():
        assert (model(ids) - reference(ids).last_hidden_state).abs().max().item() < TOLERANCE


# ---------------------------------------------------------------- Llama

LLAMA_SIZES = {
    # grouped-query attention (2 kv heads for 4), Llama 3's rope theta, an untied head
    "gqa": dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
    # multi-query attention, a tied head, Llama 1's eps
    "mqa-tied": dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
}


def _llama(sizes: dict, seed: int = 0):
    """A random-init LlamaForCausalLM; initializer_range 0.2 (not 0.02) so the logits are large enough
    (about +-5) that a mistake in the loader shows far above the tolerance."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**sizes, initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", params=sorted(LLAMA_SIZES))
def llama(request, tmp_path_factory):
    reference = _llama(LLAMA_SIZES[request.param])
    return reference, _save(reference, tmp_path_factory.mktemp("llama"))


def test_llama_logits_match_transformers(llama):
    reference, directory = llama
    model = load_pretrained(directory)
    config = model.config
    assert isinstance(model, DecoderLM)
    assert (config.norm_type, config.activation, config.positional, config.bias) == (
        "rms",
        "swiglu",
        "rope",
        False,
    )
    assert config.n_kv_heads == reference.config.num_key_value_heads
    assert config.layer_norm_eps == reference.config.rms_norm_eps
    assert config.tie_embeddings == reference.config.tie_word_embeddings
    ids = _ids(reference.config.vocab_size, (2, 20))
    with torch.no_grad():
        expected = reference(ids).logits
        difference = (model(ids) - expected).abs().max().item()
    assert expected.abs().max() > 1.0  # logits large enough for the tolerance to mean something
    assert difference < TOLERANCE


def test_llama_greedy_tokens_match_transformers_with_and_without_cache(llama):
    assert_greedy_matches(*llama, new_tokens=20)


def test_llama_rope_theta_is_read(tmp_path):
    model = load_pretrained(_save(_llama(LLAMA_SIZES["gqa"]), tmp_path))
    assert model.config.rope_base == 500000.0
    assert model.rotary.cos.device.type == "cpu"  # computed for real, not left on the meta device


def test_llama_rotates_halves_so_the_loader_reorders_query_and_key_rows(llama, monkeypatch):
    """Without the reordering (Hugging Face rotates feature i with i + d_head/2, the companion pairs
    2i with 2i+1) the logits are far off: the reordering is what makes them equal."""
    import companion.pretrained as pretrained

    reference, directory = llama
    monkeypatch.setattr(pretrained, "halves_to_pairs", lambda d_head: pretrained.same)
    model = load_pretrained(directory)
    ids = _ids(reference.config.vocab_size, (2, 20))
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() > 100 * TOLERANCE


def test_llama_checkpoint_of_the_llama_tiny_shape_is_the_llama_tiny_preset(tmp_path):
    tiny = presets["llama-tiny"]
    sizes = dict(
        vocab_size=tiny.vocab_size,
        hidden_size=tiny.d_model,
        intermediate_size=tiny.d_ff,
        num_hidden_layers=tiny.layers,
        num_attention_heads=tiny.heads,
        num_key_value_heads=tiny.kv_heads,
        max_position_embeddings=tiny.context_length,
        rms_norm_eps=tiny.layer_norm_eps,
        rope_theta=tiny.rope_base,
        tie_word_embeddings=False,
    )
    reference = _llama(sizes)
    model = load_pretrained(_save(reference, tmp_path))
    assert model.config == tiny
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("hidden_act", "gelu", r"hidden_act='gelu'.*'silu'"),
        ("attention_bias", True, r"attention_bias=True"),
        ("head_dim", 16, r"head_dim=16.*12"),
        ("rope_parameters", {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}, r"rope type 'yarn'"),
    ],
)
def test_unsupported_llama_config_is_refused_by_name(tmp_path, key, value, message):
    import json

    directory = _save(_llama(LLAMA_SIZES["gqa"]), tmp_path)
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(ValueError, match=message):
        load_pretrained(directory)


# ---------------------------------------------------------------- checkpoints as the hub stores them


def _as_hub_gpt2(directory, target):
    """The layout of the hub's original gpt2 files: no "transformer." prefix, causal-mask buffers,
    a copy of the tied head, pytorch_model.bin."""
    weights = {
        k.removeprefix("transformer."): v for k, v in load_file(directory / "model.safetensors").items()
    }
    n = weights["wpe.weight"].shape[0]
    for i in range(sum(k.endswith("ln_1.weight") for k in weights)):
        weights[f"h.{i}.attn.bias"] = torch.ones(1, 1, n, n).tril()
        weights[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    weights["lm_head.weight"] = weights["wte.weight"].clone()
    target.mkdir()
    shutil.copy(directory / "config.json", target)
    torch.save(weights, target / "pytorch_model.bin")
    return target


def _as_hub_bert(directory, target):
    """bert-base-uncased's layout: LayerNorm gamma/beta from its TensorFlow origin, position_ids, tied copies."""
    weights = {}
    for name, tensor in load_file(directory / "model.safetensors").items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        weights[name] = tensor
    weights["bert.embeddings.position_ids"] = torch.arange(32)[None]
    weights["cls.predictions.decoder.weight"] = weights["bert.embeddings.word_embeddings.weight"].clone()
    weights["cls.predictions.decoder.bias"] = weights["cls.predictions.bias"].clone()
    target.mkdir()
    shutil.copy(directory / "config.json", target)
    torch.save(weights, target / "pytorch_model.bin")
    return target


@pytest.fixture
def small_gpt2(tmp_path):
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_SIZES["small"])).eval()
    return reference, _save(reference, tmp_path / "gpt2")


@pytest.fixture
def small_bert(tmp_path):
    torch.manual_seed(0)
    reference = transformers.BertForPreTraining(transformers.BertConfig(**BERT_SIZES["small"])).eval()
    return reference, _save(reference, tmp_path / "bert")


def test_hub_layout_gpt2_in_pytorch_model_bin_loads(small_gpt2, tmp_path):
    reference, directory = small_gpt2
    model = load_pretrained(_as_hub_gpt2(directory, tmp_path / "hub"))
    ids = _ids(97, (2, 9))
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() < TOLERANCE


def test_hub_layout_bert_with_gamma_and_beta_loads(small_bert, tmp_path):
    reference, directory = small_bert
    model = load_pretrained(_as_hub_bert(directory, tmp_path / "hub"))
    ids = _ids(97, (2, 9), low=1)
    with torch.no_grad():
        assert (model(ids) - reference(ids).prediction_logits).abs().max().item() < TOLERANCE


def test_sharded_safetensors_load(small_gpt2):
    import json

    reference, directory = small_gpt2
    weights = load_file(directory / "model.safetensors")
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[:7], "model-00002-of-00002.safetensors": names[7:]}
    for shard, part in shards.items():
        save_file({name: weights[name] for name in part}, directory / shard)
    weight_map = {name: shard for shard, part in shards.items() for name in part}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (directory / "model.safetensors").unlink()
    model = load_pretrained(directory)
    ids = _ids(97, (2, 9))
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() < TOLERANCE


def test_hub_name_resolves_from_the_local_cache(small_gpt2, tmp_path):
    reference, directory = small_gpt2
    commit = "0" * 40
    repo = tmp_path / "cache" / "models--someone--tiny-gpt2"
    shutil.copytree(directory, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = load_pretrained("someone/tiny-gpt2", cache_dir=tmp_path / "cache")
    assert torch.equal(model.embed.tokens.weight, reference.transformer.wte.weight)


def test_hub_name_missing_from_the_cache_fails_at_once_saying_how_to_fetch_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not in the Hugging Face cache.*download=True"):
        load_pretrained("someone/absent-model", cache_dir=tmp_path)


def test_download_fetches_only_when_allowed_and_only_the_needed_files(small_gpt2, tmp_path, monkeypatch):
    """download=True hands the hub name to huggingface_hub; here a stand-in 'hub' serves a folder this
    test made, so the path a user takes online runs offline."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from companion.pretrained import HUB_PATTERNS

    calls = []

    def fake_snapshot_download(repo_id, *, allow_patterns, cache_dir, local_files_only):
        calls.append((repo_id, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        target = tmp_path / "fetched"
        shutil.copytree(small_gpt2[1], target, dirs_exist_ok=True)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_pretrained("someone/tiny-gpt2")
    model = load_pretrained("someone/tiny-gpt2", download=True)
    assert calls == [("someone/tiny-gpt2", True), ("someone/tiny-gpt2", False)]
    assert torch.equal(model.embed.tokens.weight, small_gpt2[0].transformer.wte.weight)
    assert any(p.endswith(".safetensors") for p in HUB_PATTERNS) and not any(
        "h5" in p or "msgpack" in p for p in HUB_PATTERNS
    )


def test_dtype_is_applied_to_every_weight(small_gpt2):
    model = load_pretrained(small_gpt2[1], dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------- errors that name the tensor


def _rewrite(directory, change):
    weights = load_file(directory / "model.safetensors")
    change(weights)
    save_file(weights, directory / "model.safetensors")


def test_missing_tensor_is_named(small_gpt2):
    _rewrite(small_gpt2[1], lambda w: w.pop("transformer.h.1.mlp.c_fc.weight"))
    needed = r"'h\.1\.mlp\.c_fc\.weight'.*'decoder\.blocks\.1\.feed_forward\.up\.weight' needs"
    with pytest.raises(KeyError, match=needed):
        load_pretrained(small_gpt2[1])


def test_unmapped_tensor_is_named(small_bert):
    _rewrite(small_bert[1], lambda w: w.update({"classifier.weight": torch.zeros(2, 48)}))
    with pytest.raises(ValueError, match=r"no place for: \['classifier\.weight'\]"):
        load_pretrained(small_bert[1])


def test_shape_mismatch_names_the_tensor_and_both_shapes(small_gpt2):
    _rewrite(small_gpt2[1], lambda w: w.update({"transformer.h.0.attn.c_proj.weight": torch.zeros(48, 40)}))
    with pytest.raises(ValueError, match=r"'h\.0\.attn\.c_proj\.weight' has shape \(48, 40\).*\(48, 48\)"):
        load_pretrained(small_gpt2[1])


def test_tied_copy_that_differs_is_refused(small_gpt2, tmp_path):
    hub = _as_hub_gpt2(small_gpt2[1], tmp_path / "hub")
    weights = torch.load(hub / "pytorch_model.bin", weights_only=True)
    weights["lm_head.weight"] += 1.0
    torch.save(weights, hub / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"'lm_head\.weight' should be a tied copy of 'wte\.weight'"):
        load_pretrained(hub)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model_type", "t5", r"model_type='t5'.*\['bert', 'gpt2', 'llama'\]"),
        ("scale_attn_by_inverse_layer_idx", True, r"scale_attn_by_inverse_layer_idx=True"),
        ("activation_function", "swish", r"activation_function='swish'"),
    ],
)
def test_unsupported_config_is_refused_by_name(small_gpt2, key, value, message):
    import json

    path = small_gpt2[1] / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(ValueError, match=message):
        load_pretrained(small_gpt2[1])


def test_directory_without_weights_or_config_says_what_it_found(small_gpt2):
    (small_gpt2[1] / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"holds no weights.*config\.json"):
        load_pretrained(small_gpt2[1])
    (small_gpt2[1] / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_pretrained(small_gpt2[1])


def test_a_file_is_not_a_source(small_gpt2):
    with pytest.raises(ValueError, match="is a file"):
        load_pretrained(small_gpt2[1] / "config.json")


# ---------------------------------------------------------------- tokenizers

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need, said the paper in 2017.",
    "café naïve: ünïcode survives",
] * 5


def test_gpt2_byte_level_bpe_round_trips_and_matches_transformers(tmp_path):
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TEXT, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False
    )
    bpe.save_model(str(tmp_path))
    reference = transformers.GPT2Tokenizer(
        vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt")
    )
    reference.save_pretrained(tmp_path / "saved")
    tokenizer = load_tokenizer(tmp_path / "saved")
    text = "The lazy fox said: café 2017! Ωmega<|endoftext|>"
    ids = tokenizer.encode(text)
    assert ids == reference.encode(text)
    assert ids[-1] == tokenizer.special_tokens["<|endoftext|>"] == 0
    assert tokenizer.decode(ids, skip_special_tokens=False) == text  # bytes: nothing is lost
    assert tokenizer.decode(ids) == text.removesuffix("<|endoftext|>")
    assert tokenizer.vocab_size == 300


def test_bert_wordpiece_adds_cls_and_sep_and_matches_transformers(tmp_path):
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(TEXT, vocab_size=200, min_frequency=1, show_progress=False)
    wordpiece.save_model(str(tmp_path))
    reference = transformers.BertTokenizer(vocab=str(tmp_path / "vocab.txt"))
    reference.save_pretrained(tmp_path / "saved")
    tokenizer = load_tokenizer(tmp_path / "saved")
    text = "The Lazy fox said the paper"
    ids = tokenizer.encode(text)
    assert ids == reference.encode(text)
    special = tokenizer.special_tokens
    assert ids[0] == special["[CLS]"] and ids[-1] == special["[SEP]"] and "[MASK]" in special
    assert tokenizer.encode(text, add_special_tokens=False) == ids[1:-1]
    assert tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=True) == text.lower()


def test_load_tokenizer_needs_tokenizer_json(small_gpt2):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json; found \['config\.json'"):
        load_tokenizer(small_gpt2[1])


def test_encode_refuses_what_is_not_text(tmp_path):
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=280, show_progress=False)
    bpe.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TypeError, match="encode takes a str, got list"):
        load_tokenizer(tmp_path).encode(["a"])


# ---------------------------------------------------------------- the activation


def test_gelu_tanh_is_gpt2s_formula_and_differs_from_exact_gelu():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    formula = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    assert torch.allclose(GELUTanh()(x), formula, atol=1e-12)
    assert (GELUTanh()(x) - torch.nn.GELU()(x)).abs().max() > 1e-4


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds_every_kind_of_model(activation):
    for kind in ("decoder", "encoder", "encoder-decoder"):
        config = TransformerConfig(
            kind=kind,
            vocab_size=11,
            context_length=8,
            d_model=8,
            heads=2,
            layers=1,
            activation=activation,
            task_head="mlm" if kind == "encoder" else "none",
        )
        model = build_model(config)
        assert sum(isinstance(m, ACTIVATIONS[activation]) for m in model.modules()) >= 1
    with pytest.raises(
        ValueError,
        match=r"activation='swish': expected one of \('relu', 'gelu', 'gelu_tanh', 'silu', 'swiglu'\)",
    ):
        TransformerConfig(activation="swish")


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_every_norm_placement_builds_a_model_that_runs(norm):
    config = TransformerConfig(vocab_size=11, context_length=8, d_model=8, heads=2, layers=2, norm=norm)
    model = build_model(config)
    norms = sum(type(m).__name__ == "LayerNorm" for m in model.modules())
    assert norms == {"pre": 5, "post": 4, "none": 0}[norm]  # two per layer, plus pre-LN's final norm
    assert model(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 11)


def test_the_library_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, companion, companion.pretrained; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
