"""docs/ is generated where it holds results, and the package has no import circle."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distilled_splat"


def test_results_document_is_what_the_result_files_generate():
    spec = importlib.util.spec_from_file_location("results_doc", ROOT / "scripts" / "results_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.results_document()
    assert (ROOT / "docs" / "results.md").read_text() == expected, "run scripts/results_doc.py"
    for result in (ROOT / "benchmarks" / "results").glob("*/frontier.json"):
        assert f'<a id="{result.parent.name}"></a>' in expected, result


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> Dict[str, Set[str]]:
    """Each module of the package and the package modules it imports, at any depth of its code (a function's
    lazy import still ties the two)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from package import module" ties to the module; "from module import name" to the module.
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                found |= submodules or {node.module}
        # A package's __init__ is not an edge of its own: "from distilled_splat import x" means module x.
        graph[name] = {
            target for target in found if target in modules and target != name and target != "distilled_splat"
        }
    return graph


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_in_the_package():
    graph = package_imports()
    assert "distilled_splat.frontier.report" in graph["distilled_splat.frontier.frontier"]
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def markdown_tables(text: str) -> List[str]:
    """The tables of a markdown text (runs of lines starting with '|'), code blocks left out."""
    tables, current, fenced = [], [], False
    for line in text.splitlines() + [""]:
        fenced ^= line.startswith("```")
        if line.startswith("|") and not fenced:
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    return tables


def test_every_table_in_docs_is_generated():
    from distilled_splat.frontier.contenders import markdown_table

    generated = {markdown_table().strip()}
    for doc in sorted((ROOT / "docs").glob("*.md")):
        if doc.name == "results.md":  # compared whole with its generator above
            continue
        for table in markdown_tables(doc.read_text()):
            assert table.strip() in generated, f"{doc.name} holds a table no generator wrote:\n{table[:300]}"


def test_readme_is_a_five_minute_read():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
