"""``python -m drl_tune.bench``: the benchmark command (drl_tune/bench/cli.py)."""

import sys

from drl_tune.bench.cli import main

sys.exit(main())
