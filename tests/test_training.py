"""Training: objectives, schedule, exact resume from checkpoints, DDP equals one process, data helpers."""

import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from companion import TransformerConfig, build_model
from companion.data import (
    CharTokenizer,
    encode_corpus,
    in_context_task,
    random_windows,
    scrambled_task,
    sequential_windows,
)
from companion.training import (
    IGNORE_INDEX,
    SequenceClassifier,
    TrainConfig,
    evaluate_loss,
    inverse_sqrt_lr,
    load_checkpoint,
    lr_at,
    mask_tokens,
    mean_pool,
    next_token_loss,
    next_token_objective,
    perplexity,
    seq2seq_objective,
    smoothed_cross_entropy,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = TransformerConfig(kind="decoder", vocab_size=16, context_length=12, d_model=16, heads=2, layers=1)


def stream(n=400, vocab=16, seed=0):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def test_lr_warms_up_linearly_then_follows_cosine_to_min_lr():
    kw = dict(max_lr=1.0, warmup_steps=4, total_steps=20, min_lr=0.1)
    assert [lr_at(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(12, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(20, **kw) == pytest.approx(0.1) and lr_at(30, **kw) == pytest.approx(0.1)


@pytest.mark.parametrize("d_model, warmup", [(512, 4000), (64, 60), (16, 1)])
def test_inverse_sqrt_schedule_is_the_papers_formula(d_model, warmup):
    peak = (d_model * warmup) ** -0.5
    for step_num in [1, 2, warmup // 2 + 1, warmup, warmup + 1, 3 * warmup, 100_000]:
        paper = d_model**-0.5 * min(step_num**-0.5, step_num * warmup**-1.5)
        assert inverse_sqrt_lr(step_num, d_model=d_model, warmup_steps=warmup) == pytest.approx(paper)
        ours = lr_at(step_num - 1, max_lr=peak, warmup_steps=warmup, total_steps=1, schedule="inverse-sqrt")
        assert ours == pytest.approx(paper)
    assert max(
        inverse_sqrt_lr(n, d_model=d_model, warmup_steps=warmup) for n in range(1, 3 * warmup + 2)
    ) == pytest.approx(peak)


def test_train_follows_the_inverse_sqrt_schedule_with_adams_eps():
    config = TrainConfig(
        steps=12,
        lr=0.02,
        warmup_steps=4,
        schedule="inverse-sqrt",
        eps=1e-3,
        betas=(0.9, 0.98),
        weight_decay=0.0,
        progress=False,
    )

    def run(**optimizer_settings):
        torch.manual_seed(0)
        model = build_model(TINY)
        optimizer = (
            torch.optim.AdamW(
                model.parameters(), lr=1.0, betas=(0.9, 0.98), weight_decay=0.0, **optimizer_settings
            )
            if optimizer_settings
            else None
        )
        history = train(
            model, random_windows(stream(), 4, 12), next_token_objective, config, optimizer=optimizer
        )
        return model, history

    own, history = run()
    assert history.lrs == pytest.approx([0.02 * min(math.sqrt(4 / n), n / 4) for n in range(1, 13)])
    same, _ = run(eps=1e-3)
    other, _ = run(eps=1e-8)
    for a, b in zip(own.parameters(), same.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # train builds AdamW with config.eps
    assert any(not torch.equal(a, c) for a, c in zip(own.parameters(), other.parameters()))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(schedule="noam"), "TrainConfig.schedule='noam': expected one of"),
        (
            dict(schedule="inverse-sqrt", warmup_steps=0),
            "TrainConfig.warmup_steps=0: expected a whole number >= 1",
        ),
        (dict(schedule="inverse-sqrt", min_lr=1e-4), "TrainConfig.min_lr=0.0001: expected 0 with"),
        (dict(eps=0.0), "TrainConfig.eps=0.0: expected a positive finite number"),
    ],
)
def test_bad_schedule_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**{"steps": 10, "lr": 1e-3, "warmup_steps": 2, **changes})


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_smoothed_cross_entropy_matches_torchs_label_smoothing(smoothing):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    targets = torch.randint(0, 11, (3, 7), generator=g)
    targets[0, :3] = IGNORE_INDEX
    torch_loss = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), label_smoothing=smoothing)
    torch.testing.assert_close(smoothed_cross_entropy(logits, targets, smoothing), torch_loss)
    ids = torch.randint(0, 11, (3, 8), generator=g)
    logits = torch.randn(3, 8, 11, generator=g)
    torch.testing.assert_close(
        next_token_loss(logits, ids, label_smoothing=smoothing),
        smoothed_cross_entropy(logits[:, :-1], ids[:, 1:], smoothing),
    )


