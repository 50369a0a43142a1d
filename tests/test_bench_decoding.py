"""benchmarks/bench_decoding.py: FlatLoop, the flat measuring stick --flat sets beside the model, gives the
model's greedy tokens for every config it takes and refuses the others by name; the script runs end to end."""

import sys

import pytest
import torch

from helpers import ROOT, random_ids, small_model

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_decoding  # a script, not a module of the package: found through the path set above
from bench_decoding import FlatLoop, flat_unsupported

from companion import presets
from companion.decoding import generate

SMALL = dict(vocab_size=50, context_length=32, d_model=32, heads=4, layers=2)
VARIANTS = [(True, False), (False, False), (False, True)]  # (read_each_step, fuse_qkv), as --flat runs them


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"activation": "gelu_tanh", "bias": False, "tie_embeddings": False},
        {"activation": "relu", "scale_embeddings": True, "heads": 2},
    ],
    ids=["tiny-like", "gpt2-like, no biases, untied", "relu, scaled embeddings"],
)
@pytest.mark.parametrize("read_each_step, fuse_qkv", VARIANTS)
def test_flat_loop_gives_the_models_tokens(fields, read_each_step, fuse_qkv):
    model = small_model(**{**SMALL, **fields})
    prompt = random_ids((2, 3), SMALL["vocab_size"], seed=1)  # a batch, and a prompt of several tokens
    expected = generate(model, prompt, 12)
    flat = FlatLoop(model, read_each_step, fuse_qkv)
    for use_cache in (True, False):
        got = flat.generate(prompt, 12, use_cache)
        assert torch.equal(got, expected), (use_cache, got, expected)
        assert not got.is_inference()  # usable outside inference mode, as generate's result is


def test_flat_loop_reads_weights_changed_after_it_was_made_only_when_reading_each_step():
    model = small_model(**SMALL)
    prompt = random_ids((1, 2), SMALL["vocab_size"], seed=2)
    each_step, once = FlatLoop(model, True), FlatLoop(model, False)
    with torch.no_grad():
        model.decoder.blocks[0].feed_forward.up.weight.mul_(-3.0)  # in place: every reader sees it
        model.decoder.blocks[1].attention.to_q.weight = torch.nn.Parameter(torch.randn(32, 32))  # replaced
    with torch.inference_mode():
        expected = model(prompt)[:, -1]
        assert torch.allclose(each_step.logits(prompt, 0, None), expected, atol=1e-6)
        assert not torch.allclose(once.logits(prompt, 0, None), expected, atol=1e-2)  # still the old to_q


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"positional": "rope"}, "positional='rope'"),
        ({"norm": "post"}, "norm='post'"),
        ({"norm_type": "rms"}, "norm_type='rms'"),
        ({"activation": "swiglu"}, "activation='swiglu'"),
        ({"kv_heads": 2}, "kv_heads=2"),
        ({"qk_norm": True}, "qk_norm=True"),
        ({"attention_path": "einops"}, "attention_path='einops'"),
    ],
)
def test_flat_loop_refuses_a_config_it_does_not_compute_and_names_the_field(fields, named):
    assert flat_unsupported(presets["tiny"]) is None and flat_unsupported(presets["gpt2-small"]) is None
    model = small_model(**{**SMALL, **fields})
    assert named in flat_unsupported(model.config)
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        FlatLoop(model, False)


def test_flat_loop_refuses_a_model_that_is_not_a_decoder_lm_and_fusing_while_reading_each_step():
    with pytest.raises(ValueError, match="EncoderDecoder"):
        FlatLoop(small_model("encoder-decoder", **SMALL), False)
    with pytest.raises(ValueError, match="fuse_qkv"):
        FlatLoop(small_model(**SMALL), True, True)


def test_the_script_with_flat_prints_a_row_per_loop_with_identical_tokens(capsys):
    assert bench_decoding.main(["--flat", "--new-tokens", "8", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("model ", "flat"))]
    assert len(rows) == 4 and all(line.endswith("yes") for line in rows), lines


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--flat", "--compile"], "without --compile"),
        (["--flat", "--preset", "llama-tiny"], "positional='rope'"),
        (["--flat", "--device", "cuda"], "on the CPU"),
    ],
)
def test_the_script_refuses_flat_where_it_cannot_run(argv, says, capsys):
    with pytest.raises(SystemExit) as raised:
        bench_decoding.main(argv)
    assert raised.value.code == 2 and says in capsys.readouterr().err
