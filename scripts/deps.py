"""Compare the packages installed in this interpreter with the committed locks (requirements/*.lock).

``python scripts/deps.py check``: exit 1, naming each package, when what is installed is not what
the locks say (a version differs, or a package the locks do not pin): the locks are stale against
pyproject.toml, or the environment was changed by hand. ``scripts/lock.sh`` refreshes the locks.

``python scripts/deps.py drift``: print, one line each, every installed package whose version
differs from the locks (``name old -> new``) and those the locks do not pin (``name (not locked) ->
new``). ``.ci/run``'s drift job prints this when the newest releases fail our tests, so the cause is
one line away.

Run it with the environment's own interpreter (``.venv/bin/python scripts/deps.py check``).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ("test.lock", "model.lock")
#: installed but never locked: the installers, and the project itself (editable, from the tree)
UNLOCKED = {"pip", "setuptools", "wheel", "uv"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*(?:;\s*([^#]+?))?\s*(?:#.*)?$")


def locked(names: tuple[str, ...] = LOCKS) -> dict[str, str]:
    """Canonical name -> version, for the pins whose markers hold in this interpreter."""
    pins: dict[str, str] = {}
    for name in names:
        for line in (ROOT / "requirements" / name).read_text().splitlines():
            match = _PIN.match(line.strip())
            if match and (match[3] is None or Marker(match[3]).evaluate()):
                pins[canonicalize_name(match[1])] = match[2]
    return pins


def installed() -> dict[str, str]:
    """Canonical name -> version of every distribution in this interpreter, less the project's own."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if not name.startswith("scoped-clients") and name not in UNLOCKED:
            found[name] = dist.version
    return found


def differences() -> list[str]:
    pins, have = locked(), installed()
    lines = [
        f"{name} {pins[name]} -> {version}"
        for name, version in sorted(have.items())
        if pins.get(name, version) != version
    ]
    lines += [f"{name} (not locked) -> {version}" for name, version in sorted(have.items()) if name not in pins]
    return lines


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "check"
    lines = differences()
    if command == "drift":
        print(f"drift: {len(lines)} package(s) differ from requirements/{', '.join(LOCKS)}")
        for line in lines:
            print(f"drift:   {line}")
        return 0
    if command == "check":
        if lines:
            print("deps: what is installed is not what requirements/*.lock pins:", file=sys.stderr)
            for line in lines:
                print(f"deps:   {line}", file=sys.stderr)
            print("deps: pyproject.toml changed since the locks were made? Run scripts/lock.sh.", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
