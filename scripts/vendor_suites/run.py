"""Run the vendors' own test-suites with their classes and with ours; print the new failures.

The openai, anthropic and groq sdists on PyPI ship their ``tests/``, mistralai's its
``src/mistralai/extra/tests/``; google-genai's ships them inside the package (``google/genai/tests``:
its client tests run offline, the rest need recorded replays or a key).  For the versions
installed in ``.venv`` this fetches those sdists, builds a separate virtualenv
(``.cache/vendor-suites/venv``: the suites need pytest-asyncio, respx and more,
which must not leak into our own test run) with scoped_clients and the same SDK
versions, and runs each suite three times through ``swap_plugin.py``:

* ``vendor``: the SDK's own classes (the baseline);
* ``ours``: ``openai.AsyncOpenAI`` & co. replaced by our drop-ins;
* ``scope``: ours, each test inside an open, never-cancelled ``RequestScope``.

A test that passes with the vendor's classes and fails with ours is a new
failure: the drop-in is not drop-in there.  A test that runs with the vendor's
classes and is not even collected with ours is *not run*: code that enumerates
client classes skipped ours (anthropic's ``tests/lib/test_client_copy.py``
collects every exported ``BaseClient`` subclass).  Exit status 1 when there is
a new failure not listed in ``KNOWN`` below with its reason, or any test not run.

Usage: ``python scripts/vendor_suites/run.py [--subset ci|full] [--sdk openai,anthropic,mistralai,groq,google-genai]``

``tests/api_resources`` are left out in both subsets: every one of them calls
Stainless' Prism mock server, which serves an OpenAPI spec downloaded from the
vendor's storage (not reachable here), so they fail identically in all modes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "vendor-suites"
HERE = Path(__file__).resolve().parent

#: ``SCOPED_CLIENTS_DEPS=newest`` (the drift job in .ci/run): the suites' own dependencies at their
#: newest releases, in a virtualenv of their own; otherwise the versions in the committed lock
NEWEST = os.environ.get("SCOPED_CLIENTS_DEPS") == "newest"
#: what the suites import besides the SDK (their dev dependency groups), and the lock of those
SUITE_IN = ROOT / "requirements" / "vendor-suites.in"
SUITE_LOCK = ROOT / "requirements" / "vendor-suites.lock"


def suite_deps() -> list[str]:
    """The requirements of vendor-suites.in, less comments and the project itself."""
    lines = (line.split("#", 1)[0].strip() for line in SUITE_IN.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


#: per suite (its distribution name): the import name of its SDK, where the sdist keeps its tests, and
#: pytest options it needs. google-genai's tests live in the package and ``google`` is a namespace
#: package: without ``consider_namespace_packages`` pytest imports them (and so a second copy of the
#: SDK) as ``genai.tests...``, where our swap of ``google.genai.Client`` never reaches.
SUITES: dict[str, tuple[str, str, list[str]]] = {
    "openai": ("openai", "tests", []),
    "anthropic": ("anthropic", "tests", []),
    "google-genai": ("google.genai", "google/genai/tests", ["-o", "consider_namespace_packages=true"]),
    "mistralai": ("mistralai", "src/mistralai/extra/tests", []),
    "groq": ("groq", "tests", []),
}
#: left out of every mode, besides ``tests/api_resources``: mistralai's voice agents need its
#: ``voice-agents`` extra (livekit, and pyaudio, which builds against the PortAudio C library)
SUITE_IGNORE = {"mistralai": ["src/mistralai/extra/tests/voice_agents"]}

#: test files run in CI (a few minutes): the clients' own behaviour, streaming, responses
CI_SUBSET = {
    "openai": ["tests/test_client.py", "tests/test_streaming.py", "tests/test_response.py"],
    "anthropic": [
        "tests/test_client.py",
        "tests/test_streaming.py",
        "tests/test_response.py",
        # collects every client class the package exports: ours must be among them
        "tests/lib/test_client_copy.py",
    ],
    # the whole suite (about 15 s): the client's hooks, auth, tracing, streams, errors, batch, workflows
    "mistralai": ["src/mistralai/extra/tests"],
    "groq": ["tests/test_client.py", "tests/test_streaming.py", "tests/test_response.py"],
    # the client: construction, HTTP options, custom clients, event loops, retries, streams, close
    "google-genai": ["google/genai/tests/client"],
}

#: new failures we accept, with the reason: (sdk, test id prefix) -> reason
#: new failures we accept: (sdk, test id pattern, failure message pattern, reason). Each reads a
#: private attribute that a scoped client cannot keep identical; none is about behaviour.
KNOWN: list[tuple[str, str, str, str]] = (
    [
        (
            sdk,
            r"tests\.test_client\..*::test_retrying_(status|timeout)_errors_doesnt_leak",
            r"",
            "reads the private `client._client._transport._pool` and asserts the transport is httpx2's own class "
            "(groq: httpx's): ours wraps that transport (the pool inside is the same and is released the same way)",
        )
        for sdk in ("openai", "anthropic", "groq")
    ]
    + [
        (
            sdk,
            r".*",
            r"^assert <httpx2?\.(Async)?Client object at 0x[0-9a-f]+> is <httpx2?\.(Async)?Client object at",
            "asserts `client._client is http_client` (a private attribute): the SDK holds a scoped copy of the "
            "caller's client (same class, headers, auth, cookies, hooks and pool) so the caller's object is never "
            "changed; closing it closes the caller's client",
        )
        for sdk in ("openai", "anthropic")
    ]
    + [
        (
            "google-genai",
            r".*",
            r"^assert <httpx2?\.(Async)?Client object at 0x[0-9a-f]+> is <httpx2?\.(Async)?Client object at",
            "asserts `client._api_client._httpx_client is http_client` (private): the SDK holds a scoped copy of the "
            "caller's client, as for openai and anthropic",
        ),
        (
            "google-genai",
            r"google\.genai\.tests\.client\.test_client_initialization::.*_allows_aiohttp_to_be_used",
            r"_use_aiohttp",
            "asserts that client.aio would use aiohttp: the drop-in never does (no scope can abort aiohttp's "
            "requests); it sends through google-genai's own httpx2/httpx client, scoped",
        ),
        (
            "google-genai",
            r"google\.genai\.tests\.client\.test_(client_initialization|custom_client)::",
            r"UnsupportedError: scoped_clients\.google_genai\.Client cannot scope HttpOptions\(aiohttp_client",
            "passes HttpOptions(aiohttp_client=...): refused by the drop-in, by design (no scope can abort it)",
        ),
        (
            "google-genai",
            r"google\.genai\.tests\.client\.test_(client_close|client_initialization)::.*(aiohttp|google_auth_async)",
            r"ConnectError: \[Errno -2\] Name or service not known",
            "mocks aiohttp (or google-auth's aiohttp session) and calls an unreachable host: the drop-in sends "
            "through its scoped httpx client instead, which really tries to connect",
        ),
    ]
)


def known_reason(sdk: str, test_id: str, message: str) -> str | None:
    for known_sdk, test_pattern, message_pattern, reason in KNOWN:
        if known_sdk == sdk and re.match(test_pattern, test_id) and re.search(message_pattern, message):
            return reason
    return None


def log(message: str) -> None:
    print(f"[vendor-suites] {message}", flush=True)


def sh(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def sdist(sdk: str, version: str) -> Path:
    """The vendor's sdist, unpacked under .cache (fetched once per version)."""
    name = sdk.replace("-", "_")  # the sdist's file and directory name (google_genai-3.6.1)
    target = CACHE / f"{name}-{version}"
    if (target / SUITES[sdk][1]).is_dir():
        return target
    download = CACHE / "downloads"
    download.mkdir(parents=True, exist_ok=True)
    sh(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--no-binary",  # the sdist of the SDK only: its build requirements may come as wheels
        sdk,
        f"{sdk}=={version}",
        "-d",
        download,
    )
    archive = next(download.glob(f"{name}-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return target


def venv(versions: dict[str, str]) -> Path:
    """A virtualenv with scoped_clients (editable), the same SDK versions and the suites' dependencies."""
    home = CACHE / ("venv-newest" if NEWEST else "venv")
    python = home / "bin" / "python"
    stamp = home / "stamp"
    deps = suite_deps()
    constraints = [] if NEWEST else ["-c", str(SUITE_LOCK)]
    wanted = repr(sorted(versions.items())) + repr(deps) + ("" if NEWEST else SUITE_LOCK.read_text())
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log(f"building the suites' virtualenv ({'newest releases' if NEWEST else 'requirements/vendor-suites.lock'})")
    sh(sys.executable, "-m", "venv", "--clear", home)
    pins = [f"{sdk}=={version}" for sdk, version in versions.items()]
    extras = "openai,anthropic,mistralai,groq,google_genai"
    sh(python, "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extras}]", *pins, *deps, *constraints)
    stamp.write_text(wanted)
    return python


def suite_options(root: Path) -> list[str]:
    """The suite's own pytest options, less parallelism and timing output (we choose those)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    addopts = config["tool"]["pytest"]["ini_options"].get("addopts", "").split()
    kept: list[str] = []
    skip_next = False
    for option in addopts:
        if skip_next:
            skip_next = False
        elif option in ("-n", "--dist"):
            skip_next = True
        elif not option.startswith(("--durations", "-n")):
            kept.append(option)
    return kept


def run_mode(
    python: Path, sdk: str, root: Path, paths: list[str], mode: str, workers: int
) -> dict[str, tuple[str, str]]:
    """Run the suite in one mode; test id -> outcome (passed, failed, skipped)."""
    report = CACHE / f"{sdk}-{mode}.xml"
    env = {
        **os.environ,
        "SCOPED_VENDOR_MODE": mode,
        "SCOPED_VENDOR_SDK": SUITES[sdk][0],
        "PYTHONPATH": os.pathsep.join([str(HERE), str(root)]),
    }
    for variable in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "MISTRAL_API_KEY",
        "MISTRAL_SERVER_URL",
        "GROQ_API_KEY",
        "GROQ_BASE_URL",
    ):
        env.pop(variable, None)
    for variable in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL", "GOOGLE_GENAI_HTTP_CLIENT"):
        env.pop(variable, None)
    argv = [python, "-m", "pytest", *paths, "-p", "swap_plugin", "-o", f"addopts={' '.join(suite_options(root))}"]
    argv += SUITES[sdk][2]
    argv += ["-q", "--no-header", "-p", "no:cacheprovider", f"--junitxml={report}", "--ignore=tests/api_resources"]
    argv += [f"--ignore={path}" for path in SUITE_IGNORE.get(sdk, [])]
    if workers > 1:
        argv += ["-n", str(workers)]
    started = time.monotonic()
    result = subprocess.run([str(a) for a in argv], cwd=root, env=env, text=True, capture_output=True)
    tail = result.stdout.strip().splitlines()[-1:] or result.stderr.strip().splitlines()[-3:]
    log(f"{sdk} {mode:6s} {time.monotonic() - started:6.1f} s  {' '.join(tail)}")
    if not report.exists():
        raise SystemExit(f"{sdk} {mode}: pytest wrote no report\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return outcomes(report)


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """test id -> (outcome, failure message)."""
    results: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            results[test_id] = ("failed", problem.get("message", ""))
        elif case.find("skipped") is not None:
            results.setdefault(test_id, ("skipped", ""))
        else:
            results.setdefault(test_id, ("passed", ""))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", choices=["ci", "full"], default="ci")
    parser.add_argument("--sdk", default="openai,anthropic,mistralai,groq,google-genai")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", default="ours,scope")
    args = parser.parse_args()
    sdks = args.sdk.split(",")
    versions = {sdk: importlib.metadata.version(sdk) for sdk in sdks}
    python = venv(versions)
    unexplained = 0
    rows: list[str] = []
    for sdk in sdks:
        root = sdist(sdk, versions[sdk])
        paths = CI_SUBSET[sdk] if args.subset == "ci" else [SUITES[sdk][1]]
        baseline = run_mode(python, sdk, root, paths, "vendor", args.workers)
        passed = {t for t, (o, _) in baseline.items() if o == "passed"}
        for mode in args.modes.split(","):
            results = run_mode(python, sdk, root, paths, mode, args.workers)
            new = sorted(t for t in passed if results.get(t, ("", ""))[0] == "failed")
            reasons = {t: known_reason(sdk, t, results[t][1]) for t in new}
            known = [t for t in new if reasons[t]]
            not_run = sorted(set(baseline) - set(results))
            unexplained += len(new) - len(known) + len(not_run)
            rows.append(
                f"| {sdk} {versions[sdk]} | {mode} | {len(baseline)} | {len(passed)} | {len(not_run)} "
                f"| {len(new)} | {len(known)} |"
            )
            for test_id in new:
                reason = reasons[test_id]
                note = f"  [known: {reason}]" if reason else f"\n    {results[test_id][1][:300]}"
                log(f"NEW FAILURE ({mode}): {test_id}{note}")
            for test_id in not_run:
                log(f"NOT RUN ({mode}): {test_id} runs with the vendor's classes, not with ours")
    print(f"\nVendor suites ({args.subset} subset): tests passing with the vendor's classes that fail with ours\n")
    print(
        "| suite | mode | run with the vendor's classes | passing | not run with ours "
        "| new failures with ours | of which known |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
