"""Byte-level BPE: round trips, special tokens, merges against brute force, a full recount and `tokenizers`."""

import json
import random
import re
from collections import Counter

import pytest

from companion.bpe import BPETokenizer, pre_tokenize
from companion.data import stdlib_corpus

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def corpus() -> str:
    return stdlib_corpus(max_chars=20_000)


@pytest.fixture(scope="module")
def tok(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus, vocab_size=256 + 300 + 2, special_tokens=(EOT, "<pad>"))


# ---- a slow reference: recount every pair before every merge ----------------------------------


def reference_merges(text: str, num_merges: int, special_tokens=(), order=lambda token: token) -> list:
    """The textbook loop, written independently of companion.bpe's counting: full recount per merge.
    Ties go to the pair whose ids come first under `order`."""
    if special_tokens:
        text = "".join(
            re.split("|".join(map(re.escape, special_tokens)), text)
        )  # drop them (no merge across)
    words = Counter(tuple(p.encode("utf-8")) for p in pre_tokenize(text))
    merges = []
    for k in range(num_merges):
        counts = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += n
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], -order(p[0]), -order(p[1])))
        merges.append(best)
        new_words = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(256 + k)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += n
        words = new_words
    return merges


def as_bytes(vocab: dict, pairs) -> list:
    return [(vocab[a], vocab[b]) for a, b in pairs]


# ---- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n\n  \t",
        "Hello, world!",
        "  leading and trailing  ",
        "it's they'll we've I'd",
        "snake_case_name = 12345 + 6.7e-8",
        "naïve café – ½ ∑ 日本語のテキスト 🙂👍🏽",
        "\x00\x01\x7f",
    ],
)
def test_text_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_random_unicode_round_trips(tok):
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x20, 0x3000) if not 0xD800 <= c <= 0xDFFF] + list(" \n\t'_") * 50
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        assert tok.decode(tok.encode(text)) == text


def test_any_bytes_round_trip_including_invalid_utf8(tok):
    rng = random.Random(1)
    samples = [
        b"",
        b"\xff",
        b"\xc3",
        b"abc\xe2\x82",
        b"\xed\xa0\x80",
        b"\x80\x80 the the",
        EOT.encode() + b"\xfe",
    ]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))) for _ in range(300)]
    for data in samples:
        ids = tok.encode_bytes(data)
        assert tok.decode_bytes(ids) == data


def test_decode_replaces_bytes_that_are_not_utf8(tok):
    ids = tok.encode_bytes(b"ok \xff")
    assert tok.decode(ids) == "ok \ufffd"
    # A sequence cut inside a multi-byte character, as sampling may leave it, still decodes.
    euro = list("€".encode())  # the byte tokens 0xE2 0x82 0xAC
    assert tok.decode(euro) == "€"
    assert tok.decode(euro[:2]) == "\ufffd"
    assert tok.decode_bytes(euro[:2]) == b"\xe2\x82"


def test_lone_surrogate_encodes_and_decodes_as_replacement(tok):
    assert "\ufffd" in tok.decode(tok.encode("a\ud800b"))


def test_empty_text():
    empty = BPETokenizer.train("", vocab_size=300)
    assert empty.merges == {} and empty.vocab_size == 256
    assert empty.encode("") == [] and empty.decode([]) == "" and empty.decode_bytes([]) == b""


def test_training_stops_when_every_piece_is_one_token():
    small = BPETokenizer.train("ab ab ab", vocab_size=400)
    assert [small.vocab[i] for i in small.merges.values()] == [b"ab", b" ab"]
    assert small.vocab_size == 258 and small.encode("ab ab") == [256, 257]


# ---- special tokens -------------------------------------------------------------------------


def test_special_tokens_are_one_id_after_the_merges(tok):
    assert tok.special_ids == {EOT: 256 + 300, "<pad>": 256 + 301}
    assert tok.vocab_size == 256 + 300 + 2 and len(tok.merges) == 300
    ids = tok.encode(f"first{EOT}second{EOT}{EOT}<pad>")
    assert ids.count(tok.special_ids[EOT]) == 3 and ids.count(tok.special_ids["<pad>"]) == 1
    assert tok.decode(ids) == f"first{EOT}second{EOT}{EOT}<pad>"


def test_special_tokens_are_never_merged_with_their_neighbours():
    text = ("a" + EOT + "b" + EOT) * 200 + " hello world" * 10
    trained = BPETokenizer.train(text, vocab_size=300, special_tokens=(EOT,))
    learnt = [trained.vocab[i] for i in trained.merges.values()]
    assert not any(b"|" in t or b"<" in t or b">" in t for t in learnt), learnt
    # Without the special token the same text's most frequent pairs are inside "<|endoftext|>".
    plain = BPETokenizer.train(text, vocab_size=300)
    assert any(b"|" in plain.vocab[i] for i in plain.merges.values())


