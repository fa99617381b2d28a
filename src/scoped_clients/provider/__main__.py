"""Run the local provider in its own process: ``python -m scoped_clients.provider [--port N]``.

Prints its URL on the first line of stdout, then serves until stdin closes or
it is interrupted.  ``GET /_provider/log`` returns what it observed (timestamps
on ``time.monotonic()``, which on Linux is the same clock in every process);
``POST /_provider/reset`` forgets it.  Benchmarks use this so that the
provider does not share the measured process's GIL.
"""

from __future__ import annotations

import argparse
import sys

from . import LocalProvider


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scoped_clients.provider")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-interval", type=float, default=0.01)
    parser.add_argument("--default-tokens", type=int, default=50)
    args = parser.parse_args()
    with LocalProvider(port=args.port, token_interval=args.token_interval, default_tokens=args.default_tokens) as p:
        print(p.url, flush=True)
        try:
            sys.stdin.read()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
