"""Run the client tests against the OLDEST release of every supported vendor range.

``scripts/test.sh`` installs the newest releases the ranges in ``pyproject.toml``
allow; this builds a second virtualenv (``.cache/compat/oldest``) pinned to the
lower bound of each range and runs the tests that touch the vendor SDKs and the
HTTP libraries there.  We rely on private attributes of httpcore, openai, cohere
and qdrant-client (pin-tested by these tests), so an upgrade or a downgrade
inside a range that breaks us fails CI, not a user.  Frameworks that cannot share the main
venv (``EXTRA_PACKAGES``: LlamaIndex needs openai 2.x, arq redis-py < 6) are installed and
tested here too, with the cancel bus on the oldest redis-py.  An extra whose floor cannot share
that venv (``ALONE``) gets a venv of its own, pinned to its floor only; so does the core alone (no extra) at
the floors of its own dependencies (anyio, sniffio), with the tests that need nothing else.

The lower bounds are read from ``pyproject.toml``: a range's floor that is not
an installable release fails here, so the two cannot drift apart.

Usage: ``python scripts/compat.py [pytest args]``
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "compat" / "oldest"
#: the extras whose vendor packages are pinned to their floor
EXTRAS = (
    "openai",
    "anthropic",
    "cohere",
    "qdrant",
    "groq",
    "litellm",
    "httpx",
    "httpx2",
    "redis",
    "otel",
    "prometheus",
)
#: installed after ``.[test]``, beside the floors: frameworks that need openai 2.x (LlamaIndex's
#: ``llama-index-llms-openai`` requires ``openai<3``, so the main venv cannot have it), and arq
#: (it pins redis-py < 6, which Celery's Redis broker in the main venv cannot use)
EXTRA_PACKAGES = ("llama-index-core", "llama-index-llms-openai", "arq")
TESTS = [
    "tests/test_dropin.py",
    "tests/test_llm_clients.py",
    "tests/test_groq.py",
    "tests/test_litellm.py",
    "tests/test_transport.py",
    "tests/test_rag.py",
    "tests/test_agents_llamaindex.py",
    "tests/test_arq.py",
    "tests/test_redis_bus.py",
    "tests/test_otel.py",
    "tests/test_prometheus.py",
    # what the oldest releases leave to the garbage collector themselves, and that we leave no more
    "tests/test_vendor_warnings.py",
    "tests/test_body_generators.py",
]
#: extras whose floor cannot share the venv above (their own requirements exclude another extra's floor),
#: each tested at its floor in a venv of its own, beside the newest releases of everything else, with the
#: tests named here. mistralai: every release >= 2.0 needs opentelemetry-api >= 1.33.1, above our otel floor;
#: google-genai 2.18 needs httpx >= 0.28.1, above our httpx floor (0.28.0)
ALONE = {"mistralai": ["tests/test_mistralai.py"], "google_genai": ["tests/test_google_genai.py"]}
#: the core's own floors (``[project] dependencies``) cannot share the venv above either: httpx2 2.16, the
#: openai and anthropic floor, needs anyio >= 4.10. The core alone (no extra) at its floors, with the tests
#: that need nothing else: the scope, the loop's batch of posts
CORE_TESTS = ["tests/test_scope.py", "tests/test_loop_batch.py"]
#: what those tests run on, beside the core: pytest and the two other backends of the AnyIO plugin
CORE_TEST_PACKAGES = ("pytest>=8", "pytest-timeout>=2.3", "trio>=0.26.1", "uvloop>=0.21")


def floors(names: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """package -> the lowest version its range in pyproject.toml admits, for the extras ``names``."""
    extras = _project()["optional-dependencies"]
    pins = lower_bounds(requirement for extra in names for requirement in extras[extra])
    if "opentelemetry-api" in pins:  # the tests' SDK must be the API's own release
        pins["opentelemetry-sdk"] = pins["opentelemetry-api"]
    return pins


def core_floors() -> dict[str, str]:
    """package -> the lowest version the core's own dependencies in pyproject.toml admit."""
    return lower_bounds(_project()["dependencies"])


def lower_bounds(requirements: Iterable[str]) -> dict[str, str]:
    """package -> its lower bound, for the requirements written ``name>=version[,...]``."""
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(,.*)?", requirement)
        if match:
            pins[match[1]] = match[2]
    return pins


def _project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def venv(home: Path, extras: str, pins: dict[str, str], packages: tuple[str, ...] = ()) -> Path:
    """A virtualenv at ``home`` with ``.[extras]`` and ``pins``, rebuilt only when what it should hold changed."""
    python = home / "bin" / "python"
    stamp = home / "stamp"
    wanted = repr(sorted(pins.items())) + extras + repr(packages)
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
        floor_pins = [f"{name}=={version}" for name, version in pins.items()]
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}{extras}", *floor_pins], check=True)
        if packages:  # the floors are named again so that no extra package moves them
            subprocess.run([str(python), "-m", "pip", "install", "-q", *packages, *floor_pins], check=True)
        stamp.write_text(wanted)
    return python


def main() -> int:
    pins = floors()
    python = venv(VENV, "[test]", pins, EXTRA_PACKAGES)
    print("compat: oldest releases of the supported ranges: " + ", ".join(f"{n}=={v}" for n, v in pins.items()))
    print("compat: with " + ", ".join(EXTRA_PACKAGES))
    status = subprocess.run([str(python), "-m", "pytest", *TESTS, "-q", *sys.argv[1:]], cwd=ROOT).returncode
    for extra, tests in ALONE.items():
        alone = floors((extra,))
        python = venv(VENV.parent / extra, f"[test,{extra}]", alone)
        print(f"compat: {extra} at its floor, alone: " + ", ".join(f"{n}=={v}" for n, v in alone.items()))
        status |= subprocess.run([str(python), "-m", "pytest", *tests, "-q", *sys.argv[1:]], cwd=ROOT).returncode
    core = core_floors()
    python = venv(VENV.parent / "core", "", core, CORE_TEST_PACKAGES)
    print("compat: the core alone at its floors: " + ", ".join(f"{n}=={v}" for n, v in core.items()))
    status |= subprocess.run([str(python), "-m", "pytest", *CORE_TESTS, "-q", *sys.argv[1:]], cwd=ROOT).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