def test_longer_special_token_wins_over_its_prefix():
    trained = BPETokenizer.train("x y z", vocab_size=260, special_tokens=("<a>", "<a>b"))
    ids = trained.encode("<a>b<a>")
    assert ids == [trained.special_ids["<a>b"], trained.special_ids["<a>"]]


# ---- merges ---------------------------------------------------------------------------------


def test_training_is_deterministic(corpus):
    first = BPETokenizer.train(corpus, vocab_size=400)
    second = BPETokenizer.train(corpus, vocab_size=400)
    assert list(first.merges.items()) == list(second.merges.items())


def test_first_merges_are_the_most_frequent_pairs():
    text = "low lower lowest newer wider new newest slow slower " * 3 + "widest low"
    # Brute force on strings: every adjacent pair of every word, counted by hand.
    words = re.findall(r" ?[a-z]+", text)
    counts = Counter(w[i : i + 2] for w in words for i in range(len(w) - 1))
    top = max(counts.values())
    expected_first = min(pair for pair, n in counts.items() if n == top)  # ties: smaller bytes first
    trained = BPETokenizer.train(text, vocab_size=256 + 3)
    first = trained.vocab[256]
    assert first == expected_first.encode(), (first, counts.most_common(5))
    # The second merge is the most frequent pair once the first is applied.
    merged = [w.replace(expected_first, "\0") for w in words]
    counts2 = Counter((w[i], w[i + 1]) for w in merged for i in range(len(w) - 1))
    top2 = max(counts2.values())
    best2 = min(
        (pair for pair, n in counts2.items() if n == top2),
        key=lambda p: tuple(256 if c == "\0" else ord(c) for c in p),
    )
    as_text = "".join(expected_first if c == "\0" else c for c in best2)
    assert trained.vocab[257] == as_text.encode()


def test_incremental_counts_give_the_same_merges_as_a_full_recount(corpus):
    specials = (EOT,)
    text = corpus[:12_000] + EOT + corpus[12_000:]
    trained = BPETokenizer.train(text, vocab_size=256 + 200 + 1, special_tokens=specials)
    assert list(trained.merges) == reference_merges(text, 200, specials)


def test_encode_applies_merges_in_rank_order():
    a, b, c = b"abc"
    ab_first = BPETokenizer({(a, b): 256, (b, c): 257})
    bc_first = BPETokenizer({(b, c): 256, (a, b): 257})
    assert ab_first.encode("abc") == [256, c]
    assert bc_first.encode("abc") == [a, 256]
    # Merges build on merges: "abab" -> (ab)(ab) -> (abab).
    nested = BPETokenizer({(a, b): 256, (256, 256): 257})
    assert nested.encode("abab") == [257] and nested.decode([257]) == "abab"


def test_encode_gives_back_the_training_pieces_as_single_tokens(corpus):
    trained = BPETokenizer.train(corpus, vocab_size=256 + 300)
    ids = trained.encode(corpus)
    assert trained.decode(ids) == corpus
    assert len(ids) < 0.5 * len(corpus.encode())  # 300 merges halve the text, at least


# ---- against Hugging Face tokenizers -------------------------------------------------------


