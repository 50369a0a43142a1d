"""Checkers for the chapter 7 (training objectives) exercises: each compares with the companion and names the mistake."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training import IGNORE_INDEX, lr_at, mean_pool
from ._core import Checker, random_tensor

__all__ = [
    "check_mask_tokens",
    "check_next_token_loss",
    "check_lr_schedule",
    "check_pool_and_classify",
    "check_perplexity",
]

# Special ids in the checkers' small vocabulary. They differ from the notebook's (0, 1, 2) on purpose, so an
# answer that types those in instead of using its arguments shows.
PAD, MASK, CLS = 7, 4, 9
NOTEBOOK_PAD, NOTEBOOK_MASK, NOTEBOOK_CLS = 0, 1, 2
VOCAB = 30


def _mlm_batch(rows: int = 400, seq: int = 50) -> Tensor:
    """Ordinary tokens with [CLS] first and a varying run of padding at the end of each row."""
    g = torch.Generator().manual_seed(11)
    ordinary = torch.tensor([i for i in range(VOCAB) if i not in (PAD, MASK, CLS)])
    ids = ordinary[torch.randint(len(ordinary), (rows, seq), generator=g)]
    ids[:, 0] = CLS
    lengths = torch.randint(seq // 2, seq + 1, (rows,), generator=g)
    ids[torch.arange(seq)[None, :] >= lengths[:, None]] = PAD
    return ids


def check_mask_tokens(fn) -> bool:
    """fn(ids, mask_id, vocab_size, special_ids, generator) -> (inputs, labels), BERT's 15% with 80/10/10."""
    with Checker("check_mask_tokens") as c:
        ids = _mlm_batch()
        kwargs = dict(mask_id=MASK, vocab_size=VOCAB, special_ids=(PAD, CLS))
        got = c.call(fn, ids.clone(), generator=torch.Generator().manual_seed(0), **kwargs)
        if not (isinstance(got, tuple) and len(got) == 2):
            c.fail("return a pair (inputs, labels)")
        inputs, labels = got
        c.expect_shape(inputs, tuple(ids.shape), "inputs")
        c.expect_shape(labels, tuple(ids.shape), "labels")
        c.expect_dtype(inputs, ids.dtype, "inputs", hint="token ids are integers (torch.long), like ids")
        c.expect_dtype(labels, torch.long, "labels", hint="F.cross_entropy wants class indices as torch.long")
        again = c.call(fn, ids.clone(), generator=torch.Generator().manual_seed(0), **kwargs)
        if not (torch.equal(again[0], inputs) and torch.equal(again[1], labels)):
            c.fail(
                "two calls with generators seeded alike gave different results: draw every random number with `generator`"
            )
        _name_masking_mistake(c, ids, inputs, labels)
    return c.passed


