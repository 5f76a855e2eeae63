import sys

from delivery.cli_errors import run
from ml_runs.cli import main

sys.exit(run(main))