def test_label_smoothing_prefers_a_target_short_of_certainty():
    # with smoothing, the best logits put 1 - s + s / V on the truth, not 1
    vocab, s = 5, 0.1
    best = torch.full((1, vocab), math.log(s / vocab))
    best[0, 0] = math.log(1 - s + s / vocab)
    sure = torch.tensor([[30.0, 0, 0, 0, 0]])
    target = torch.tensor([0])
    assert smoothed_cross_entropy(best, target, s) < smoothed_cross_entropy(sure, target, s)
    assert F.cross_entropy(sure, target) < F.cross_entropy(best, target)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: smoothed_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1.0),
            "smoothing=1.0",
        ),
        (
            lambda: smoothed_cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)),
            "logits have shape",
        ),
        (
            lambda: smoothed_cross_entropy(torch.zeros(2, 3), torch.full((2,), IGNORE_INDEX)),
            "nothing to score",
        ),
        (
            lambda: next_token_loss(
                torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), label_smoothing=-0.1
            ),
            "label_smoothing=-0.1",
        ),
        (lambda: inverse_sqrt_lr(0, d_model=512, warmup_steps=4000), "step_num=0"),
        (
            lambda: lr_at(0, max_lr=1.0, warmup_steps=0, total_steps=5, schedule="inverse-sqrt"),
            "warmup_steps=0",
        ),
        (lambda: lr_at(0, max_lr=1.0, warmup_steps=1, total_steps=5, schedule="linear"), "schedule='linear'"),
    ],
)
def test_bad_smoothing_and_schedule_arguments_get_clear_errors(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_next_token_loss_pairs_position_t_with_token_t_plus_1():
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    logits = F.one_hot(torch.tensor([[1, 4, 1, 5, 0]]), 6).float() * 50  # predicts the next token perfectly
    assert next_token_loss(logits, ids).item() < 1e-6
    assert (
        next_token_loss(F.one_hot(ids, 6).float() * 50, ids).item() > 10
    )  # copying the current token is wrong


def test_mask_tokens_selects_15_percent_then_80_10_10_and_never_specials():
    ids = torch.randint(3, 50, (300, 100), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -10:] = 2, 0  # [CLS] and padding
    inputs, labels = mask_tokens(
        ids, mask_id=1, vocab_size=50, special_ids=(0, 2), generator=torch.Generator().manual_seed(1)
    )
    selected = labels != IGNORE_INDEX
    ordinary = (ids != 0) & (ids != 2)
    assert not (selected & ~ordinary).any() and torch.equal(inputs[~ordinary], ids[~ordinary])
    assert torch.equal(labels[selected], ids[selected]) and torch.equal(inputs[~selected], ids[~selected])
    assert selected.sum().item() / ordinary.sum().item() == pytest.approx(0.15, abs=0.01)
    now, was = inputs[selected], ids[selected]
    assert (now == 1).float().mean().item() == pytest.approx(0.8, abs=0.02)
    assert ((now != 1) & (now != was)).float().mean().item() == pytest.approx(0.1 * 46 / 47, abs=0.015)
    assert not torch.isin(now, torch.tensor([0, 2])).any()


def test_perplexity_of_a_uniform_guess_is_the_vocabulary_size():
    logits = torch.zeros(2, 9, 37)
    assert perplexity(next_token_loss(logits, torch.randint(0, 37, (2, 9))).item()) == pytest.approx(
        37, rel=1e-5
    )


def test_mean_pool_ignores_padding():
    hidden = torch.randn(2, 5, 3)
    keep = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    changed = hidden.clone()
    changed[0, 2:] = 1e6
    torch.testing.assert_close(mean_pool(changed, keep), mean_pool(hidden, keep))
    torch.testing.assert_close(mean_pool(hidden, keep)[0], hidden[0, :2].mean(0))


def test_sequence_classifier_shapes_and_padding():
    enc = build_model(
        TransformerConfig(
            kind="encoder", vocab_size=16, context_length=12, d_model=16, heads=2, layers=1, pad_id=0
        )
    )
    model = SequenceClassifier(enc, num_labels=3).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    assert model(ids).shape == (1, 3)
    torch.testing.assert_close(model(ids), model(ids[:, :3]), atol=1e-5, rtol=1e-5)


def test_training_lowers_loss_and_evaluates():
    torch.manual_seed(0)
    ids = torch.arange(400) % 7  # a repeating pattern: learnable
    model = build_model(TINY)
    val = sequential_windows(ids[:60], 4, 12)
    before = evaluate_loss(model, val, next_token_objective)
    history = train(
        model,
        random_windows(ids, 8, 12),
        next_token_objective,
        TrainConfig(steps=60, lr=1e-2, warmup_steps=5, progress=False),
        evaluate=lambda m: evaluate_loss(m, val, next_token_objective),
        eval_every=30,
    )
    assert sorted(history.evals) == [29, 59]
    assert history.evals[59] < 0.5 * before


def test_seq2seq_objective_trains_an_encoder_decoder():
    torch.manual_seed(0)
    config = TransformerConfig(
        kind="encoder-decoder", vocab_size=10, context_length=8, d_model=16, heads=2, layers=1
    )
    model = build_model(config)
    src = torch.randint(2, 10, (16, 5), generator=torch.Generator().manual_seed(0))
    tgt = torch.cat([torch.ones(16, 1, dtype=torch.long), src], dim=1)  # start token, then the copy
    first = seq2seq_objective(model, src, tgt).item()
    history = train(
        model,
        lambda s: (src, tgt),
        seq2seq_objective,
        TrainConfig(steps=40, lr=1e-2, warmup_steps=4, progress=False),
    )
    assert history.losses[-1] < 0.5 * first


def _run(path, steps, config=TINY, train_config=None, save_every=0):
    torch.manual_seed(0)
    model = build_model(config.replace(dropout=0.1))  # dropout: the RNG state must be restored too
    tc = train_config or TrainConfig(steps=10, lr=1e-2, warmup_steps=2, progress=False)
    batches = random_windows(stream(), 4, 12, seed=3)
    if steps < tc.steps:  # stop early, as a crash would, after saving at step `steps`
        tc_short = tc
        history = None
        try:
            train(
                model,
                lambda s: batches(s) if s < steps else (_ for _ in ()).throw(KeyboardInterrupt),
                next_token_objective,
                tc_short,
                checkpoint=path,
                save_every=save_every,
            )
        except KeyboardInterrupt:
            pass
        return model, history
    history = train(model, batches, next_token_objective, tc, checkpoint=path, save_every=save_every)
    return model, history


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    straight, full = _run(None, 10)
    path = tmp_path / "run.pt"
    _run(path, 6, save_every=3)  # interrupted at step 6; the checkpoint holds step 6
    assert load_checkpoint(path, build_model(TINY.replace(dropout=0.1)))[0] == 6
    resumed, history = _run(path, 10, save_every=3)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert history.losses == full.losses and history.steps == list(range(10))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(config=TINY.replace(d_model=32)), "d_model=16 there, 32 here"),
        (
            dict(train_config=TrainConfig(steps=10, lr=5e-3, warmup_steps=2, progress=False)),
            "lr=0.01 there, 0.005 here",
        ),
    ],
)
def test_checkpoint_of_another_run_is_refused_and_left_intact(tmp_path, change, message):
    path = tmp_path / "run.pt"
    _run(path, 10)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        _run(path, 10, **change)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]


