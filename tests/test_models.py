"""Models: published parameter counts, shapes, tied embeddings, clear errors for bad ids."""

import pytest
import torch

from companion import TransformerConfig, build_model, count_parameters, presets
from companion.attention import record_attention

# Published counts: BERT (Devlin et al. 2019; BertModel with pooler), GPT-2 small (Radford et al. 2019).
PUBLISHED = {"bert-base": 109_482_240, "bert-large": 335_141_888, "gpt2-small": 124_439_808}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_within_one_percent_of_published(name):
    with torch.device("meta"):  # no memory: shapes only
        model = build_model(presets[name])
    assert abs(count_parameters(model) - PUBLISHED[name]) / PUBLISHED[name] < 0.01


def test_original_base_is_63m_from_the_papers_sizes():
    with torch.device("meta"):
        model = build_model(presets["original-base"])
    # 37000 * 512 shared embedding + 6 encoder + 6 decoder layers; the paper rounds to 65M.
    assert count_parameters(model) == 37000 * 512 + 6 * 3_152_384 + 6 * 4_204_032


def test_gpt2_output_layer_is_tied_to_the_input_embedding():
    model = build_model(presets["tiny"])
    assert presets["gpt2-small"].tie_embeddings
    untied = build_model(presets["tiny"].replace(tie_embeddings=False))
    assert count_parameters(untied) - count_parameters(model) == 256 * 128


@pytest.mark.parametrize("kind", ["decoder", "encoder", "encoder-decoder"])
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "rope", "none"])
def test_every_model_kind_runs_forward_and_backward(kind, norm, positional):
    torch.manual_seed(0)
    config = TransformerConfig(
        kind=kind,
        vocab_size=20,
        context_length=16,
        d_model=16,
        heads=2,
        layers=2,
        norm=norm,
        positional=positional,
    )
    model = build_model(config)
    ids = torch.randint(0, 20, (3, 10))
    out = model(ids, ids[:, :7]) if kind == "encoder-decoder" else model(ids)
    expected = {"decoder": (3, 10, 20), "encoder": (3, 10, 16), "encoder-decoder": (3, 7, 20)}[kind]
    assert out.shape == expected
    out.float().pow(2).mean().backward()


def test_encoder_task_heads():
    base = TransformerConfig(kind="encoder", vocab_size=20, context_length=16, d_model=16, heads=2, layers=1)
    ids = torch.randint(0, 20, (3, 10))
    assert build_model(base.replace(task_head="mlm"))(ids).shape == (3, 10, 20)
    assert build_model(base.replace(task_head="classify", num_labels=5))(ids).shape == (3, 5)


