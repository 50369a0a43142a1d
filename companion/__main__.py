"""The command line: `python -m companion generate` streams text from a model, `python -m companion train`
trains a decoder-only model on the offline corpus (also under `torchrun`). Chapter 5 shows both.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import torch

from .config import TransformerConfig, presets
from .data import (
    ByteTokenizer,
    encode_corpus,
    random_windows,
    sequential_windows,
    stdlib_corpus,
    train_val_split,
)
from .decoding import stream
from .device import pick_device, seed_everything
from .models import DecoderLM, build_model

EXAMPLES_GENERATE = """examples:
  python -m companion generate gpt2 --prompt "The transformer" --max-new-tokens 50 --seed 0
  python -m companion generate runs/tiny.pt --prompt "def " --temperature 0.8 --top-k 20
"""
EXAMPLES_TRAIN = """examples:
  python -m companion train --preset tiny --steps 500 --checkpoint runs/tiny.pt
  python -m companion train --preset tiny --set layers=2 --set d_model=64 --checkpoint runs/small.pt
  torchrun --nproc_per_node 2 -m companion train --preset tiny --checkpoint runs/tiny.pt
"""


# ---------------------------------------------------------------- generate


def load_model(source: str, *, download: bool = False) -> torch.nn.Module:
    """A companion checkpoint file written by `train`, or a Hugging Face directory or hub name."""
    path = Path(source).expanduser()
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not state.get("model_config"):
            raise ValueError(f"{source!r} is not a checkpoint written by `python -m companion train`")
        model = build_model(TransformerConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        return model.eval()
    from .pretrained import load_pretrained

    return load_pretrained(source, download=download)


def load_text_tokenizer(source: str, tokenizer: str | None, *, download: bool = False):
    """--tokenizer if given; else bytes for a checkpoint from `train` (the only tokenizer it uses), and the
    tokenizer.json beside a Hugging Face model."""
    if tokenizer is None and Path(source).expanduser().is_file():
        return ByteTokenizer()
    from .pretrained import load_tokenizer

    return load_tokenizer(source if tokenizer is None else tokenizer, download=download)


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt)
    if not ids:  # GPT-2 was trained with <|endoftext|> between documents: it starts a fresh one
        start = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>")
        if start is None:
            raise ValueError("--prompt is empty; give some text to continue")
        ids = [start]
    return ids


def run_generate(args: argparse.Namespace) -> None:
    model = load_model(args.source, download=args.download)
    if not isinstance(model, DecoderLM):
        raise ValueError(
            f"{args.source!r} loads as an {type(model).__name__}; generate needs a decoder-only "
            "model such as GPT-2"
        )
    tokenizer = load_text_tokenizer(args.source, args.tokenizer, download=args.download)
    device = pick_device(args.device)
    model.to(device)
    prompt = torch.tensor([_prompt_ids(tokenizer, args.prompt)])
    stop = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>")
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    new: list[int] = []
    shown = ""
    for token in stream(
        model,
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        use_cache=not args.no_cache,
    ):
        if int(token[0]) == stop:
            break
        new.append(int(token[0]))
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):
            continue  # part of a multi-byte character: print it once the rest has come
        sys.stdout.write(text[len(shown) :])
        sys.stdout.flush()
        shown = text
    sys.stdout.write(tokenizer.decode(new)[len(shown) :] + "\n")


# ---------------------------------------------------------------- train


def _value(text: str):
    """--set values: JSON where it parses (2, 0.1, true, null), the plain string otherwise (pre, rope)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def model_config(preset: str | None, config_file: str | None, settings: list[str]) -> TransformerConfig:
    """A preset or a JSON file of TransformerConfig fields, with each --set key=value applied on top."""
    if config_file is not None:
        values = json.loads(Path(config_file).read_text())
        unknown = sorted(set(values) - {f.name for f in fields(TransformerConfig)})
        if unknown:
            raise ValueError(f"--config {config_file} has fields TransformerConfig does not have: {unknown}")
        config = TransformerConfig(**values)
    else:
        config = presets[preset or "tiny"]
    changes = {}
    for setting in settings:
        key, equals, text = setting.partition("=")
        if not equals or key not in {f.name for f in fields(TransformerConfig)}:
            raise ValueError(
                f"--set {setting!r}: expected field=value with a TransformerConfig field, such as layers=2"
            )
        changes[key] = _value(text)
    return config.replace(**changes)