def test_checkpoint_needs_batches_as_a_function_of_step(tmp_path):
    with pytest.raises(ValueError, match="function step -> batch"):
        train(
            build_model(TINY),
            iter([]),
            next_token_objective,
            TrainConfig(steps=2, warmup_steps=0, progress=False),
            checkpoint=tmp_path / "x.pt",
        )


def test_bad_corpus_and_batch_sizes_get_clear_errors():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="corpus is empty"):
        encode_corpus("", tok, 8)
    with pytest.raises(ValueError, match="3 tokens but one training window needs context_length=8"):
        encode_corpus("abc", tok, 8)
    with pytest.raises(ValueError, match="batch_size=400 is larger than the data"):
        random_windows(stream(100), 400, 12)
    with pytest.raises(ValueError, match="batch_size=20 is larger than the data"):
        sequential_windows(stream(100), 20, 12)
    with pytest.raises(ValueError, match="fewer than one window"):
        random_windows(stream(5), 1, 12)


def test_random_windows_depend_only_on_seed_and_step():
    ids = stream()
    a, b = random_windows(ids, 4, 12, seed=1), random_windows(ids, 4, 12, seed=1)
    assert torch.equal(a(7)[0], b(7)[0]) and not torch.equal(a(7)[0], a(8)[0])
    for row in a(7)[0]:  # each window is a contiguous slice of the stream
        assert any(torch.equal(ids[i : i + 12], row) for i in range(len(ids) - 11))