def test_decoder_is_causal_end_to_end():
    torch.manual_seed(0)
    model = build_model(presets["tiny"]).eval()
    ids = torch.randint(0, 256, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 256
    torch.testing.assert_close(model(ids)[:, :8], model(changed)[:, :8], atol=1e-5, rtol=1e-5)


def test_padding_is_hidden_from_the_encoder():
    torch.manual_seed(0)
    config = TransformerConfig(
        kind="encoder", vocab_size=20, context_length=16, d_model=16, heads=2, layers=2, pad_id=0
    )
    model = build_model(config).eval()
    short = torch.tensor([[3, 4, 5, 0, 0]])
    longer_pad = torch.tensor([[3, 4, 5, 0, 0, 0, 0]])
    torch.testing.assert_close(model(short)[:, :3], model(longer_pad)[:, :3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.randint(0, 256, (2, 300)), "context is 256 positions"),
        (torch.tensor([[1, 2, 256]]), r"expected ids in the vocabulary \[0, 255\]"),
        (torch.tensor([[1, -1]]), "vocabulary"),
        (torch.randn(2, 5), "integer token ids"),
        (torch.randint(0, 256, (5,)), "expected 2 dims"),
        (torch.zeros(2, 0, dtype=torch.long), "empty sequence"),
    ],
)
def test_bad_ids_get_a_clear_error(ids, message):
    model = build_model(presets["tiny"])
    with pytest.raises((ValueError, TypeError), match=message):
        model(ids)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(d_model=500, heads=8), "d_model=500: expected a multiple of heads=8"),
        (dict(norm="middle"), "norm='middle'"),
        (dict(layers=0), "layers=0"),
        (dict(kind="gpt"), "kind='gpt'"),
        (dict(positional="rope", d_model=12, heads=4), "d_head=3: expected an even number"),
        (dict(task_head="mlm"), "needs kind='encoder'"),
        (dict(dropout=1.5), "dropout=1.5"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        presets["tiny"].replace(**changes)


def test_build_model_rejects_non_config():
    with pytest.raises(TypeError, match="TransformerConfig"):
        build_model({"d_model": 16})


# Chapter 5: the parameter formula and greedy decoding (the exercise's reference is generate without a cache).

from companion.decoding import generate  # noqa: E402
from companion.models import DecoderBlock, EncoderBlock, EncoderDecoder  # noqa: E402


def formula(d_model: int, d_ff: int, cross: bool) -> int:
    attention, feed_forward, norm = (
        4 * (d_model**2 + d_model),
        2 * d_model * d_ff + d_ff + d_model,
        2 * d_model,
    )
    return (2 * attention + feed_forward + 3 * norm) if cross else (attention + feed_forward + 2 * norm)


@pytest.mark.parametrize("d_model, d_ff", [(512, 2048), (768, 3072), (24, 40)])
def test_block_parameter_formula_matches_count_parameters(d_model, d_ff):
    config = TransformerConfig(kind="encoder-decoder", d_model=d_model, heads=4, d_ff=d_ff)
    with torch.device("meta"):
        assert count_parameters(EncoderBlock(config)) == formula(d_model, d_ff, cross=False)
        assert count_parameters(DecoderBlock(config, cross=True)) == formula(d_model, d_ff, cross=True)


def test_published_counts_are_exact():
    for name, published in PUBLISHED.items():
        with torch.device("meta"):
            assert count_parameters(build_model(presets[name])) == published, name


def tiny_seq2seq(seed=0):
    torch.manual_seed(seed)
    config = TransformerConfig(
        kind="encoder-decoder", vocab_size=11, context_length=12, d_model=16, heads=2, layers=2
    )
    return EncoderDecoder(config).eval()


def greedy_decode(model, src_ids, length, start_id):
    """Chapter 5's greedy decoding: `length` target tokens after the start token, no cache."""
    start = torch.full((src_ids.shape[0], 1), start_id, dtype=torch.long)
    return generate(model, start, length, src_ids=src_ids, use_cache=False)[:, 1:]


def test_greedy_decode_picks_the_argmax_of_each_step():
    model = tiny_seq2seq()
    src = torch.randint(1, 11, (3, 7), generator=torch.Generator().manual_seed(1))
    out = greedy_decode(model, src, 5, start_id=0)
    assert out.shape == (3, 5) and out.dtype == torch.long
    with torch.no_grad():  # teacher-forcing its own output reproduces every choice
        logits = model(src, torch.cat([torch.zeros(3, 1, dtype=torch.long), out[:, :-1]], dim=1))
    assert torch.equal(logits.argmax(-1), out)


def test_greedy_decode_keeps_the_training_flag():
    model = tiny_seq2seq().train()
    greedy_decode(model, torch.ones(1, 3, dtype=torch.long), 2, start_id=0)
    assert model.training


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(length=-1), ValueError, "max_new_tokens=-1: expected a whole number >= 0"),
        (dict(length=12), ValueError, "context is 12"),
        (
            dict(start_id=11),
            ValueError,
            r"prompt_ids holds token ids in \[11, 11\]: expected ids in the vocabulary \[0, 10\]",
        ),
    ],
)
def test_greedy_decode_rejects_bad_arguments(kwargs, error, message):
    args = dict(length=3, start_id=0) | kwargs
    with pytest.raises(error, match=message):
        greedy_decode(tiny_seq2seq(), torch.ones(1, 3, dtype=torch.long), **args)


def test_greedy_decode_needs_an_encoder_decoder():
    with pytest.raises(ValueError, match="src_ids is only for an EncoderDecoder"):
        greedy_decode(build_model(presets["tiny"]), torch.ones(1, 3, dtype=torch.long), 2, start_id=0)


def test_decoder_hidden_states_are_forward_without_the_head():
    torch.manual_seed(0)
    model = build_model(presets["tiny"]).eval()
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(model.head(model.hidden_states(ids)), model(ids))
    assert model.hidden_states(ids).shape == (2, 9, 128)


