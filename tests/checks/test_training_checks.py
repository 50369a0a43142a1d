"""Chapter 7 checkers (training): typical wrong answers, each rejected with the hint that names it."""

import math

import pytest
import torch
import torch.nn.functional as F

from companion.checks import CheckFailed
from companion.checks import training as checks
from companion.training import IGNORE_INDEX, lr_at, mask_tokens, mean_pool


def _pool(hidden, keep, head):
    return head(mean_pool(hidden, keep))


def _masking(ids, mask_id, vocab_size, special_ids, generator):
    return mask_tokens(
        ids, mask_id=mask_id, vocab_size=vocab_size, special_ids=special_ids, generator=generator
    )


def _loss(logits, ids, pad_id):
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=pad_id
    )


def _ppl(losses, counts):
    return math.exp(float((losses * counts).sum() / counts.sum()))


def _lr(step, max_lr, warmup_steps, total_steps, min_lr):
    return lr_at(step, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr)


def _mask_variant(
    select=0.15,
    probs=(0.8, 0.1),
    specials_ok=False,
    labels_everywhere=False,
    labels_from_input=False,
    random_from_all=False,
    no_generator=False,
    hard_coded=False,
    ignore=IGNORE_INDEX,
    independent=False,
    label_dtype=None,
    corrupt_unselected=False,
    labels_shifted=False,
):
    """BERT masking with one typical mistake switched on; hard_coded types in the notebook's ids (0, 1, 2)."""

    def fn(ids, mask_id, vocab_size, special_ids, generator):
        if hard_coded:
            mask_id, special_ids = 1, (0, 2)
        g = None if no_generator else generator
        draw = lambda: torch.rand(ids.shape, generator=g)  # noqa: E731
        ordinary = (
            torch.ones_like(ids, dtype=torch.bool)
            if specials_ok
            else ~torch.isin(ids, torch.tensor(list(special_ids)))
        )
        selected = (draw() < select) & ordinary
        action = draw()
        pool = (
            torch.arange(vocab_size)
            if random_from_all
            else torch.tensor([i for i in range(vocab_size) if i not in (*special_ids, mask_id)])
        )
        rand = pool[torch.randint(len(pool), ids.shape, generator=g)]
        to_mask = selected & (action < probs[0])
        to_random = (
            selected & (draw() < probs[1])
            if independent
            else selected & (action >= probs[0]) & (action < probs[0] + probs[1])
        )
        inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
        inputs = torch.where(to_random, rand, inputs)
        if corrupt_unselected:
            inputs = torch.where(~selected & ordinary & (action < 0.05), rand, inputs)
        labels = torch.where(selected, inputs if labels_from_input else ids, torch.full_like(ids, ignore))
        if labels_shifted:
            labels = torch.where(selected, ids.roll(-1, dims=1), labels)
        labels = labels if label_dtype is None else labels.to(label_dtype)
        return inputs, (ids.clone() if labels_everywhere else labels)

    return fn


def _only_masked_labelled(ids, mask_id, vocab_size, special_ids, generator):
    inputs, labels = _masking(ids, mask_id, vocab_size, special_ids, generator)
    masked = inputs == mask_id
    return torch.where(masked, inputs, ids), torch.where(
        masked, labels, torch.full_like(labels, IGNORE_INDEX)
    )


def _masked_labelled_after_8010_10(ids, mask_id, vocab_size, special_ids, generator):
    """Corrupts 80/10/10 as BERT does, but labels only the positions that became [MASK]."""
    inputs, labels = _masking(ids, mask_id, vocab_size, special_ids, generator)
    return inputs, torch.where(inputs == mask_id, labels, torch.full_like(labels, IGNORE_INDEX))


def _notebook_specials(ids, mask_id, vocab_size, special_ids, generator):
    """Uses mask_id, but skips the notebook's special ids (0, 2) instead of special_ids."""
    return _masking(ids, mask_id, vocab_size, (0, 2), generator)


