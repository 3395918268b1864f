"""`c100` with the tests' tiny-net registered, for torchrun to launch: its processes do not load conftest.

    torchrun --standalone --nproc-per-node 2 tests/run_c100.py train --model tiny-net ...
"""

import sys

import conftest  # noqa: F401  (registers tiny-net)
from c100.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
