"""`python -m companion`: generate and train end to end, on tiny random models made in tmp_path, in
subprocesses with a timeout; the text printed is the text `generate` makes in this process."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the hub

import pytest
import torch
import transformers
from tokenizers import ByteLevelBPETokenizer

from companion import build_model, generate
from companion.__main__ import main
from companion.config import TransformerConfig
from companion.data import ByteTokenizer
from companion.pretrained import load_pretrained, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
}
ENV.pop("WORLD_SIZE", None)
TINY = [
    "--preset",
    "tiny",
    "--set",
    "layers=1",
    "--set",
    "d_model=32",
    "--set",
    "heads=2",
    "--set",
    "context_length=64",
    "--set",
    "bias=false",
]
TEXT = (
    "Attention weighs every earlier token; the cache keeps their keys and values, so each new token "
    "costs one step. "
) * 40
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def cli(*args, timeout=180, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "companion", *map(str, args)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kwargs.get("cwd"),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny decoder trained for a few steps by the command line, and its corpus."""
    folder = tmp_path_factory.mktemp("train")
    (folder / "corpus.txt").write_text(TEXT)
    run = cli(
        "train",
        *TINY,
        "--corpus",
        folder / "corpus.txt",
        "--steps",
        6,
        "--batch-size",
        4,
        "--seq-len",
        32,
        "--warmup",
        2,
        "--checkpoint",
        folder / "tiny.pt",
        "--no-progress",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return folder, run


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A small random GPT-2 with a byte-level BPE tokenizer, saved together as the hub stores gpt2."""
    folder = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [TEXT], vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False
    )
    bpe.save_model(str(folder))
    tokenizer = transformers.GPT2Tokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt")
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=300,
        n_positions=64,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def run_main(*args):
    """main() in this process: (exit code, stdout, stderr); for help and errors, which need no subprocess."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit:  # sys.exit("message") prints the message and exits with 1
            code = exit.code if isinstance(exit.code, int) else 1
            if isinstance(exit.code, str):
                err.write(exit.code)
    return code, out.getvalue(), err.getvalue()


def test_module_runs_as_a_command():
    run = cli("--help", timeout=60)
    assert run.returncode == 0 and "{generate,train}" in run.stdout


@pytest.mark.parametrize(
    "command, words",
    [
        (
            "generate",
            [
                "source",
                "--prompt",
                "--max-new-tokens",
                "--temperature",
                "--top-k",
                "--top-p",
                "--seed",
                "examples",
            ],
        ),
        (
            "train",
            [
                "--preset",
                "--config",
                "--corpus",
                "--steps",
                "--checkpoint",
                "--resume",
                "torchrun",
                "examples",
            ],
        ),
    ],
)
def test_help_explains_each_command(command, words):
    code, out, _ = run_main(command, "--help")
    assert code == 0
    for word in words:
        assert word in out


def test_train_writes_a_checkpoint_and_reports_the_loss(trained):
    folder, run = trained
    assert "step 6/6 on 1 process(es): train loss" in run.stdout and "validation loss" in run.stdout
    state = torch.load(folder / "tiny.pt", weights_only=True)
    assert (
        state["step"] == 6 and state["model_config"]["layers"] == 1 and len(state["history"]["losses"]) == 6
    )


def test_train_refuses_to_overwrite_and_resume_needs_a_checkpoint(trained, tmp_path):
    folder, _ = trained
    code, _, err = run_main(
        "train", *TINY, "--corpus", folder / "corpus.txt", "--checkpoint", folder / "tiny.pt"
    )
    assert code != 0 and "exists; add --resume" in err
    code, _, err = run_main(
        "train", *TINY, "--corpus", folder / "corpus.txt", "--checkpoint", tmp_path / "no.pt", "--resume"
    )
    assert code != 0 and "no checkpoint at" in err


def test_resuming_a_finished_run_changes_nothing(trained):
    folder, _ = trained
    before = torch.load(folder / "tiny.pt", weights_only=True)["model"]
    code, out, err = run_main(
        "train",
        *TINY,
        "--corpus",
        folder / "corpus.txt",
        "--steps",
        6,
        "--batch-size",
        4,
        "--seq-len",
        32,
        "--warmup",
        2,
        "--checkpoint",
        folder / "tiny.pt",
        "--resume",
        "--no-progress",
    )
    assert code == 0, err
    assert "validation loss" in out
    after = torch.load(folder / "tiny.pt", weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "layer=2"], "--set 'layer=2': expected field=value with a TransformerConfig field"),
        (["--preset", "bert-base"], "kind='encoder'"),
        (["--set", "vocab_size=100"], "read as bytes (256 ids) but the config has vocab_size=100"),
        (["--seq-len", "512"], "--seq-len 512 is longer than the model's context_length=256"),
    ],
)
def test_bad_train_settings_are_named(tmp_path, args, message):
    code, _, err = run_main("train", *args, "--checkpoint", tmp_path / "x.pt")
    assert code != 0 and message in err
    assert not (tmp_path / "x.pt").exists()


def test_config_file_with_an_unknown_field_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"d_model": 32, "layerz": 2}')
    code, _, err = run_main("train", "--config", tmp_path / "config.json", "--checkpoint", tmp_path / "x.pt")
    assert code != 0 and "fields TransformerConfig does not have: ['layerz']" in err