def test_stack_runs_its_blocks_in_order_then_the_final_norm():
    torch.manual_seed(0)
    model = build_model(presets["tiny"]).eval()
    x = torch.randn(2, 5, 128)
    by_hand = x
    for block in model.decoder.blocks:
        by_hand = block(by_hand)
    torch.testing.assert_close(model.decoder(x), model.decoder.final_norm(by_hand))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_a_block_adds_each_sublayer_with_its_own_norm(norm):
    """The parts a reader reaches for are named for what they are: block.attention is the attention."""
    torch.manual_seed(0)
    block = build_model(presets["tiny"].replace(norm=norm)).decoder.blocks[0].eval()
    x = torch.randn(2, 5, 128)
    with torch.no_grad():
        if norm == "pre":
            h = x + block.attention(block.attention_norm(x), causal=True)
            by_hand = h + block.feed_forward(block.feed_forward_norm(h))
        else:
            h = block.attention_norm(x + block.attention(x, causal=True))
            by_hand = block.feed_forward_norm(h + block.feed_forward(h))
        torch.testing.assert_close(block(x), by_hand)


def test_the_tied_head_is_the_token_embedding_parameter():
    model = build_model(presets["tiny"])
    assert model.head.weight is model.embed.tokens.weight
    untied = build_model(presets["tiny"].replace(tie_embeddings=False))
    assert untied.head.weight is not untied.embed.tokens.weight


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_dropout_acts_where_the_paper_puts_it(norm):
    """Residual dropout on each sub-layer's output before the add (and norm), and on the embedding sum;
    nothing inside the feed-forward block, nothing on the attention weights unless attention_dropout."""
    torch.manual_seed(0)
    config = presets["tiny"].replace(layers=1, norm=norm, dropout=0.5)
    model = build_model(config).train()
    block = model.decoder.blocks[0]
    ff, ff_norm = block.feed_forward, block.feed_forward_norm
    x = torch.randn(2, 6, config.d_model)
    # Inside the feed-forward block: the same output in training and in eval mode.
    torch.testing.assert_close(ff(x), ff.eval()(x))
    # On its output: the branch added to the stream is F's output with about half of it zeroed, the rest doubled.
    branch = ff(ff_norm(x) if norm == "pre" else x)
    if norm == "pre":  # x + dropout(F(LN(x))): what is added is 0 or 2 F(LN(x))
        added = block.add(x, ff_norm, ff) - x
        kept = added != 0
        torch.testing.assert_close(added[kept], 2 * branch[kept])
    else:  # LN(x + dropout(F(x))): the same mask, drawn again from the same seed, reproduces the output
        torch.manual_seed(1)
        out = block.add(x, ff_norm, ff)
        torch.manual_seed(1)
        mask = torch.nn.functional.dropout(torch.ones_like(branch), 0.5)
        torch.testing.assert_close(out, ff_norm(x + branch * mask))
        kept = mask != 0
    assert 0.35 < kept.float().mean() < 0.65
    # On the embedding sum: about half its entries are zero.
    ids = torch.randint(0, config.vocab_size, (2, 6))
    embedded = model.embed(ids, torch.arange(6))
    assert 0.35 < (embedded == 0).float().mean() < 0.65
    # Not on the attention weights: every row still sums to 1.
    attention = block.attention
    with record_attention(attention) as kept:
        attention(x, causal=True)
    torch.testing.assert_close(kept[0].sum(-1), torch.ones(1, config.heads, 6).expand(2, -1, -1))
    # Every dropout module with p > 0 is one of these places: the embedding sum and the block's residual dropout.
    dropping = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0}
    assert dropping == {"embed.dropout", "decoder.blocks.0.dropout"}


def test_original_base_preset_drops_out_as_the_paper_does():
    config = presets["original-base"]
    assert (config.dropout, config.attention_dropout) == (0.1, 0.0)
    with torch.device("meta"):
        model = build_model(config)
    rates = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert all(
        p == 0.0 for name, p in rates.items() if name.endswith("feed_forward.dropout")
    )  # none inside the FFN
    dropped = {name for name, p in rates.items() if p == 0.1}
    assert dropped == {"embed.dropout"} | {
        f"{stack}.blocks.{i}.dropout" for stack in ("encoder", "decoder") for i in range(6)
    }