def run_train(args: argparse.Namespace) -> None:
    from .training import TrainConfig, evaluate_loss, init_distributed, next_token_objective, train

    config = model_config(args.preset, args.config, args.set)
    tokenizer = ByteTokenizer()
    if config.kind != "decoder":
        raise ValueError(
            f"train teaches next-token prediction to a decoder-only model; the config has kind={config.kind!r}"
        )
    if config.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"the corpus is read as bytes (256 ids) but the config has vocab_size={config.vocab_size}"
        )
    seq_len = args.seq_len or min(config.context_length, 128)
    if seq_len > config.context_length:
        raise ValueError(
            f"--seq-len {seq_len} is longer than the model's context_length={config.context_length}"
        )
    checkpoint = Path(args.checkpoint)
    if checkpoint.exists() and not args.resume:
        raise ValueError(
            f"--checkpoint {checkpoint} exists; add --resume to continue that run, or choose a new path"
        )
    if args.resume and not checkpoint.is_file():
        raise ValueError(f"--resume: there is no checkpoint at {checkpoint} to continue")
    text = stdlib_corpus() if args.corpus == "stdlib" else Path(args.corpus).read_text(encoding="utf-8")
    train_ids, val_ids = train_val_split(encode_corpus(text, tokenizer, seq_len), 0.1)

    rank, world = init_distributed()
    seed_everything(args.seed)  # every process builds the same initial weights
    model = build_model(config)
    device = None if world > 1 and args.device is None else pick_device(args.device)
    train_config = TrainConfig(
        steps=args.steps, lr=args.lr, warmup_steps=min(args.warmup, args.steps), progress=not args.no_progress
    )
    history = train(
        model,
        random_windows(train_ids, args.batch_size, seq_len, seed=args.seed),
        next_token_objective,
        train_config,
        device=device,
        checkpoint=checkpoint,
        save_every=args.save_every,
    )
    if rank == 0:
        val = sequential_windows(val_ids, max(1, min(args.batch_size, len(val_ids) // seq_len)), seq_len)[:8]
        val_loss = evaluate_loss(model, val, next_token_objective)
        last = f"train loss {history.losses[-1]:.4f}, " if history.losses else ""
        print(
            f"step {args.steps}/{args.steps} on {world} process(es): {last}validation loss {val_loss:.4f} "
            f"nats/token; checkpoint {checkpoint}"
        )
    if world > 1:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------- the parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a whole number >= 1")
    return value


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m companion", description="The companion library of Transformers, Piece by Piece."
    )
    commands = main.add_subparsers(dest="command", required=True, metavar="{generate,train}")

    gen = commands.add_parser(
        "generate",
        help="continue a prompt with a model, printing tokens as they come",
        description="Continue a prompt with a decoder-only model (GPT-2, or a checkpoint from `train`), "
        "printing the text as it is generated.",
        epilog=EXAMPLES_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument(
        "source",
        help="a checkpoint file written by `train`, a directory in Hugging Face layout "
        "(config.json, model.safetensors, tokenizer.json), or a cached hub name (gpt2)",
    )
    gen.add_argument(
        "--prompt",
        default="",
        help="the text to continue (default: empty, which starts a new document for GPT-2)",
    )
    gen.add_argument("--max-new-tokens", type=int, default=50, help="how many tokens to add (default 50)")
    gen.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="softmax temperature; 0 is greedy decoding (default 0.8)",
    )
    gen.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    gen.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="sample only from the fewest tokens whose probabilities add up to p (nucleus)",
    )
    gen.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    gen.add_argument(
        "--tokenizer",
        default=None,
        help="where tokenizer.json is, if not beside the model (a checkpoint from `train` reads bytes)",
    )
    gen.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best there is)")
    gen.add_argument(
        "--no-cache", action="store_true", help="recompute every position at every step (same tokens, slower)"
    )
    gen.add_argument(
        "--download",
        action="store_true",
        help="fetch a hub name missing from the local cache (needs the network)",
    )
    gen.set_defaults(run=run_generate)

    tr = commands.add_parser(
        "train",
        help="train a decoder-only model on the offline corpus, with checkpoints",
        description="Train a decoder-only model to predict the next byte of the offline corpus (docstrings of "
        "the Python standard library, or a text file), saving a checkpoint that `generate` reads. "
        "Under torchrun each process takes its share of every batch (DDP).",
        epilog=EXAMPLES_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = tr.add_mutually_exclusive_group()
    source.add_argument(
        "--preset", choices=sorted(presets), default=None, help="a named config (default tiny)"
    )
    source.add_argument("--config", default=None, help="a JSON file of TransformerConfig fields")
    tr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one config field, e.g. --set layers=2 (repeatable)",
    )
    tr.add_argument("--corpus", default="stdlib", help="'stdlib' (default) or a UTF-8 text file")
    tr.add_argument(
        "--checkpoint", required=True, help="file to write; training resumes from it with --resume"
    )
    tr.add_argument(
        "--resume", action="store_true", help="continue the run saved in --checkpoint, with the same settings"
    )
    tr.add_argument("--steps", type=_positive, default=500, help="optimizer steps in all (default 500)")
    tr.add_argument(
        "--batch-size", type=_positive, default=16, help="sequences per step, over all processes (default 16)"
    )
    tr.add_argument(
        "--seq-len",
        type=_positive,
        default=None,
        help="tokens per sequence (default: the context, at most 128)",
    )
    tr.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    tr.add_argument("--warmup", type=int, default=50, help="warm-up steps (default 50)")
    tr.add_argument(
        "--save-every", type=int, default=100, help="write the checkpoint every N steps (default 100)"
    )
    tr.add_argument("--seed", type=int, default=0, help="weights and data order (default 0)")
    tr.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best there is)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(run=run_train)
    return main


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        sys.exit(f"python -m companion {args.command}: error: {message}")


if __name__ == "__main__":
    main()
