"""Code samples in README.md and docs/*.md are copies of marked regions of the example DAGs.

A fenced ``python`` block preceded by ``<!-- snippet: example_dags/FILE.py#NAME -->`` must equal the
lines between ``# [START NAME]`` and ``# [END NAME]`` in that file, dedented. To refresh every snippet
after editing an example DAG, run ``python -m tests.unit.test_docs_snippets --write``.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
MARKER = re.compile(r"^<!--\s*snippet:\s*(?P<path>[^#\s]+)#(?P<name>[\w.-]+)\s*-->\s*$")
FENCE_OPEN = re.compile(r"^```python\s*$")
NESTED_MARKER = re.compile(r"^# \[(START|END) [\w.-]+\]$")


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int  # 1-based line of the marker
    source: str  # path relative to the repository root
    name: str
    fence_start: int  # 0-based index of the first code line
    fence_end: int  # 0-based index of the closing fence
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}:{self.name}"


def find_snippets(doc: Path) -> list[Snippet]:
    """Every marked block of one Markdown file; a marker not followed by a python fence is an error."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    found: list[Snippet] = []
    for i, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if not match:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or not FENCE_OPEN.match(lines[j].strip()):
            raise AssertionError(f"{doc.name}:{i + 1}: snippet marker is not followed by a ```python block")
        end = j + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end >= len(lines):
            raise AssertionError(f"{doc.name}:{j + 1}: unterminated code block")
        code = "\n".join(lines[j + 1 : end])
        found.append(Snippet(doc, i + 1, match["path"], match["name"], j + 1, end, code))
    return found


def region(source: Path, name: str) -> str:
    """The dedented lines strictly between ``# [START name]`` and ``# [END name]``.

    Marker lines of other regions nested inside are left out.
    """
    lines = source.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == f"# [START {name}]"]
    ends = [i for i, line in enumerate(lines) if line.strip() == f"# [END {name}]"]
    if len(starts) != 1 or len(ends) != 1:
        raise AssertionError(
            f"{source.name}: expected exactly one '# [START {name}]' and one '# [END {name}]', "
            f"found {len(starts)} and {len(ends)}"
        )
    if ends[0] <= starts[0]:
        raise AssertionError(f"{source.name}: '# [END {name}]' comes before its START")
    body = [line for line in lines[starts[0] + 1 : ends[0]] if not NESTED_MARKER.match(line.strip())]
    return textwrap.dedent("\n".join(body)).strip("\n")


def all_snippets() -> list[Snippet]:
    return [snippet for doc in DOC_FILES for snippet in find_snippets(doc)]


SNIPPETS = all_snippets()


def test_docs_exist():
    assert (ROOT / "README.md").is_file()
    assert len(DOC_FILES) > 1, "docs/*.md missing"


def test_docs_have_snippets_from_example_dags():
    assert SNIPPETS, "no '<!-- snippet: ... -->' blocks found in README.md or docs/*.md"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.id)
def test_snippet_matches_example_dag(snippet: Snippet):
    source = ROOT / snippet.source
    assert source.is_file(), f"{snippet.id}: {snippet.source} does not exist"
    expected = region(source, snippet.name)
    assert expected, f"{snippet.source}#{snippet.name} is empty"
    assert snippet.code.strip("\n") == expected, (
        f"{snippet.id} differs from {snippet.source}#{snippet.name}; "
        "run `python -m tests.unit.test_docs_snippets --write`"
    )


def python_blocks(doc: Path) -> list[tuple[int, str]]:
    """(line, code) of every fenced python block of one Markdown file."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks, start = [], None
    for i, line in enumerate(lines):
        if start is None and FENCE_OPEN.match(line.strip()):
            start = i + 1
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines[start:i])))
            start = None
    return blocks


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_every_python_block_parses(doc: Path):
    """Samples that are not copied from an example DAG are at least valid Python."""
    for line, code in python_blocks(doc):
        try:
            ast.parse(textwrap.dedent(code))
        except SyntaxError as e:
            pytest.fail(f"{doc.name}:{line + (e.lineno or 0)}: {e.msg}")


# --- Samples run as pasted: every name a sample uses is imported or defined, and every import exists ---

BUILTIN_NAMES = frozenset(dir(builtins))


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the first code line
    group: str  # the example DAG a snippet is copied from, or "" for the doc's own samples
    tree: ast.Module


def doc_blocks(doc: Path) -> list[Block]:
    """Every python block of one Markdown file, parsed, with the example DAG it is copied from."""
    sources = {s.fence_start + 1: s.source for s in find_snippets(doc)}
    return [
        Block(doc, line + 1, sources.get(line + 1, ""), ast.parse(textwrap.dedent(code)))
        for line, code in python_blocks(doc)
    ]


def _bound_and_used(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound anywhere in ``tree`` (any scope) and names read in it."""
    bound: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound, used


def unbound_names(blocks: list[Block]) -> list[str]:
    """``doc:line: name`` for every name a block reads that neither it nor an earlier block of its group binds.

    A group is the example DAG the blocks are copied from (a reader pastes them together), or the doc's own
    samples. Jinja inside strings is not Python and is not checked.
    """
    problems: list[str] = []
    seen: dict[str, set[str]] = {}
    for block in blocks:
        bound, used = _bound_and_used(block.tree)
        known = seen.setdefault(block.group, set())
        known |= bound
        for name in sorted(used - known - BUILTIN_NAMES):
            problems.append(f"{block.doc.name}:{block.line}: {name!r} is neither imported nor defined")
    return problems