@pytest.mark.parametrize("unit", ["word", "window"])
def test_scrambled_task_keeps_the_characters_and_changes_the_order(unit):
    text = "the quick brown fox jumps over the lazy dog, again and again. " * 20
    tok = CharTokenizer(text)
    ids, labels = scrambled_task(text, tok, 40, 24, unit=unit, seed=0)
    assert ids.shape == (40, 24) and labels.float().mean() == 0.5
    for row, label in zip(ids, labels):
        window = tok.decode(row)
        assert (window not in text) == bool(label)  # scrambled windows appear nowhere in the text
        if label and unit == "word":  # whole inner words are anagrams of the text's words
            anagrams = {"".join(sorted(w)) for w in re.findall("[a-z]+", text)}
            assert all("".join(sorted(w)) in anagrams for w in re.findall("[a-z]+", window)[1:-1])


def test_in_context_task_rules():
    ids, targets = in_context_task(5, 6, symbols=7, rule="shift", seed=0)
    x, y = ids[:, 0::2], ids[:, 1::2] - 7
    assert (x < 7).all() and (y >= 0).all() and ((y - x) % 7 == ((y - x) % 7)[:, :1]).all()
    assert torch.equal(targets[:, 1::2], ids[:, 1::2]) and (targets[:, 0::2] == -100).all()
    ids, _ = in_context_task(50, 12, symbols=5, rule="lookup", seed=0)
    x, y = ids[:, 0::2], ids[:, 1::2]
    same_key = x[:, :, None] == x[:, None, :]
    assert (same_key <= (y[:, :, None] == y[:, None, :])).all()  # one value per key within a prompt


DDP_WORKER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from companion import TransformerConfig, build_model
    from companion.data import random_windows
    from companion.training import TrainConfig, next_token_objective, train
    import torch.distributed as dist
    torch.manual_seed(0)
    config = TransformerConfig(
        kind="decoder", vocab_size=16, context_length=12, d_model=16, heads=2, layers=1, bias=False
    )
    model = build_model(config)
    ids = torch.randint(0, 16, (400,), generator=torch.Generator().manual_seed(0))
    history = train(model, random_windows(ids, 8, 12, seed=3), next_token_objective,
                    TrainConfig(steps=4, lr=1e-2, warmup_steps=1, progress=False))
    if dist.get_rank() == 0:
        torch.save({"losses": history.losses, "params": [p.detach() for p in model.parameters()],
                    "world": dist.get_world_size()}, sys.argv[1])
    dist.destroy_process_group()
""")


def test_ddp_on_two_processes_matches_one_process_on_the_global_batch(tmp_path):
    script, out = tmp_path / "worker.py", tmp_path / "rank0.pt"
    script.write_text(DDP_WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(out)
    assert result["world"] == 2
    torch.manual_seed(0)
    single = build_model(
        TINY.replace(bias=False)
    )  # a key bias has no true gradient: Adam would amplify its rounding noise
    ids = torch.randint(0, 16, (400,), generator=torch.Generator().manual_seed(0))
    history = train(
        single,
        random_windows(ids, 8, 12, seed=3),
        next_token_objective,
        TrainConfig(steps=4, lr=1e-2, warmup_steps=1, progress=False),
    )
    assert history.losses == pytest.approx(result["losses"], rel=1e-5, abs=1e-6)
    for a, b in zip(single.parameters(), result["params"]):
        torch.testing.assert_close(a.detach(), b, atol=1e-5, rtol=1e-5)


def test_checkpoint_written_before_schedule_and_eps_existed_still_resumes(tmp_path):
    path = tmp_path / "run.pt"
    _run(path, 10)
    state = torch.load(path, weights_only=True)
    del state["train_config"]["schedule"], state["train_config"]["eps"]  # as an older version wrote it
    torch.save(state, path)
    config = TrainConfig(steps=10, lr=1e-2, warmup_steps=2, progress=False)
    assert load_checkpoint(path, build_model(TINY.replace(dropout=0.1)), config=config)[0] == 10
    with pytest.raises(ValueError, match="schedule='cosine' there, 'inverse-sqrt' here"):
        load_checkpoint(
            path,
            build_model(TINY.replace(dropout=0.1)),
            config=TrainConfig(steps=10, lr=1e-2, warmup_steps=2, schedule="inverse-sqrt"),
        )
