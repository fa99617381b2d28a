"""The documentation's code samples run, and every code block in the docs is accounted for.

A Python sample lives in ``docs/samples/<name>.py`` and is shown on a page through
``pymdownx.snippets`` (``--8<-- "docs/samples/<name>.py:section"``), so what a reader sees is the
file this test imports and runs: each sample's ``check(provider, ...)`` drives it against the
embedded provider (the vendors' base-URL variables point there) and asserts what the provider saw.
A block written inline on a page (shell commands, output) is not run: it must be listed in
``NOT_RUN`` with its reason, and ``docs/reference/samples.md`` states the counts this test computes.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
SAMPLES = DOCS / "samples"

#: sample files shown in the docs that this test does not run, with the reason
SAMPLES_NOT_RUN = {
    "arq_jobs.py": "arq 0.28 pins redis-py < 6, which Celery's Redis broker cannot use: arq is not in the "
    "test venv (scripts/compat.py runs tests/test_arq.py with it); the file is compiled here",
}
#: files outside docs/samples/ included as code, and the test that runs them
RUN_ELSEWHERE = {
    "examples/agent_openai_agents/agent.py": "tests/test_examples.py",
    "examples/agent_pydantic_ai/agent.py": "tests/test_examples.py",
    "examples/agent_langgraph/agent.py": "tests/test_examples.py",
}
#: inline blocks, by page and how their first line starts, that are not run, with the reason
NOT_RUN = {
    ("index.md", "python3 -m venv .venv && .venv/bin/pip install"): "the demo one-liner: it builds a venv; "
    "tests/test_demo.py runs the same demo (run_demo)",
    ("index.md", "scripts/test.sh"): "the test command itself",
    ("guides/mcp.md", "from scoped_clients.mcp import Client"): "the swap in outline (a server URL of the "
    "reader's); examples/agent_mcp runs it against the SDK's own server in tests/test_examples.py",
    ("guides/savings.md", "INFO scoped_clients scoped_clients.report {"): "output, not code: the report line "
    "whose keys docs/samples/report_sink.py checks",
    ("development.md", 'pip install -e ".[docs]"'): "installs packages; .ci/run builds the docs with them",
    ("development.md", "scripts/docs.sh"): "the strict build (and `serve`, a server that runs until stopped); "
    ".ci/run runs it, tests/test_docs_site.py builds the site",
    ("development.md", "python docs/_scripts/diagrams.py"): "redraws the pictures; tests/test_docs_site.py runs it",
    ("benchmarks/results.md", ".venv/bin/python benchmarks/"): "benchmarks take minutes of CPU and are never "
    "part of the test run (benchmarks/README.md)",
}

FENCE = re.compile(
    r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)\s*$", re.M | re.S
)
INCLUDE = re.compile(r'^\s*--8<--\s+"(?P<path>[^"]+?)(?::(?P<section>[\w-]+))?"\s*$')


def _expand(text: str) -> str:
    """Inline the markdown files a page includes whole (``--8<-- "benchmarks/README.md"``)."""
    out = []
    in_fence = False
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        m = INCLUDE.match(line)
        if m and not in_fence and m["path"].endswith(".md"):
            out.append(_expand((ROOT / m["path"]).read_text()))
        else:
            out.append(line)
    return "".join(out)


def code_blocks() -> list[tuple[str, str, list[tuple[str, str | None]]]]:
    """(page, first line, included files and sections) for every fenced block of every page."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        name = page.relative_to(DOCS).as_posix()
        for m in FENCE.finditer(_expand(page.read_text())):
            lines = [line for line in m["body"].splitlines() if line.strip()]
            includes = [INCLUDE.match(line) for line in lines]
            if lines and all(includes):
                found.append((name, "", [(i["path"], i["section"]) for i in includes if i]))
            else:
                found.append((name, lines[0].strip() if lines else "", []))
    return found


def sample_files() -> list[str]:
    return sorted(p.name for p in SAMPLES.glob("*.py") if not p.name.startswith("_"))


def load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"docs_sample_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def vendor_env(provider: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What a reader's environment holds, pointed at the embedded provider."""
    monkeypatch.setenv("OPENAI_API_KEY", "docs")
    monkeypatch.setenv("OPENAI_BASE_URL", provider.url + "/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "docs")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", provider.url)
    monkeypatch.setenv("CO_API_KEY", "docs")
    monkeypatch.setenv("CO_API_URL", provider.url)
    monkeypatch.setenv("QDRANT_URL", provider.url)
    monkeypatch.setenv("GEMINI_API_KEY", "docs")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", provider.url)
    monkeypatch.syspath_prepend(str(SAMPLES))  # the samples' shared _harness
    return provider


#: samples that need a Redis (their ``check`` takes ``redis_url``; REDIS_URL is set before the import)
NEEDS_REDIS = {"celery_jobs.py", "deployment.py"}


