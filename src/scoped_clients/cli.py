"""The ``scoped-clients`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``scoped-clients <command>``; returns the exit status.

    Args:
        argv: the command line after the program name (default: ``sys.argv[1:]``); ``["demo"]`` runs the demo.
    """
    parser = argparse.ArgumentParser(prog="scoped-clients", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo",
        help="run the same app on the raw SDKs and on scoped_clients against an embedded local provider, "
        "drop requests like a closed tab, and print what the upstream did after the drop",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        try:
            from .demo import run_demo
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            message = f"scoped-clients demo needs the demo extra: pip install 'scoped-clients[demo]' ({exc})"
            print(message, file=sys.stderr)
            return 2
        run_demo()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