def _name_masking_mistake(c: Checker, ids: Tensor, inputs: Tensor, labels: Tensor) -> None:
    """Fail with the first mistake the masked batch shows, or pass it."""
    special = (ids == PAD) | (ids == CLS)
    if torch.equal(labels, ids) or torch.equal(labels, inputs):
        c.fail(
            f"labels hold a token at every position; set {IGNORE_INDEX} (IGNORE_INDEX) where a token was not "
            "selected, so the loss scores only the selected positions"
        )
    values, counts = labels.unique(return_counts=True)
    common = int(values[counts.argmax()])
    if common != IGNORE_INDEX and (labels == IGNORE_INDEX).sum() == 0:
        c.fail(
            f"unselected positions are labelled {common}; use IGNORE_INDEX ({IGNORE_INDEX}), the value "
            f"F.cross_entropy skips" + (" (0 is an ordinary token here)" if common == 0 else "")
        )
    changed = inputs != ids
    if (inputs[changed] == NOTEBOOK_MASK).float().mean() > 0.5 and MASK != NOTEBOOK_MASK:
        c.fail(
            f"your [MASK] is token {NOTEBOOK_MASK}, the notebook's id typed in: use the mask_id argument "
            f"(here {MASK})"
        )
    selected = labels != IGNORE_INDEX
    if (selected & special).any() or (inputs[special] != ids[special]).any():
        hard_coded = (ids == NOTEBOOK_PAD) | (ids == NOTEBOOK_CLS)
        if not (selected & hard_coded).any():
            c.fail(
                f"special tokens (padding, [CLS]) were selected or changed: you skipped the notebook's ids "
                f"({NOTEBOOK_PAD}, {NOTEBOOK_CLS}); skip the ids in special_ids (here {PAD}, {CLS})"
            )
        c.fail("special tokens (padding, [CLS]) were selected or changed: select only ordinary tokens")
    if (changed & ~selected).any() and (inputs[selected] == MASK).all():
        c.fail(
            "only the [MASK]ed positions carry labels: select 15%, then mask 80% of those, replace 10% and "
            "keep 10%, and label all the selected ones"
        )
    if (changed & ~selected).any():
        c.fail(
            "tokens that were not selected were changed: only selected positions are corrupted, and each "
            "corrupted position needs its label"
        )
    if torch.equal(labels[selected], inputs[selected]) and not torch.equal(labels[selected], ids[selected]):
        c.fail("labels hold the corrupted input; they must hold the original token the model should recover")
    if torch.equal(labels[selected], ids.roll(-1, dims=1)[selected]):
        c.fail(
            "labels hold the next token: that is the decoder's objective; a masked model recovers the token "
            "at the same position, labels = ids where selected"
        )
    if not torch.equal(labels[selected], ids[selected]):
        c.fail("at selected positions the labels must be the original tokens")
    rate = selected.sum().item() / (~special).sum().item()
    was, now = ids[selected], inputs[selected]
    masked = (now == MASK).float().mean().item()
    if masked > 0.99 and abs(rate - 0.12) < 0.015:
        c.fail(
            "only the [MASK]ed positions carry labels (and the 10% random, 10% kept are left out): select "
            "15%, then mask 80% of those, replace 10% and keep 10%, and label all the selected ones"
        )
    random_ = ((now != MASK) & (now != was)).float().mean().item()
    kept = (now == was).float().mean().item()
    if abs(rate - 0.15) > 0.015:
        c.fail(f"you selected {rate:.1%} of the ordinary tokens; BERT selects 15% (and never special tokens)")
    if masked > 0.99:
        c.fail(
            "every selected token became [MASK]: BERT replaces 10% with a random token and keeps 10% unchanged, "
            "so the model cannot rely on [MASK] marking what to predict"
        )
    if random_ == 0:
        c.fail("no selected token was replaced by a random token: 10% of them should be")
    if kept < 0.02:
        c.fail("no selected token was left unchanged: 10% of them should keep their original value")
    if abs(masked - 0.8) > 0.03 or abs(random_ - 0.1) > 0.03 or abs(kept - 0.1) > 0.03:
        c.fail(
            f"of the selected tokens {masked:.0%} became [MASK], {random_:.0%} a random token, {kept:.0%} stayed; "
            "expected 80%, 10%, 10%. Draw one number u per token and split it: u < 0.8 mask, 0.8 <= u < 0.9 "
            "random, else keep (separate draws for each choice overlap and skew the split)"
        )
    if torch.isin(now[(now != MASK) & (now != was)], torch.tensor([PAD, MASK, CLS])).any():
        c.fail(
            "some random replacements are special tokens (padding, [MASK] or [CLS]): draw them from the "
            "ordinary tokens"
        )


def _padded_lm(seed: int = 4):
    b, t, v = 3, 7, 11
    logits = random_tensor(b, t, v, seed=seed) * 2
    ids = torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(seed))
    ids[ids == PAD] = 0  # token 0 (the notebook's pad id) is an ordinary token here, so typing it in shows
    ids[1, 2] = 0
    ids[0, 4:] = PAD
    ids[2, 6:] = PAD
    return logits, ids


