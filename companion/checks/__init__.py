"""Exercise checkers: `check_xxx(your_fn)` compares your function with the companion's reference on
random inputs and, when it differs, names the likely mistake. One module per chapter."""

from ._core import CheckFailed as CheckFailed  # what a failed check raises, for tests
from .attention import *  # noqa: F403  chapter 2
from .decoding import *  # noqa: F403  chapter 6
from .layers import *  # noqa: F403  chapter 4
from .models import *  # noqa: F403  chapter 5
from .modern import *  # noqa: F403  chapter 8
from .positions import *  # noqa: F403  chapter 3
from .predecessors import *  # noqa: F403  chapter 1
from .training import *  # noqa: F403  chapter 7
