"""Run the bad-input table of tests/test_bad_input.py and sort every case into one of four outcomes.

    .venv/bin/python benchmarks/bad_input_table.py                     # this checkout's companion
    .venv/bin/python benchmarks/bad_input_table.py --companion /tmp/old   # a folder holding an older companion/

  clear    the library raised the expected exception type from a check of its own, and the message names
           the argument and what was expected (what the test asserts); "clear, loose": its own check and
           the right type, but the message lacks some of that
  cryptic  another exception type, or one raised from inside torch, einops or Python
  silent   no exception: the bad input gave a result
  hang     still running after --limit seconds

Then the behaviour checks of the same file (decoding with a shared training model, a paused stream,
padding when batch == seq) as pass / fail. Cases marked new_api use an argument an older checkout does
not have; they are counted apart.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Hang(BaseException):
    pass


def outcome(case, limit: int) -> tuple[str, str]:
    def stop(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, stop)
    signal.alarm(limit)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            case.call(Path(tmp))
    except Hang:
        return "hang", f"still running after {limit} s"
    except BaseException as error:  # noqa: BLE001 -- every outcome is recorded
        frames = traceback.extract_tb(error.__traceback__)
        # Raised by a check of the library's own: a `raise` statement in companion/, not an error that
        # torch, einops or Python raised from inside a call the library made.
        own = (
            bool(frames)
            and "companion" in Path(frames[-1].filename).parts
            and "raise" in (frames[-1].line or "")
        )
        message = f"{type(error).__name__}: {error}"
        if not isinstance(error, case.error) or not own:
            return "cryptic", message
        return ("clear" if all(s in str(error) for s in case.says) else "clear, loose"), message
    finally:
        signal.alarm(0)
    return "silent", "returned normally"


def behaviours() -> dict[str, str]:
    import torch

    import test_bad_input as t

    checks = {
        "8 threads decode with one training model": lambda: (
            t.test_threads_sharing_a_training_model_decode_as_in_eval_mode_and_leave_it_training(None)
        ),
        "dropout stays on in a training thread": (
            t.test_dropout_keeps_working_in_a_thread_that_trains_while_another_decodes
        ),
        "a half-consumed stream": t.test_a_half_consumed_stream_leaves_the_model_as_it_found_it,
        "seq2seq generate with a training model": t.test_seq2seq_generate_leaves_a_training_model_training,
        "padding when batch == seq": t.test_padding_means_the_same_when_batch_equals_sequence_length,
        "infinite gradients leave the weights": t.test_infinite_gradients_leave_the_weights_untouched,
    }
    results = {}
    threads = torch.get_num_threads()
    for name, check in checks.items():
        torch.set_num_threads(1)
        try:
            check()
            results[name] = "pass"
        except BaseException as error:  # noqa: BLE001
            results[name] = (
                f"FAIL ({type(error).__name__}: {str(error).splitlines()[0][:90] if str(error) else ''})"
            )
        finally:
            torch.set_num_threads(threads)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--companion", type=Path, default=ROOT, help="folder that holds the companion/ package to test"
    )
    parser.add_argument("--limit", type=int, default=20, help="seconds before a case counts as a hang")
    parser.add_argument("--verbose", action="store_true", help="print every case's outcome and message")
    args = parser.parse_args()
    sys.path[:0] = [str(args.companion.resolve()), str(ROOT / "tests")]
    import companion
    import test_bad_input as t

    print(f"companion from {Path(companion.__file__).parent}")
    counts = {False: collections.Counter(), True: collections.Counter()}
    for case in t.CASES:
        kind, message = outcome(case, args.limit)
        counts[case.new_api][kind] += 1
        if args.verbose or kind in ("silent", "hang"):
            print(f"  {kind:12s} {case.group}: {case.name}: {message[:160]}")
    order = ("clear", "clear, loose", "cryptic", "silent", "hang")
    for new_api, label in ((False, "cases"), (True, "cases on arguments added since")):
        if counts[new_api]:
            total = sum(counts[new_api].values())
            print(f"{total} {label}: " + ", ".join(f"{counts[new_api][k]} {k}" for k in order))
    for name, result in behaviours().items():
        print(f"  {name}: {result}")


if __name__ == "__main__":
    main()