def check_next_token_loss(fn) -> bool:
    """fn(logits, ids, pad_id) -> mean cross-entropy of logits[:, t] against ids[:, t + 1], padding ignored."""
    with Checker("check_next_token_loss") as c:
        logits, ids = _padded_lm()
        v = logits.shape[-1]
        ce = lambda lg, tg, **kw: F.cross_entropy(lg.reshape(-1, v), tg.reshape(-1), **kw)  # noqa: E731
        shifted, targets = logits[:, :-1], ids[:, 1:]
        per_token = F.cross_entropy(shifted.transpose(1, 2), targets, reduction="none")
        real = targets != PAD
        with c.explain(
            {
                "Expected target size": "F.cross_entropy wants logits (N, vocab) and targets (N,): flatten "
                "them with .reshape(-1, vocab) and .reshape(-1) (or move vocab to dim 1)",
                "expected scalar type Long": "targets must be token ids (torch.long)",
                "target dtype": "targets must be token ids (torch.long)",
            }
        ):
            got = c.call(fn, logits, ids, PAD)
        got = torch.as_tensor(got).float()
        c.expect_shape(
            got, (), "your loss", hint="return one number (a 0-dim tensor): the mean over real target tokens"
        )
        c.diagnose(
            got,
            ce(shifted, targets, ignore_index=PAD),
            {
                "you scored position t against token t: the target of position t is the next token, ids[:, t + 1]": ce(
                    logits, ids, ignore_index=PAD
                ),
                "the shift goes the wrong way: pair logits[:, :-1] with ids[:, 1:], not logits[:, 1:] with ids[:, :-1]": ce(
                    logits[:, 1:], ids[:, :-1], ignore_index=PAD
                ),
                "padding targets are counted in the average: ignore targets equal to pad_id (ignore_index=pad_id)": ce(
                    shifted, targets
                ),
                f"you ignored token {NOTEBOOK_PAD}, the notebook's pad id typed in: ignore the pad_id argument "
                f"(here {PAD}), ignore_index=pad_id": ce(shifted, targets, ignore_index=NOTEBOOK_PAD),
                "you zeroed the padding's loss but still divided by every position; divide by the number of real targets": (
                    per_token * real
                ).sum()
                / real.numel(),
                "you averaged each row, then the rows: rows with more padding weigh more per token; average over all "
                "real target tokens at once": ((per_token * real).sum(1) / real.sum(1)).mean(),
                "you returned the sum; the loss is the mean over real target tokens": (
                    per_token * real
                ).sum(),
            },
            what="your loss",
        )
    return c.passed


def check_lr_schedule(fn) -> bool:
    """fn(step, max_lr, warmup_steps, total_steps, min_lr) -> learning rate at that step."""
    with Checker("check_lr_schedule") as c:
        peak, warm, total, floor = 1e-3, 10, 50, 1e-4
        steps = range(total + 5)  # a few steps past the end, where the rate must stay at min_lr
        got = torch.tensor(
            [c.expect_float(c.call(fn, s, peak, warm, total, floor), f"your rate at step {s}") for s in steps]
        )

        def ref(**changes):
            settings = dict(max_lr=peak, warmup_steps=warm, total_steps=total, min_lr=floor) | changes
            return torch.tensor([lr_at(s, **settings) for s in steps])

        def right(s: int) -> float:
            return lr_at(s, max_lr=peak, warmup_steps=warm, total_steps=total, min_lr=floor)

        def progress(s: int) -> float:
            return min(1.0, (s - warm) / (total - warm))

        def decay(p: float) -> float:
            return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * p))

        def cosine_from_step_0(s: int) -> float:
            return decay(min(1.0, s / total))

        def schedule(warming, decaying) -> torch.Tensor:
            """One rate per step: warming(s) during warm-up, decaying(s) after it (one of them mistaken)."""
            return torch.tensor([warming(s) if s < warm else decaying(s) for s in steps])

        c.diagnose(
            got,
            ref(),
            {
                "the rate at step 0 is 0, so the first step does nothing: warm up with (step + 1) / warmup_steps": schedule(
                    lambda s: peak * s / warm, right
                ),
                "the cosine ends at 0; it should end at min_lr": ref(min_lr=0.0),
                "there is no warm-up: the rate starts at max_lr; ramp up linearly over warmup_steps first": schedule(
                    cosine_from_step_0, cosine_from_step_0
                ),
                "the cosine is measured from step 0; start it where warm-up ends: progress = (step - warmup_steps) / (total_steps - warmup_steps)": schedule(
                    right, cosine_from_step_0
                ),
                "after warm-up the rate falls in a straight line; use the cosine min_lr + 0.5 (max_lr - min_lr)(1 + cos(pi progress))": schedule(
                    right, lambda s: peak - (peak - floor) * progress(s)
                ),
                "the cosine's amplitude is max_lr - min_lr: min_lr + 0.5 (max_lr - min_lr)(1 + cos(pi progress)), so it "
                "starts at max_lr": schedule(
                    right, lambda s: floor + 0.5 * peak * (1 + math.cos(math.pi * progress(s)))
                ),
                "the cosine needs 0.5 (1 + cos(pi progress)), which falls from 1 to 0; cos(pi progress) alone goes "
                "negative": schedule(
                    right, lambda s: floor + (peak - floor) * math.cos(math.pi * progress(s))
                ),
                "after total_steps the rate climbs again: clamp progress at 1 so it stays at min_lr": schedule(
                    right, lambda s: decay((s - warm) / (total - warm))
                ),
            },
            what="your schedule (one rate per step)",
            atol=1e-9,
            rtol=1e-6,
        )
    return c.passed


