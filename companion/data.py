"""Offline data: byte and character tokenizers, a text corpus from the standard library, synthetic tasks.

Chapters 1, 5, 6 and 7 draw their data from here; nothing is downloaded.
"""

from __future__ import annotations

import importlib
import inspect
from itertools import groupby

import torch
from torch import Tensor

from .validation import expect, is_whole, one_of, whole_number

# A target the loss skips (PyTorch's convention): unselected MLM positions, padding, prompts. Defined here,
# with the targets it marks, because data.py sits below training.py; training.IGNORE_INDEX is this one.
IGNORE_INDEX = -100


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary of 256, nothing to train, every string round-trips."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        ids = _token_list(ids, self.vocab_size, "ByteTokenizer")
        return bytes(ids).decode("utf-8", errors="replace")


class CharTokenizer:
    """One token per distinct character of a training text, plus any special tokens given."""

    def __init__(self, text: str, specials: tuple[str, ...] = ()):
        if not text:
            raise ValueError("CharTokenizer needs a non-empty text to build its vocabulary from")
        self.specials = tuple(specials)
        self.itos = list(self.specials) + sorted(set(text))
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        missing = sorted(set(text) - set(self.stoi))
        if missing:
            raise ValueError(f"characters {missing[:10]} are not in this tokenizer's vocabulary")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        ids = _token_list(ids, self.vocab_size, "CharTokenizer")
        return "".join(self.itos[i] for i in ids)


