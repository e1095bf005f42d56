"""What every command-line script shares: a user's mistake is one line on
stderr and exit code 1, never a traceback.

The library lives in the `fingerprinting` package (see its __init__ for the
layers); the scripts at the top level are thin fronts over it.
"""

from fingerprinting.errors import UserError, run_cli

__all__ = ["UserError", "run_cli"]
