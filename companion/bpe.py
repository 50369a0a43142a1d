"""Byte-level byte-pair encoding (BPE): a tokenizer the reader trains on their own text.

The chapter on modern decoders explains it; `BPETokenizer.train` holds the merge loop.

Training starts from the 256 byte values and repeats one step: find the most frequent adjacent
pair of tokens in the training text and make it a new token (Sennrich et al., 2016; byte-level
as in GPT-2, Radford et al., 2019). Encoding replays those merges, lowest rank first.

Choices, stated once:

- Pre-tokenisation. Text is cut into pieces with GPT-2's pattern before any counting, so no
  merge crosses a word boundary ("dog." never becomes one token). GPT-2 writes the pattern with
  ``\\p{L}`` and ``\\p{N}``, which the standard-library ``re`` lacks; ``[^\\W\\d_]`` and ``\\d``
  stand in for them. They agree on all ASCII text and on almost all letters and digits beyond it.
- Counting. A pair is counted at every position it occupies, so "aaa" holds (a, a) twice;
  a merge rewrites a piece left to right, so "aaa" becomes "aa" "a".
- Ties. When pairs share the highest count, the one with the smaller token ids wins:
  (32, 116) before (101, 32). Hugging Face ``tokenizers`` also breaks ties by smaller ids, but
  its ids for the 256 bytes are in the order of the printable characters GPT-2 maps bytes to
  ("!" is byte 33 and comes first; the space, byte 32, becomes "Ġ" and comes after "~"), so
  after the first tie the two may pick different, equally frequent pairs. Up to that merge the
  merges are the same, and a trainer that breaks ties in its order gives exactly its merges
  (tests/test_bpe.py checks both). One more rule differs: when a merge makes bytes that are
  already a token, ``tokenizers`` reuses that id and this trainer gives a second one (no such
  merge occurs in 3,000 merges of the course corpus).
- Incremental counts. Only the pieces that hold the merged pair change, so only their pair
  counts are updated; a heap finds the most frequent pair. A full recount per merge gives the
  same merges and is what the tests compare against.
- Special tokens ("<|endoftext|>") are cut out of the text before pre-tokenisation, so they are
  never counted nor merged with their neighbours; each encodes as one id after the merges.
- Bytes that are not UTF-8. ``encode_bytes`` takes any bytes and ``decode_bytes`` gives them
  back unchanged. ``decode`` returns a str and puts U+FFFD where the bytes of the ids are not
  valid UTF-8, as a sampled sequence that stops inside a character will be.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from .data import _token_list
from .validation import whole_number

# GPT-2's pre-tokenisation pattern: contractions, words, numbers, punctuation runs, each taking
# one leading space; runs of spaces keep their last space for the word that follows.
GPT2_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def pre_tokenize(text: str) -> list[str]:
    """The pieces GPT-2's pattern cuts text into; merges never cross from one piece to the next."""
    return GPT2_SPLIT.findall(text)


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """ids with every occurrence of pair, read left to right, replaced by new_id."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """Byte-level BPE: 256 byte tokens, then one token per merge in rank order, then the special tokens.

    tok = BPETokenizer.train(text, vocab_size=1280, special_tokens=("<|endoftext|>",))
    tok.decode(tok.encode("Hello<|endoftext|>")) == "Hello<|endoftext|>"
    """

    def __init__(self, merges: dict[tuple[int, int], int], special_tokens: Iterable[str] = ()):
        self.merges = dict(merges)  # (left id, right id) -> new id, in the order they were learnt
        for rank, ((left, right), new_id) in enumerate(self.merges.items()):
            if new_id != 256 + rank or not (0 <= left < new_id and 0 <= right < new_id):
                raise ValueError(
                    f"merge number {rank} is ({left}, {right}) -> {new_id}; merges must give "
                    f"new ids 256, 257, ... in order, each from two ids made before it"
                )
        self.special_tokens = _check_special_tokens(special_tokens)
        self.vocab = {i: bytes([i]) for i in range(256)}  # id -> the bytes it stands for
        for (left, right), new_id in self.merges.items():
            self.vocab[new_id] = self.vocab[left] + self.vocab[right]
        first_special = 256 + len(self.merges)
        self.special_ids = {s: first_special + i for i, s in enumerate(self.special_tokens)}
        for s, i in self.special_ids.items():
            self.vocab[i] = s.encode("utf-8")
        self._special_pattern = _special_pattern(self.special_tokens)
        self._cache: dict[bytes, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + len(self.special_tokens)

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={self.special_tokens})"
        )

    # ---- training -------------------------------------------------------------------------

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Iterable[str] = ()) -> BPETokenizer:
        """Learn vocab_size - 256 - len(special_tokens) merges from text.

        Stops early, with a smaller vocabulary, if every piece of the text is already one token.
        """
        if not isinstance(text, str):
            raise TypeError(
                f"text must be a str, got {type(text).__name__}; "
                "decode bytes first, e.g. data.decode('utf-8', errors='replace')"
            )
        special_tokens = _check_special_tokens(special_tokens)
        smallest = 256 + len(special_tokens)
        whole_number(
            "vocab_size",
            vocab_size,
            smallest,
            note=f"256 byte tokens + {len(special_tokens)} special tokens, then one per merge",
        )
        num_merges = vocab_size - smallest

        # Every distinct piece once, as a list of byte ids, with how often it occurs.
        chunks = _split_specials(text, _special_pattern(special_tokens))
        piece_counts = Counter(
            piece.encode("utf-8", "surrogatepass") for chunk in chunks for piece in pre_tokenize(chunk)
        )
        pieces = [list(p) for p in piece_counts]
        freqs = list(piece_counts.values())

        # counts[pair]: occurrences in the whole text; where[pair]: the pieces that (may) hold it.
        counts: Counter[tuple[int, int]] = Counter()
        where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for i, ids in enumerate(pieces):
            for pair in zip(ids, ids[1:]):
                counts[pair] += freqs[i]
                where[pair].add(i)
        # A heap of (-count, pair) pops the highest count first and, on a tie, the smaller pair.
        # Each change pushes the pair's new count; an entry whose count is out of date is skipped
        # when it surfaces.
        heap = [(-n, pair) for pair, n in counts.items()]
        heapq.heapify(heap)

        merges: dict[tuple[int, int], int] = {}
        while len(merges) < num_merges:
            pair = _pop_most_frequent(heap, counts)
            if pair is None:
                break  # no piece has two tokens left
            new_id = 256 + len(merges)
            merges[pair] = new_id
            # Only the pieces that hold the pair change, so only their pairs are recounted.
            for i in sorted(where.pop(pair)):
                old = pieces[i]
                new = merge(old, pair, new_id)
                if len(new) == len(old):
                    continue  # an earlier merge already took the pair from this piece
                pieces[i] = new
                change = Counter(zip(new, new[1:]))
                change.subtract(zip(old, old[1:]))
                for p, delta in change.items():
                    if delta:
                        counts[p] += delta * freqs[i]
                        heapq.heappush(heap, (-counts[p], p))
                        if delta > 0:
                            where[p].add(i)
        return cls(merges, special_tokens)

    # ---- encoding and decoding ------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of text. Special tokens become their one id; every other str round-trips
        through decode (a lone surrogate, which UTF-8 cannot hold, comes back as U+FFFD)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}; for raw bytes use encode_bytes")
        return self._encode(text, errors="surrogatepass")

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of any bytes, valid UTF-8 or not; decode_bytes gives the same bytes back."""
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}; for text use encode")
        # surrogateescape turns each invalid byte into a stand-in character and back again.
        return self._encode(bytes(data).decode("utf-8", "surrogateescape"), errors="surrogateescape")

    def decode_bytes(self, ids) -> bytes:
        """The bytes the ids stand for, exactly."""
        ids = _token_list(ids, self.vocab_size, "BPETokenizer")
        return b"".join(self.vocab[i] for i in ids)

    def decode(self, ids) -> str:
        """The text the ids stand for; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _encode(self, text: str, errors: str) -> list[int]:
        ids: list[int] = []
        for chunk in _split_specials(text, self._special_pattern, keep=True):
            if chunk in self.special_ids:
                ids.append(self.special_ids[chunk])
                continue
            for piece in pre_tokenize(chunk):
                ids.extend(self._encode_piece(piece.encode("utf-8", errors)))
        return ids

    def _encode_piece(self, piece: bytes) -> list[int]:
        """Apply the merges to one piece, the earliest-learnt pair present first, until none applies."""
        if piece in self._cache:
            return self._cache[piece]
        ids = list(piece)
        while len(ids) >= 2:
            # A merge's new id is 256 + its rank, so the smallest id is the earliest merge.
            pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, _NEVER))
            if pair not in self.merges:
                break
            ids = merge(ids, pair, self.merges[pair])
        if len(self._cache) < _CACHE_SIZE:
            self._cache[piece] = ids
        return ids


_NEVER = float("inf")
_CACHE_SIZE = 100_000  # distinct pieces remembered by encode; the course corpus has about 10,000


def _pop_most_frequent(heap: list, counts: Counter) -> tuple[int, int] | None:
    """The pair with the highest count (smaller ids on a tie), skipping out-of-date heap entries."""
    while heap:
        negative_count, pair = heapq.heappop(heap)
        if -negative_count == counts[pair] and counts[pair] > 0:
            return pair
    return None


def _special_pattern(special_tokens: tuple[str, ...]) -> re.Pattern | None:
    """A pattern matching any special token, or None when there are none."""
    if not special_tokens:
        return None
    # Longest first, so "<a>" cannot take the start of "<a>b" when both are special tokens.
    by_length = sorted(special_tokens, key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, by_length)) + ")")


def _split_specials(text: str, pattern: re.Pattern | None, keep: bool = False) -> list[str]:
    """text cut at each special token: the stretches between them, and the tokens themselves if keep."""
    if pattern is None:
        return [text]
    parts = pattern.split(text)  # odd positions hold the special tokens matched
    return [p for i, p in enumerate(parts) if p and (keep or i % 2 == 0)]


def _check_special_tokens(special_tokens) -> tuple[str, ...]:
    if isinstance(special_tokens, (str, bytes)):
        raise TypeError(
            f"special_tokens={special_tokens!r} must be a sequence of strings, "
            f"e.g. ({special_tokens!r},), not one string"
        )
    special_tokens = tuple(special_tokens)
    for s in special_tokens:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special_tokens holds {s!r}; each special token must be a non-empty str")
    repeated = sorted({s for s in special_tokens if special_tokens.count(s) > 1})
    if repeated:
        raise ValueError(
            f"special_tokens={special_tokens!r} lists {repeated} more than once; "
            "each special token needs exactly one id"
        )
    return special_tokens