def check_pool_and_classify(fn) -> bool:
    """fn(hidden, keep, head) -> class logits (batch, num_labels): mean over kept positions, then the linear head."""
    with Checker("check_pool_and_classify") as c:
        b, t, d, labels = 4, 6, 5, 3
        hidden = random_tensor(b, t, d, seed=21)
        keep = torch.arange(t)[None, :] < torch.tensor([6, 3, 4, 1])[:, None]
        torch.manual_seed(22)
        head = nn.Linear(d, labels)
        got = c.call(fn, hidden, keep, head)
        c.expect_shape(got, (b, labels), "your logits", hint="one row of class scores per sequence")
        with torch.no_grad():
            weights = keep.float().unsqueeze(-1)
            c.diagnose(
                got,
                head(mean_pool(hidden, keep)),
                {
                    "the average includes padding positions: average only where keep is True": head(
                        hidden.mean(1)
                    ),
                    "you used the first position only; this head averages over every real position": head(
                        hidden[:, 0]
                    ),
                    "you summed the real positions; divide by how many there are": head(
                        (hidden * weights).sum(1)
                    ),
                    "you took the maximum over positions; this head takes the mean over the real ones": head(
                        hidden.masked_fill(~keep.unsqueeze(-1), float("-inf")).amax(1)
                    ),
                    "you divided by the full length, padding included; divide by the number of real positions": head(
                        (hidden * weights).sum(1) / t
                    ),
                    "keep is inverted: True marks the real tokens, so average where keep is True": head(
                        (hidden * ~keep.unsqueeze(-1)).sum(1) / (~keep).sum(1, keepdim=True).clamp(min=1)
                    ),
                    "you used the last position only; this head averages over every real position": head(
                        hidden[:, -1]
                    ),
                },
                what="your logits",
            )
    return c.passed


def check_perplexity(fn) -> bool:
    """fn(batch_losses, token_counts) -> perplexity over all tokens, from per-batch mean losses in nats."""
    with Checker("check_perplexity") as c:
        losses = torch.tensor([2.1, 1.6, 2.9, 1.2])
        counts = torch.tensor([500, 120, 40, 900])
        with c.explain(
            {
                "math range error": "you exponentiated a total, which overflows; perplexity is exp of the "
                "mean loss per token"
            }
        ):
            got = c.call(fn, losses.clone(), counts.clone())
        got = torch.tensor(c.expect_float(got, "your perplexity"), dtype=torch.float64)
        losses, counts = losses.double(), counts.double()  # mistakes such as exp(total) overflow float32
        mean = (losses * counts).sum() / counts.sum()
        c.diagnose(
            got,
            mean.exp(),
            {
                "you averaged the batches' perplexities; average the losses first (weighted by tokens), then take exp": (
                    (losses.exp() * counts).sum() / counts.sum()
                ),
                "you averaged per-batch perplexities without weights; average the token-weighted loss, then take exp": losses.exp().mean(),
                "every batch got the same weight; weight each batch's loss by its token count": losses.mean().exp(),
                "2 ** loss is for losses in bits; cross-entropy gives nats, so use exp": 2**mean,
                "you exponentiated a total; perplexity is exp of the mean loss per token": (losses * counts)
                .sum()
                .exp(),
                "you returned the mean loss; perplexity is its exponential, exp(mean loss)": mean,
                "you divided the token-weighted total by the number of batches; divide by the number of tokens": (
                    (losses * counts).sum() / len(losses)
                ).exp(),
            },
            what="your perplexity",
            rtol=1e-4,
        )
    return c.passed