def _per_token(logits, ids, pad_id):
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"), ids[:, 1:] != pad_id


# One wrong answer per line: a table, not code for the formatter to wrap.
# fmt: off
@pytest.mark.parametrize("checker, wrong, hint", [
    (checks.check_mask_tokens, _mask_variant(specials_ok=True), "special tokens"),
    (checks.check_mask_tokens, _mask_variant(select=0.3), "BERT selects 15%"),
    (checks.check_mask_tokens, _mask_variant(probs=(1.0, 0.0)), "every selected token became"),
    (checks.check_mask_tokens, _mask_variant(probs=(0.8, 0.2)), "left unchanged"),
    (checks.check_mask_tokens, _mask_variant(probs=(0.9, 0.0)), "random token: 10%"),
    (checks.check_mask_tokens, _mask_variant(probs=(0.1, 0.1)), "expected 80%, 10%, 10%"),
    (checks.check_mask_tokens, _mask_variant(labels_everywhere=True), "labels hold a token at every position"),
    (checks.check_mask_tokens, _mask_variant(labels_from_input=True), "labels hold the corrupted input"),
    (checks.check_mask_tokens, _mask_variant(random_from_all=True), "random replacements are special"),
    (checks.check_mask_tokens, _mask_variant(no_generator=True), "draw every random number with `generator`"),
    (checks.check_mask_tokens, _only_masked_labelled, "only the \\[MASK\\]ed positions carry labels"),
    (checks.check_next_token_loss, lambda lg, ids, pad: F.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids.reshape(-1), ignore_index=pad),
     "target of position t is the next token"),
    (checks.check_next_token_loss, lambda lg, ids, pad: F.cross_entropy(lg[:, 1:].reshape(-1, lg.shape[-1]), ids[:, :-1].reshape(-1), ignore_index=pad),
     "shift goes the wrong way"),
    (checks.check_next_token_loss, lambda lg, ids, pad: F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1)),
     "padding targets are counted"),
    (checks.check_next_token_loss, lambda lg, ids, pad: (lambda t, r: (t * r).sum() / r.numel())(*_per_token(lg, ids, pad)),
     "still divided by every position"),
    (checks.check_next_token_loss, lambda lg, ids, pad: (lambda t, r: ((t * r).sum(1) / r.sum(1)).mean())(*_per_token(lg, ids, pad)),
     "averaged each row, then the rows"),
    (checks.check_next_token_loss, lambda lg, ids, pad: (lambda t, r: (t * r).sum())(*_per_token(lg, ids, pad)), "returned the sum"),
    (checks.check_lr_schedule, lambda s, mx, w, t, mn: mx * s / w if s < w else _lr(s, mx, w, t, mn), "rate at step 0 is 0"),
    (checks.check_lr_schedule, lambda s, mx, w, t, mn: _lr(s, mx, w, t, 0.0), "cosine ends at 0"),
    (checks.check_lr_schedule, lambda s, mx, w, t, mn: mn + 0.5 * (mx - mn) * (1 + math.cos(math.pi * min(1, s / t))), "no warm-up"),
    (checks.check_lr_schedule, lambda s, mx, w, t, mn: _lr(s, mx, w, t, mn) if s < w else mn + 0.5 * (mx - mn) * (1 + math.cos(math.pi * min(1, s / t))),
     "measured from step 0"),
    (checks.check_lr_schedule, lambda s, mx, w, t, mn: _lr(s, mx, w, t, mn) if s < w else mx - (mx - mn) * min(1, (s - w) / (t - w)), "straight line"),
    (checks.check_lr_schedule, lambda s, mx, w, t, mn: _lr(s, mx, w, t, mn) if s < w else mn + 0.5 * (mx - mn) * (1 + math.cos(math.pi * (s - w) / (t - w))),
     "climbs again"),
    (checks.check_pool_and_classify, lambda h, k, head: head(h.mean(1)), "includes padding"),
    (checks.check_pool_and_classify, lambda h, k, head: head(h[:, 0]), "first position only"),
    (checks.check_pool_and_classify, lambda h, k, head: head((h * k.unsqueeze(-1)).sum(1)), "you summed"),
    (checks.check_pool_and_classify, lambda h, k, head: head(h.masked_fill(~k.unsqueeze(-1), -1e9).amax(1)), "maximum"),
    (checks.check_pool_and_classify, lambda h, k, head: head(mean_pool(h, k)).T, "shape"),
    (checks.check_perplexity, lambda losses, n: float((losses.exp() * n).sum() / n.sum()), "averaged the batches' perplexities"),
    (checks.check_perplexity, lambda losses, n: float(losses.exp().mean()), "without weights"),
    (checks.check_perplexity, lambda losses, n: math.exp(float(losses.mean())), "same weight"),
    (checks.check_perplexity, lambda losses, n: 2 ** float((losses * n).sum() / n.sum()), "bits"),
    # beyond the first audit
    (checks.check_mask_tokens, _mask_variant(corrupt_unselected=True), "tokens that were not selected were changed"),
    (checks.check_mask_tokens, _mask_variant(labels_shifted=True), "labels hold the next token"),
    (checks.check_mask_tokens, _mask_variant(hard_coded=True), "your \\[MASK\\] is token 1"),
    (checks.check_mask_tokens, _mask_variant(ignore=-1), "labelled -1"),
    (checks.check_mask_tokens, _mask_variant(ignore=0), "labelled 0; use IGNORE_INDEX"),
    (checks.check_mask_tokens, _mask_variant(independent=True), "separate draws"),
    (checks.check_mask_tokens, _mask_variant(label_dtype=torch.float32), "labels has dtype torch.float32"),
    (checks.check_mask_tokens, _notebook_specials, "you skipped the notebook's ids"),
    (checks.check_mask_tokens, _masked_labelled_after_8010_10, "only the \\[MASK\\]ed positions carry labels"),
    (checks.check_next_token_loss, lambda lg, ids, pad: _loss(lg, ids, 0), "the notebook's pad id"),
    (checks.check_next_token_loss, lambda lg, ids, pad: F.cross_entropy(lg[:, :-1], ids[:, 1:], ignore_index=pad),
     "F.cross_entropy wants logits \\(N, vocab\\)"),
    (checks.check_next_token_loss, lambda lg, ids, pad: F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1).float(), ignore_index=pad),
     "targets must be token ids"),
    (checks.check_lr_schedule, lambda s, mx, w, t, mn: _lr(s, mx, w, t, mn) if s < w else mn + 0.5 * mx * (1 + math.cos(math.pi * min(1, (s - w) / (t - w)))),
     "amplitude is max_lr - min_lr"),
    (checks.check_lr_schedule, lambda s, mx, w, t, mn: _lr(s, mx, w, t, mn) if s < w else mn + (mx - mn) * math.cos(math.pi * min(1, (s - w) / (t - w))),
     "cos\\(pi progress\\) alone goes negative"),
    (checks.check_lr_schedule, lambda s, mx, w, t, mn: torch.ones(2) * _lr(s, mx, w, t, mn), "should be one number"),
    (checks.check_pool_and_classify, lambda h, k, head: head((h * k.unsqueeze(-1)).sum(1) / h.shape[1]), "full length"),
    (checks.check_pool_and_classify, lambda h, k, head: head(mean_pool(h, ~k)), "keep is inverted"),
    (checks.check_pool_and_classify, lambda h, k, head: head(h[:, -1]), "last position only"),
    (checks.check_perplexity, lambda losses, n: float((losses * n).sum() / n.sum()), "returned the mean loss"),
    (checks.check_perplexity, lambda losses, n: math.exp(float((losses * n).sum() / len(losses))), "number of batches"),
    (checks.check_perplexity, lambda losses, n: math.exp(float((losses * n).sum())), "exponentiated a total"),
])
def test_checker_rejects_typical_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checker(wrong)
# fmt: on