def test_train_from_a_config_file(tmp_path):
    fields = {
        "kind": "decoder",
        "vocab_size": 256,
        "context_length": 16,
        "d_model": 16,
        "heads": 2,
        "layers": 1,
    }
    (tmp_path / "config.json").write_text(json.dumps(fields))
    (tmp_path / "corpus.txt").write_text(TEXT)
    code, _, err = run_main(
        "train",
        "--config",
        tmp_path / "config.json",
        "--set",
        "dropout=0.1",
        "--corpus",
        tmp_path / "corpus.txt",
        "--steps",
        2,
        "--batch-size",
        2,
        "--warmup",
        1,
        "--checkpoint",
        tmp_path / "run.pt",
        "--no-progress",
        "--device",
        "cpu",
    )
    assert code == 0, err
    saved = torch.load(tmp_path / "run.pt", weights_only=True)["model_config"]
    assert {k: saved[k] for k in fields} == fields and saved["dropout"] == 0.1


def test_generate_from_a_checkpoint_prints_what_generate_makes(trained):
    folder, _ = trained
    run = cli(
        "generate",
        folder / "tiny.pt",
        "--prompt",
        "The cache",
        "--max-new-tokens",
        20,
        "--temperature",
        1.0,
        "--top-k",
        50,
        "--seed",
        3,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    state = torch.load(folder / "tiny.pt", weights_only=True)
    model = build_model(TransformerConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    tokenizer = ByteTokenizer()
    ids = generate(
        model, torch.tensor([tokenizer.encode("The cache")]), 20, temperature=1.0, top_k=50, seed=3
    )
    assert run.stdout == tokenizer.decode(ids[0]) + "\n"


def test_generate_from_a_hugging_face_directory_greedy(gpt2_dir):
    run = cli(
        "generate", gpt2_dir, "--prompt", "Attention weighs", "--max-new-tokens", 12, "--temperature", 0
    )
    assert run.returncode == 0, run.stderr[-3000:]
    model, tokenizer = load_pretrained(gpt2_dir), load_tokenizer(gpt2_dir)
    ids = generate(model, torch.tensor([tokenizer.encode("Attention weighs")]), 12)
    new = ids[0, len(tokenizer.encode("Attention weighs")) :].tolist()
    if 0 in new:  # <|endoftext|> ends the text
        new = new[: new.index(0)]
    assert run.stdout == "Attention weighs" + tokenizer.decode(new) + "\n"


def test_generate_prints_each_piece_as_its_token_arrives(gpt2_dir, monkeypatch):
    import companion.__main__ as cli_module

    log = []
    original = cli_module.stream

    def logged_stream(*args, **kwargs):
        for token in original(*args, **kwargs):
            log.append(("token", int(token[0])))
            yield token

    class Recorder(io.StringIO):
        def write(self, text):
            log.append(("text", text))
            return super().write(text)

    monkeypatch.setattr(cli_module, "stream", logged_stream)
    monkeypatch.setattr(sys, "stdout", Recorder())
    main(
        [
            "generate",
            str(gpt2_dir),
            "--prompt",
            "the",
            "--max-new-tokens",
            "8",
            "--temperature",
            "1.0",
            "--seed",
            "0",
            "--device",
            "cpu",
        ]
    )
    kinds = [kind for kind, _ in log]
    assert log[0] == ("text", "the") and kinds.count("token") == 8
    # text is written between tokens, not all at the end: pieces appear before the last token exists
    last_token = len(kinds) - 1 - kinds[::-1].index("token")
    assert kinds[1:last_token].count("text") >= 3


def test_generate_errors_are_named(gpt2_dir, tmp_path):
    code, _, err = run_main("generate", gpt2_dir, "--prompt", "x", "--top-p", 1.5)
    assert code != 0 and "top_p=1.5" in err
    code, _, err = run_main("generate", gpt2_dir, "--prompt", "x", "--max-new-tokens", 100)
    assert code != 0 and "context is 64" in err
    code, _, err = run_main("generate", tmp_path / "absent", "--prompt", "x")
    assert code != 0 and "is neither an existing directory nor a hub name" in err
    torch.manual_seed(0)
    bert = transformers.BertModel(
        transformers.BertConfig(
            num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=30
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    code, _, err = run_main("generate", tmp_path / "bert", "--prompt", "x")
    assert code != 0 and "loads as an EncoderLM; generate needs a decoder-only model" in err


def test_train_under_torchrun_matches_one_process(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    common = [
        *TINY,
        "--corpus",
        tmp_path / "corpus.txt",
        "--steps",
        4,
        "--batch-size",
        4,
        "--seq-len",
        32,
        "--warmup",
        1,
        "--no-progress",
        "--device",
        "cpu",
    ]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "companion",
            "train",
            *map(str, common),
            "--checkpoint",
            str(tmp_path / "two.pt"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stdout
    one = cli("train", *common, "--checkpoint", tmp_path / "one.pt")
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    assert a["history"]["losses"] == pytest.approx(b["history"]["losses"], rel=1e-5)
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=1e-5, rtol=1e-5)
