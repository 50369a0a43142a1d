"""Exercise checkers: `check_xxx(your_fn)` compares your function with the companion's reference on
random inputs and, when it differs, names the likely mistake. One module per chapter."""
from ._core import CheckFailed
from .predecessors import *  # noqa: F401,F403  chapter 1
from .attention import *  # noqa: F401,F403  chapter 2
from .positions import *  # noqa: F401,F403  chapter 3
from .layers import *  # noqa: F401,F403  chapter 4
from .models import *  # noqa: F401,F403  chapter 5
from .decoding import *  # noqa: F401,F403  chapter 6
from .training import *  # noqa: F401,F403  chapter 7
from .modern import *  # noqa: F401,F403  chapter 8