def gpt2_byte_chars() -> dict:
    """GPT-2's byte -> printable character table, which byte-level `tokenizers` uses."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def hf_train(text: str, vocab_size: int, special_tokens=()):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator([text], trainer)
    assert tokenizers.__version__
    return hf


def hf_merges_as_bytes(hf) -> list:
    to_byte = {ch: b for b, ch in gpt2_byte_chars().items()}
    merges = json.loads(hf.to_str())["model"]["merges"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in merges]
    return [(bytes(to_byte[c] for c in left), bytes(to_byte[c] for c in right)) for left, right in merges]


@pytest.fixture(scope="module")
def hf_and_ours(corpus):
    vocab_size = 256 + 1 + 250
    hf = hf_train(corpus, vocab_size, special_tokens=(EOT,))
    ours = BPETokenizer.train(corpus, vocab_size, special_tokens=(EOT,))
    return hf, ours


def test_same_merges_as_tokenizers_up_to_the_first_tie(corpus, hf_and_ours):
    hf, ours = hf_and_ours
    theirs = hf_merges_as_bytes(hf)
    mine = as_bytes(ours.vocab, ours.merges)
    assert len(theirs) == len(mine) == 250
    same = next((k for k, (x, y) in enumerate(zip(theirs, mine)) if x != y), len(mine))
    assert same >= 10, (theirs[: same + 1], mine[: same + 1])
    if same < len(mine):
        # Where they part, both picked a pair of the same, highest count: a tie, broken differently.
        words = Counter(tuple(bytes([b]) for b in piece.encode()) for piece in pre_tokenize(corpus))
        for left, right in mine[:same]:
            words = Counter({_merge_bytes(w, left, right): n for w, n in words.items()})
        counts = Counter()
        for w, n in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += n
        top = max(counts.values())
        assert counts[theirs[same]] == counts[mine[same]] == top
    # Ties reorder merges far more often than they change which ones are learnt.
    assert len(set(theirs) ^ set(mine)) <= len(mine) // 10


def _merge_bytes(word: tuple, left: bytes, right: bytes) -> tuple:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
            out.append(left + right)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def test_tokenizers_tie_order_reproduces_its_merges_exactly(corpus, hf_and_ours):
    hf, _ = hf_and_ours
    # tokenizers numbers the bytes in the order of their GPT-2 characters; merged tokens follow.
    chars = gpt2_byte_chars()
    rank = {byte: r for r, byte in enumerate(sorted(range(256), key=lambda b: chars[b]))}
    merges = reference_merges(corpus, 250, (EOT,), order=lambda t: rank.get(t, t))
    vocab = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = vocab[a] + vocab[b]
    assert as_bytes(vocab, merges) == hf_merges_as_bytes(hf)


def test_encode_matches_tokenizers_given_its_merges(corpus, hf_and_ours):
    hf, _ = hf_and_ours
    # Our encoder, handed the merges `tokenizers` learnt, cuts text into the same tokens.
    ids_of = {bytes([i]): i for i in range(256)}
    merges = {}
    for left, right in hf_merges_as_bytes(hf):
        ids_of[left + right] = 256 + len(merges)
        merges[(ids_of[left], ids_of[right])] = 256 + len(merges)
    ours = BPETokenizer(merges)
    to_byte = {ch: b for b, ch in gpt2_byte_chars().items()}
    sample = corpus[5_000:9_000] + " naïve café 日本語 🙂 x  y\n\n z"
    theirs = [bytes(to_byte[c] for c in t) for t in hf.encode(sample).tokens]
    assert [ours.vocab[i] for i in ours.encode(sample)] == theirs


# ---- errors a learner can act on ------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: BPETokenizer.train(b"bytes", 300), TypeError, r"text must be a str, got bytes"),
        (
            lambda: BPETokenizer.train("abc", 255),
            ValueError,
            r"vocab_size=255: expected a whole number >= 256",
        ),
        (
            lambda: BPETokenizer.train("abc", 257, ("<a>", "<b>")),
            ValueError,
            r"vocab_size=257: expected .* >= 258.*2 special",
        ),
        (lambda: BPETokenizer.train("abc", 300.0), ValueError, r"vocab_size=300.0: expected a whole number"),
        (
            lambda: BPETokenizer.train("abc", 300, EOT),
            TypeError,
            r"special_tokens='<\|endoftext\|>' must be a sequence",
        ),
        (
            lambda: BPETokenizer.train("abc", 300, ("<a>", "<a>")),
            ValueError,
            r"lists \['<a>'\] more than once",
        ),
        (
            lambda: BPETokenizer.train("abc", 300, ("",)),
            ValueError,
            r"special_tokens holds ''; .* non-empty str",
        ),
        (
            lambda: BPETokenizer({(97, 98): 300}),
            ValueError,
            r"merge number 0 is \(97, 98\) -> 300; .* 256, 257",
        ),
        (lambda: BPETokenizer({(97, 256): 256}), ValueError, r"merge number 0 is \(97, 256\) -> 256"),
        (lambda: BPETokenizer({}).decode([0, 256]), ValueError, r"token id 256; .* \[0, 255\]"),
        (lambda: BPETokenizer({}).decode([-1]), ValueError, r"token id -1"),
        (lambda: BPETokenizer({}).decode("hello"), TypeError, r"takes token ids, got a str"),
        (
            lambda: BPETokenizer({}).encode(b"hi"),
            TypeError,
            r"text must be a str, got bytes; for raw bytes use encode_bytes",
        ),
        (lambda: BPETokenizer({}).encode_bytes("hi"), TypeError, r"data must be bytes, got str"),
    ],
)
def test_bad_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