def _token_list(ids, vocab_size: int, who: str) -> list[int]:
    """ids (a 1-D tensor or a sequence of ints) as a list, each checked to be a token id in [0, vocab_size)."""
    if isinstance(ids, Tensor):
        if ids.dim() > 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(
                f"{who}.decode takes one sequence of integer token ids; got a {ids.dtype} tensor of shape "
                f"{tuple(ids.shape)} (decode each row of a batch on its own)"
            )
        ids = ids.reshape(-1).tolist()
    elif isinstance(ids, (str, bytes)):
        raise TypeError(
            f"{who}.decode takes token ids, got a {type(ids).__name__}; to turn text into ids use encode"
        )
    else:
        ids = list(ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise ValueError(
                f"{who}.decode got token id {i!r}; ids must be whole numbers in the vocabulary [0, {vocab_size - 1}]"
            )
    return ids


STDLIB_MODULES = (
    "json",
    "textwrap",
    "collections",
    "functools",
    "itertools",
    "argparse",
    "pathlib",
    "string",
    "random",
    "statistics",
    "fractions",
    "decimal",
    "heapq",
    "bisect",
    "calendar",
    "csv",
    "difflib",
    "shutil",
    "tempfile",
    "logging",
    "inspect",
    "dataclasses",
    "enum",
    "typing",
    "email.message",
    "http.client",
)


def stdlib_corpus(modules: tuple[str, ...] = STDLIB_MODULES, max_chars: int | None = None) -> str:
    """English prose that every Python install has: the docstrings of some standard-library modules.

    Deterministic for a given Python version; ASCII only, so bytes and characters coincide.
    """
    seen: set[str] = (
        set()
    )  # by content: ids of freed strings are reused, which made the text vary from run to run
    parts: list[str] = []
    for name in modules:
        module = importlib.import_module(name)
        for obj in [module] + [
            v for _, v in sorted(vars(module).items()) if inspect.isclass(v) or inspect.isfunction(v)
        ]:
            doc = inspect.getdoc(obj)
            if doc and doc not in seen and len(doc) > 80:
                seen.add(doc)
                parts.append(doc.encode("ascii", errors="ignore").decode())
    text = "\n\n".join(parts)
    return text if max_chars is None else text[:max_chars]


def train_val_split(ids: Tensor, val_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """Split a 1-D token stream: the first part trains, the last part validates."""
    expect(
        isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0,
        "val_fraction",
        val_fraction,
        "a number in (0, 1)",
    )
    cut = int(len(ids) * (1.0 - val_fraction))
    return ids[:cut], ids[cut:]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_task_args(batch: int, length: int, vocab: int, min_vocab: int = 2) -> None:
    whole_number("batch", batch)
    whole_number("length", length)
    whole_number("vocab", vocab, min_vocab)


def copy_task(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(source, target) with target == source: ids in [1, vocab); 0 is left free for padding or start."""
    _check_task_args(batch, length, vocab)
    src = torch.randint(1, vocab, (batch, length), generator=_generator(seed))
    return src, src.clone()


def reverse_task(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(source, target) with target the source reversed."""
    src, _ = copy_task(batch, length, vocab, seed)
    return src, src.flip(-1)


def sort_task(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(source, target) with target the source sorted ascending."""
    src, _ = copy_task(batch, length, vocab, seed)
    return src, src.sort(dim=-1).values


def recall_task(
    batch: int, length: int, distance: int | Tensor, vocab: int, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Recall at distance: a marker token (0) is followed by a key token; `distance` positions after the
    marker the sequence ends, and the answer is the key. Filler tokens are drawn from [2, vocab).

    Returns (ids (batch, length), answer (batch,)). The marker sits at position length - 1 - distance,
    so solving the task needs information from `distance` steps back. Token 1 is never used (free
    as a query or padding token). `distance` may be an int or a (batch,) tensor of distances.
    """
    _check_task_args(batch, length, vocab, min_vocab=4)
    distances = torch.full((batch,), distance) if isinstance(distance, int) else distance.long()
    if distances.shape != (batch,):
        raise ValueError(f"distance has shape {tuple(distances.shape)}; expected an int or shape ({batch},)")
    if int(distances.min()) < 1 or int(distances.max()) > length - 1:
        raise ValueError(
            f"distance must be in [1, {length - 1}] for length={length}, got {distances.tolist()[:8]}"
        )
    g = _generator(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    rows = torch.arange(batch)
    marker_pos = length - 1 - distances
    ids[rows, marker_pos] = 0
    # The key follows the marker; when distance is 1 the key is also the last token.
    answer = ids[rows, marker_pos + 1].clone()
    return ids, answer


def recall_batches(batch: int, length: int, max_distance: int, vocab: int, seed: int = 0):
    """A function step -> (ids, answer): recall-task batches with distances drawn uniformly from
    [1, max_distance] for each row, seeded by (seed, step) so every run sees the same data."""
    expect(
        is_whole(max_distance) and 1 <= max_distance <= length - 1,
        "max_distance",
        max_distance,
        f"a whole number in [1, {length - 1}] for length={length}",
    )

    def batch_at(step: int) -> tuple[Tensor, Tensor]:
        g = _generator(seed * 1_000_003 + step)
        distances = torch.randint(1, max_distance + 1, (batch,), generator=g)
        return recall_task(batch, length, distances, vocab, seed=seed * 1_000_003 + step)

    return batch_at


def recall_targets(ids: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-position targets for recall-task sequences (batch, seq): the key at every position from the
    key onwards, ignore_index before it. Position marker_pos + k asks for the key seen k steps back, so
    one sequence trains every distance it spans.
    """
    markers = ids == 0
    counts = markers.sum(dim=1)
    if (counts != 1).any():
        bad = int((counts != 1).nonzero()[0])
        raise ValueError(
            f"row {bad} holds {int(counts[bad])} markers (token 0); each row needs exactly one marker"
        )
    marker_pos = markers.long().argmax(dim=1)
    if (marker_pos == ids.shape[1] - 1).any():
        raise ValueError("a marker (token 0) is the last token, so no key follows it")
    key = ids[torch.arange(ids.shape[0]), marker_pos + 1]
    after = torch.arange(ids.shape[1], device=ids.device)[None, :] > marker_pos[:, None]
    return torch.where(after, key[:, None], torch.full_like(ids, ignore_index))


def encode_corpus(text: str, tokenizer, context_length: int) -> Tensor:
    """The whole text as one 1-D stream of token ids, checked long enough for one context window."""
    if not text:
        raise ValueError("the corpus is empty; give some text to train on")
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    if len(ids) < context_length:
        raise ValueError(
            f"the corpus has {len(ids)} tokens but one training window needs context_length={context_length}; "
            "give more text or a shorter context"
        )
    return ids


def _check_windows(ids: Tensor, batch_size: int, seq_len: int, what: str) -> int:
    if ids.dim() != 1:
        raise ValueError(f"ids has shape {tuple(ids.shape)}; expected one 1-D stream of token ids")
    whole_number("seq_len", seq_len, 2, note="one token in, the next one out")
    whole_number("batch_size", batch_size)
    if len(ids) < seq_len:
        raise ValueError(f"the {what} has {len(ids)} tokens, fewer than one window of seq_len={seq_len}")
    return len(ids) - seq_len + 1


def random_windows(ids: Tensor, batch_size: int, seq_len: int, seed: int = 0):
    """A function step -> (windows,) with windows (batch_size, seq_len): distinct random slices of ids.

    The batch depends only on (seed, step), so a resumed run or another process sees the same data.
    """
    starts = _check_windows(ids, batch_size, seq_len, "training split")
    if batch_size > starts:
        raise ValueError(
            f"batch_size={batch_size} is larger than the data: the stream of {len(ids)} tokens holds only "
            f"{starts} distinct windows of seq_len={seq_len}; use a smaller batch or more text"
        )
    offsets = torch.arange(seq_len)

    def batch(step: int) -> tuple[Tensor]:
        chosen = torch.randperm(starts, generator=_generator(seed * 1_000_003 + step))[:batch_size]
        return (ids[chosen[:, None] + offsets],)

    return batch


def sequential_windows(ids: Tensor, batch_size: int, seq_len: int) -> list[tuple[Tensor]]:
    """Non-overlapping windows in order, grouped into full batches: a fixed evaluation set."""
    _check_windows(ids, batch_size, seq_len, "evaluation split")
    count = len(ids) // seq_len
    if count < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the data: the split holds {count} windows of "
            f"seq_len={seq_len}; use a smaller batch or a larger split"
        )
    windows = ids[: count * seq_len].view(count, seq_len)
    return [(windows[i : i + batch_size],) for i in range(0, count - batch_size + 1, batch_size)]


def in_context_task(
    batch: int, pairs: int, symbols: int = 8, rule: str = "lookup", seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Prompts of `pairs` examples "x y" whose rule y = f(x) is drawn afresh for every sequence, so the
    only way to predict y is from the examples earlier in the same prompt (in-context learning).

    rule "lookup": f is a random table, and x is drawn with replacement, so a later x may repeat an
    earlier one. rule "shift": f(x) = (x + c) mod symbols for a random c.
    Token ids: x in [0, symbols), y in [symbols, 2 * symbols).
    Returns (ids (batch, 2 * pairs), targets) with targets == ids at every y and IGNORE_INDEX elsewhere.
    """
    _check_task_args(batch, pairs, symbols)
    one_of("rule", rule, ("lookup", "shift"))
    g = _generator(seed)
    x = torch.randint(symbols, (batch, pairs), generator=g)
    if rule == "lookup":
        y = torch.randint(symbols, (batch, symbols), generator=g).gather(1, x)
    else:
        y = (x + torch.randint(symbols, (batch, 1), generator=g)) % symbols
    ids = torch.stack([x, y + symbols], dim=-1).reshape(batch, 2 * pairs)
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, 1::2] = ids[:, 1::2]
    return ids, targets


SCRAMBLE_ATTEMPTS = 1000  # windows drawn in a row, none changed by shuffling, before the text is refused


def scrambled_task(
    text: str, tokenizer, count: int, seq_len: int, unit: str = "word", seed: int = 0
) -> tuple[Tensor, Tensor]:
    """A labelled task built from any text: has this window been scrambled? Half the windows (label 1)
    have their characters shuffled, within each word (unit="word": "the wrods are all hree") or across
    the whole window (unit="window"); the other half (label 0) are untouched. Both halves use the same
    characters, so counting characters cannot tell them apart: it takes knowing how text is ordered,
    which is what pre-training on the text teaches.

    Returns (ids (count, seq_len), labels (count,)).
    """
    one_of("unit", unit, ("word", "window"))
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    whole_number("count", count)
    whole_number("seq_len", seq_len, 2, note="one character cannot be scrambled")
    if len(text) < seq_len + 1:
        raise ValueError(f"the text has {len(text)} characters, fewer than one window of seq_len={seq_len}")
    if unit == "window":
        changeable = len(set(text)) >= 2
    else:
        changeable = any(
            alpha and len(set(run)) >= 2
            for alpha, run in ((a, "".join(r)) for a, r in groupby(text, str.isalpha))
        )
    if count > 1 and not changeable:
        what = (
            "a word of two or more different letters"
            if unit == "word"
            else "two or more different characters"
        )
        raise ValueError(
            f"text cannot be scrambled with unit={unit!r}: shuffling leaves it unchanged; it needs {what}"
        )
    g = _generator(seed)
    labels = torch.arange(count) % 2
    rows = []
    for label in labels.tolist():
        for attempt in range(
            SCRAMBLE_ATTEMPTS + 1
        ):  # a window that shuffling leaves unchanged is drawn again
            if attempt == SCRAMBLE_ATTEMPTS:
                what = (
                    "a word of two or more different letters"
                    if unit == "word"
                    else "two or more different characters"
                )
                raise ValueError(
                    f"text cannot be scrambled with unit={unit!r}: {SCRAMBLE_ATTEMPTS} windows of seq_len={seq_len} "
                    f"in a row came out of the shuffle unchanged; the text needs windows with {what}"
                )
            start = int(torch.randint(len(text) - seq_len, (1,), generator=g))
            window = text[start : start + seq_len]
            if not label:
                break
            if unit == "window":
                chars = [window[i] for i in torch.randperm(seq_len, generator=g).tolist()]
            else:
                chars = list(window)
                i = 0
                while i < seq_len:
                    j = i
                    while j < seq_len and window[j].isalpha():
                        j += 1
                    for k, m in zip(
                        range(i, j), (i + p for p in torch.randperm(j - i, generator=g).tolist())
                    ):
                        chars[k] = window[m]
                    i = j + 1
            if "".join(chars) != window:
                window = "".join(chars)
                break
        rows.append(tokenizer.encode(window))
    return torch.tensor(rows, dtype=torch.long), labels
