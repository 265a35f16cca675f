"""`python -m dprnn_jax [command]`: the same as the `dprnn-jax` script."""

import sys

from ._app.cli import run

sys.exit(run())
