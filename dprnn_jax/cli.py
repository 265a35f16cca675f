"""The `dprnn-jax` command line as a function: `main(["train", "--out", "run", …])`
returns the exit status, exactly as `python -m dprnn_jax train --out run …` would."""

from ._app.cli import main as main

__all__ = ["main"]
