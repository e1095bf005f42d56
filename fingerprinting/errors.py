"""The one kind of error a user can cause: reported as one line, not a traceback."""


class UserError(ValueError):
    """A mistake in the user's input (a missing folder, a wrong checkpoint): one line on stderr, exit 1."""


def run_cli(main, args):
    """Run `main(args)`; user mistakes become one line on stderr and exit 1 (bad flags: argparse, exit 2)."""
    try:
        main(args)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
