"""Models: published parameter counts, shapes, tied embeddings, clear errors for bad ids."""
import pytest
import torch

from companion import TransformerConfig, build_model, count_parameters, presets

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
    config = TransformerConfig(kind=kind, vocab_size=20, context_length=16, d_model=16, heads=2, layers=2,
                               norm=norm, positional=positional)
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
    config = TransformerConfig(kind="encoder", vocab_size=20, context_length=16, d_model=16, heads=2, layers=2, pad_id=0)
    model = build_model(config).eval()
    short = torch.tensor([[3, 4, 5, 0, 0]])
    longer_pad = torch.tensor([[3, 4, 5, 0, 0, 0, 0]])
    torch.testing.assert_close(model(short)[:, :3], model(longer_pad)[:, :3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.randint(0, 256, (2, 300)), "context is 256 positions"),
        (torch.tensor([[1, 2, 256]]), r"vocabulary is \[0, 255\]"),
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
        (dict(d_model=500, heads=8), "not divisible by heads=8"),
        (dict(norm="middle"), "norm='middle'"),
        (dict(layers=0), "layers=0"),
        (dict(kind="gpt"), "kind='gpt'"),
        (dict(positional="rope", d_model=12, heads=4), "d_head=3 must be even"),
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
