"""``python -m drl_tune.bench``: the benchmark command (drl_tune/bench/cli.py)."""

from drl_tune.bench.cli import main
from drl_tune.ground.guard import exit_command

exit_command(main())
