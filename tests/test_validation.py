"""The shared argument checks (companion/validation.py), the eval-mode context manager, and the config's
filled-in defaults."""

from __future__ import annotations

import math
import re

import pytest
import torch

from companion.config import TransformerConfig, presets, swiglu_width
from companion.training import evaluating
from companion.validation import (
    expect,
    flag,
    fraction,
    is_number,
    is_whole,
    one_of,
    positive_number,
    sizes,
    token_ids,
    whole_number,
)


@pytest.mark.parametrize("value", [1, 7, 10**9])
def test_whole_number_accepts_whole_numbers_at_or_above_the_minimum(value):
    whole_number("layers", value)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_whole_number_names_the_argument_the_value_and_what_was_expected(value):
    with pytest.raises(ValueError, match=re.escape(f"layers={value!r}: expected a whole number >= 1")):
        whole_number("layers", value)


def test_whole_number_takes_a_minimum_none_and_a_note():
    whole_number("seed", 0, 0)
    whole_number("d_ff", None, or_none=True)
    with pytest.raises(ValueError, match=re.escape("seq_len=1: expected a whole number >= 2 (one token in)")):
        whole_number("seq_len", 1, 2, note="one token in")
    with pytest.raises(ValueError, match=re.escape("d_ff=0: expected a whole number >= 1 or None")):
        whole_number("d_ff", 0, or_none=True)
    with pytest.raises(ValueError, match="d_ff=None"):
        whole_number("d_ff", None)


def test_sizes_checks_each_keyword_in_order():
    sizes(vocab_size=5, d_model=2)
    with pytest.raises(ValueError, match=re.escape("d_model=0: expected a whole number >= 1")):
        sizes(vocab_size=5, d_model=0, layers=-1)


@pytest.mark.parametrize("value", [0.0, 0.5, 0.999])
def test_fraction_accepts_numbers_in_zero_to_one(value):
    fraction("dropout", value)


@pytest.mark.parametrize("value", [1.0, -0.1, math.nan, True, "0.1"])
def test_fraction_refuses_anything_else(value):
    with pytest.raises(ValueError, match=re.escape(f"dropout={value!r}: expected a number in [0, 1)")):
        fraction("dropout", value)


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, False, "1"])
def test_positive_number_refuses_zero_negative_infinite_and_non_numbers(value):
    expected = f"lr={value!r}: expected a positive finite number (e.g. 1e-3)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        positive_number("lr", value, "e.g. 1e-3")
    positive_number("lr", 3e-4)


def test_flag_one_of_and_expect_speak_in_the_same_voice():
    flag("bias", False)
    with pytest.raises(ValueError, match=re.escape("bias=1: expected True or False")):
        flag("bias", 1)
    one_of("norm", "pre", ("pre", "post"))
    one_of("norm_type", "rms", {"layer": 0, "rms": 1})  # a dict's keys are its options
    expected = "norm='mid': expected one of ('pre', 'post'); 'pre' is x + F(LN(x))"
    with pytest.raises(ValueError, match=re.escape(expected)):
        one_of("norm", "mid", ("pre", "post"), "'pre' is x + F(LN(x))")
    with pytest.raises(ValueError, match=re.escape("norm=['pre']: expected one of ('pre', 'post')")):
        one_of("norm", ["pre"], ("pre", "post"))
    with pytest.raises(ValueError, match=re.escape("width=3: expected an even number")):
        expect(3 % 2 == 0, "width", 3, "an even number")


def test_is_whole_and_is_number_refuse_bools():
    assert is_whole(3) and not is_whole(True) and not is_whole(3.0)
    assert is_number(2.5) and is_number(2) and not is_number(True) and not is_number(math.inf)


def test_token_ids_accepts_a_batch_of_ids_in_the_vocabulary():
    token_ids("ids", torch.tensor([[0, 4], [2, 1]]), vocab_size=5)


@pytest.mark.parametrize(
    "ids, error, message",
    [
        ([[1, 2]], TypeError, "ids is a list: expected a torch.Tensor of integer token ids"),
        (torch.zeros(1, 2), TypeError, "ids has dtype torch.float32: expected integer token ids"),
        (torch.zeros(1, 2, dtype=torch.bool), TypeError, "ids has dtype torch.bool"),
        (torch.zeros(3, dtype=torch.long), ValueError, "ids has shape (3,): expected 2 dims (batch, seq)"),
        (
            torch.zeros(2, 0, dtype=torch.long),
            ValueError,
            "ids has shape (2, 0), an empty sequence: expected at least",
        ),
        (
            torch.zeros(0, 3, dtype=torch.long),
            ValueError,
            "ids has shape (0, 3), an empty batch: expected at least",
        ),
        (
            torch.tensor([[0, 5]]),
            ValueError,
            "ids holds token ids in [0, 5]: expected ids in the vocabulary [0, 4]",
        ),
        (torch.tensor([[-1, 2]]), ValueError, "ids holds token ids in [-1, 2]"),
    ],
)
def test_token_ids_says_what_is_wrong(ids, error, message):
    with pytest.raises(error, match=re.escape(message)):
        token_ids("ids", ids, vocab_size=5)


@pytest.mark.parametrize("training", [True, False])
def test_evaluating_switches_to_eval_mode_and_restores_the_mode_it_found(training):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train(training)
    with evaluating(model) as inside:
        assert inside is model and not model.training and not model[1].training
    assert model.training == training and model[1].training == training


def test_evaluating_restores_the_mode_when_the_block_raises():
    model = torch.nn.Dropout(0.5).train()
    with pytest.raises(RuntimeError, match="inside"), evaluating(model):
        raise RuntimeError("inside")
    assert model.training


def test_config_fills_in_d_ff_and_decoder_layers_and_replace_works_them_out_again():
    tiny = presets["tiny"]
    assert (tiny.d_ff, tiny.decoder_layers) == (4 * tiny.d_model, tiny.layers)
    assert tiny.replace(activation="swiglu").d_ff == swiglu_width(tiny.d_model)  # not the GELU width kept
    assert tiny.replace(d_model=64).d_ff == 256 and tiny.replace(layers=2).decoder_layers == 2
    chosen = tiny.replace(d_ff=100, decoder_layers=3)
    assert chosen.replace(d_model=64, layers=6).d_ff == 100  # a width given stays given
    assert chosen.replace(layers=6).decoder_layers == 3
    assert TransformerConfig(d_ff=512) == TransformerConfig()  # the same model either way