def missing_imports(blocks: list[Block]) -> list[str]:
    """``doc:line: ...`` for every imported module or name that does not exist in this environment.

    A module of an Airflow provider that is not installed is accepted when the doc names the provider's
    package (``apache-airflow-providers-slack``), so a reader knows to install it.
    """
    problems: list[str] = []
    for block in blocks:
        text = block.doc.read_text(encoding="utf-8")
        for node in ast.walk(block.tree):
            if isinstance(node, ast.Import):
                pairs = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                pairs = [(node.module, alias.name) for alias in node.names]
            else:
                continue
            for module_name, name in pairs:
                try:
                    module = importlib.import_module(module_name)
                except ModuleNotFoundError:
                    parts = module_name.split(".")
                    package = (
                        f"apache-airflow-providers-{parts[2]}"
                        if parts[:2] == ["airflow", "providers"]
                        else None
                    )
                    if package is None or package not in text:
                        problems.append(f"{block.doc.name}:{block.line}: no module {module_name!r}")
                    continue
                if name is not None and not hasattr(module, name):
                    try:
                        importlib.import_module(f"{module_name}.{name}")
                    except ModuleNotFoundError:
                        problems.append(f"{block.doc.name}:{block.line}: {module_name!r} has no {name!r}")
    return problems


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_samples_define_or_import_every_name_they_use(doc: Path):
    assert unbound_names(doc_blocks(doc)) == []


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_samples_import_only_what_exists(doc: Path):
    assert missing_imports(doc_blocks(doc)) == []


def test_readme_quick_start_runs_as_pasted(tmp_path):
    """The README's python samples, pasted into one file, define a DAG that Airflow parses without errors."""
    code = "\n\n".join(code for _, code in python_blocks(ROOT / "README.md"))
    dag_file = tmp_path / "pasted_dag.py"
    dag_file.write_text(code, encoding="utf-8")
    check = (
        "try:\n"
        "    from airflow.dag_processing.dagbag import DagBag\n"
        "except ImportError:  # Airflow < 3.2\n"
        "    from airflow.models.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(dag_file)!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "print(sorted(bag.dags), sorted(t for d in bag.dags.values() for t in d.task_ids))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELARTS_")}
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['example_modelarts_archive_logs'] ['archive_task_logs', 'report']" in result.stdout


def test_name_and_import_checks_find_what_is_missing(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "```python\nfrom airflow.sdk import task\nimport os\n```\n\n"
        "```python\n@task\ndef f(x):\n    return os.getcwd() + x + JOB_ID + str(ModelArtsHook)\n```\n\n"
        "```python\nfrom airflow.sdk import NoSuchThing\nfrom airflow.providers.nosuch.x import Y\n```\n"
    )
    blocks = doc_blocks(doc)
    assert unbound_names(blocks) == [
        "x.md:7: 'JOB_ID' is neither imported nor defined",
        "x.md:7: 'ModelArtsHook' is neither imported nor defined",
    ]
    assert missing_imports(blocks) == [
        "x.md:13: 'airflow.sdk' has no 'NoSuchThing'",
        "x.md:13: no module 'airflow.providers.nosuch.x'",
    ]


def test_region_extraction_dedents_and_rejects_duplicates(tmp_path):
    dag = tmp_path / "dag.py"
    dag.write_text(
        "with x:\n    # [START a]\n    foo()\n    # [START inner]\n\n    bar()\n    # [END inner]\n"
        "    # [END a]\n# [START b]\n# [START b]\n"
    )
    assert region(dag, "a") == "foo()\n\nbar()"
    assert region(dag, "inner") == "bar()"
    with pytest.raises(AssertionError, match="exactly one"):
        region(dag, "b")
    with pytest.raises(AssertionError, match="exactly one"):
        region(dag, "missing")


def test_marker_without_code_block_is_an_error(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("<!-- snippet: example_dags/a.py#x -->\n\nsome prose\n")
    with pytest.raises(AssertionError, match="not followed"):
        find_snippets(doc)
    doc.write_text("<!-- snippet: example_dags/a.py#x -->\n```python\nfoo()\n```\n")
    (snippet,) = find_snippets(doc)
    assert (snippet.source, snippet.name, snippet.code) == ("example_dags/a.py", "x", "foo()")


def write_all() -> int:
    """Rewrite every marked block from its region; returns how many blocks changed."""
    changed = 0
    for doc in DOC_FILES:
        snippets = find_snippets(doc)
        if not snippets:
            continue
        lines = doc.read_text(encoding="utf-8").splitlines()
        for snippet in reversed(snippets):
            new = region(ROOT / snippet.source, snippet.name).splitlines()
            if lines[snippet.fence_start : snippet.fence_end] != new:
                lines[snippet.fence_start : snippet.fence_end] = new
                changed += 1
        doc.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        print(f"updated {write_all()} snippet(s)")
    else:
        bad = [s.id for s in SNIPPETS if s.code.strip("\n") != region(ROOT / s.source, s.name)]
        print("\n".join(bad) or "all snippets up to date")
        sys.exit(1 if bad else 0)