@pytest.mark.parametrize("name", [n for n in sample_files() if n not in SAMPLES_NOT_RUN])
def test_sample_runs(
    name: str, vendor_env: Any, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name in NEEDS_REDIS:
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_url"))
    module = load(SAMPLES / name)
    check = module.check
    kwargs = {p: request.getfixturevalue(p) for p in inspect.signature(check).parameters if p != "provider"}
    check(vendor_env, **kwargs)


@pytest.mark.parametrize("name", sorted(SAMPLES_NOT_RUN))
def test_sample_not_run_still_compiles(name: str) -> None:
    compile((SAMPLES / name).read_text(), name, "exec")


def test_every_code_block_runs_or_says_why() -> None:
    blocks = code_blocks()
    used = set()
    for page, first, includes in blocks:
        if not includes:
            why = [key for key in NOT_RUN if key[0] == page and first.startswith(key[1])]
            assert why, f"{page}: a code block starting {first!r} is not run: make it a sample or list it in NOT_RUN"
            used.update(why)
    assert used == set(NOT_RUN), f"NOT_RUN lists blocks the docs no longer have: {set(NOT_RUN) - used}"
    shown: set[str] = set()
    for _, _, includes in blocks:
        for path, section in includes:
            target = ROOT / path
            assert target.is_file(), path
            if section:
                assert f"# --8<-- [start:{section}]" in target.read_text(), f"{path}:{section}"
            if path.startswith("docs/samples/"):
                shown.add(Path(path).name)
            else:
                assert path in RUN_ELSEWHERE, f"{path} is shown in the docs: which test runs it?"
                runner = (ROOT / RUN_ELSEWHERE[path]).read_text()
                assert f'"{Path(path).parent.name}"' in runner, f"{RUN_ELSEWHERE[path]} does not run {path}"
    assert shown == set(sample_files()), "every sample file is shown in the docs, and every shown one exists"


def counts() -> Counter[str]:
    tally: Counter[str] = Counter()
    for _, _, includes in code_blocks():
        tally["blocks"] += 1
        if not includes or all(Path(p).name in SAMPLES_NOT_RUN for p, _ in includes):
            tally["not run"] += 1
        elif all(p in RUN_ELSEWHERE for p, _ in includes):
            tally["run elsewhere"] += 1
        else:
            tally["run here"] += 1
    return tally


def test_the_samples_page_states_the_counts() -> None:
    tally = counts()
    page = (DOCS / "reference" / "samples.md").read_text()
    stated = (
        f"**{tally['blocks']} code blocks**: {tally['run here']} run by `tests/test_docs.py`, "
        f"{tally['run elsewhere']} by `tests/test_examples.py`, {tally['not run']} not run"
    )
    assert stated in page, f"docs/reference/samples.md should say: {stated}"


def _undocumented_parameters() -> list[str]:
    """``module.name(parameter)`` for every parameter of the public API its docstring does not describe.

    A parameter is described when its docstring (or, for a constructor, the class's) names it (``name``,
    ``name=`` or in an ``Args:`` section), or, for a dataclass field, when the field has its own doc.
    """
    griffe = pytest.importorskip("griffe", reason='the docs extra is not installed: pip install -e ".[docs]"')
    extensions = griffe.load_extensions("griffe_sphinx")
    package = griffe.load("scoped_clients", search_paths=[str(ROOT / "src")], extensions=extensions)
    modules = [package] + [m for name, m in package.modules.items() if not name.startswith("_") and name != "demo"]
    missing: list[str] = []

    def described(name: str, *docs: Any) -> bool:
        text = "\n".join(d.value for d in docs if d is not None)
        return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) is not None

    def check(where: str, function: Any, *docs: Any, fields: Any = None) -> None:
        for p in function.parameters:
            if p.name in ("self", "cls") or p.name.startswith("_") or p.kind.value.startswith("variadic"):
                continue
            field = fields.get(p.name) if fields is not None else None
            if field is not None and field.docstring is not None:
                continue
            if not described(p.name, function.docstring, *docs):
                missing.append(f"{where}({p.name})")

    for module in modules:
        names = module.exports
        if names is None:  # no __all__: what the module defines itself
            names = [n for n, m in module.members.items() if not n.startswith("_") and not m.is_alias]
        for name in names:
            obj = module[name]
            try:
                target = obj.final_target if obj.is_alias else obj
            except griffe.AliasResolutionError:
                # a name that is the vendor's own class to type checkers (the drop-in clients):
                # its parameters are the vendor's, documented by the vendor
                continue
            where = f"{module.path}.{name}"
            if target.is_function:
                check(where, target)
            elif target.is_class:
                init = target.members.get("__init__")
                if init is not None and not init.is_alias and init.is_function and init.parent is target:
                    check(where, init, target.docstring, fields=target.members)
                for method_name, method in target.members.items():
                    public = not method_name.startswith("_") and not method.is_alias
                    if public and method.is_function and "property" not in method.labels:
                        check(f"{where}.{method_name}", method)
    return sorted(set(missing))


def test_every_public_parameter_is_documented() -> None:
    missing = _undocumented_parameters()
    assert not missing, "describe these parameters in their docstrings (the API reference shows them):\n" + "\n".join(
        missing
    )


def test_the_readme_is_a_landing_page_whose_sample_is_the_quickstart() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    # the two commands, exactly
    assert 'python3 -m venv .venv && .venv/bin/pip install -q -e ".[demo]" && .venv/bin/scoped-clients demo' in readme
    assert "\nscripts/test.sh\n" in readme
    sample = (SAMPLES / "quickstart.py").read_text()
    section = sample.split("# --8<-- [start:app]\n", 1)[1].split("# --8<-- [end:app]", 1)[0].rstrip("\n")
    (block,) = [m["body"].rstrip("\n") for m in FENCE.finditer(readme) if m["info"].strip() == "python"]
    assert block == section, "README.md's sample must be docs/samples/quickstart.py's (the one the tests run)"
    for link in re.findall(r"\]\(((?:docs|benchmarks|examples)/[^)#]+)", readme):
        assert (ROOT / link).exists(), f"README.md links to {link}, which does not exist"
