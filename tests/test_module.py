"""The module as a map: the docstring's table of contents, sections in dependency order, short
functions and classes, no import side effects."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from conftest import ROOT

SOURCE = (ROOT / "cdn_push.py").read_text(encoding="utf-8")
BANNER = re.compile(r"^# -{70,}\n# (.+)\n# -{70,}$", re.M)
CLASS_BUDGET = 300          # lines; a bigger class is split into collaborating objects
FUNCTION_BUDGET = 80


def test_the_table_of_contents_lists_the_banners_in_order():
    banners = BANNER.findall(SOURCE)
    docstring = ast.get_docstring(ast.parse(SOURCE))
    listed = re.findall(r"^    (\S.*?)\s{2,}\S", docstring.split("Sections, in dependency order", 1)[1], re.M)
    assert listed == banners


def forward_references(source: str) -> list[tuple[int, str, str, str]]:
    """(line, name, using section, defining section) for every use of a module-level name in a
    section before the one that defines it; annotations count (they are read as uses too)."""
    starts = [source[:m.start()].count("\n") + 1 for m in BANNER.finditer(source)]
    names = BANNER.findall(source)

    def section(line: int) -> int:
        return sum(1 for start in starts if start <= line) - 1

    tree = ast.parse(source)
    defined: dict[str, int] = {}
    for node in tree.body:
        targets: list[str] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        for name in targets:
            defined.setdefault(name, section(node.lineno))
    found = []
    for node in tree.body:
        here = section(node.lineno)
        for use in ast.walk(node):
            if isinstance(use, ast.Name) and isinstance(use.ctx, ast.Load) and defined.get(use.id, -1) > here:
                found.append((use.lineno, use.id, names[here], names[defined[use.id]]))
    return sorted(set(found))


def test_no_name_is_used_before_its_own_section():
    assert forward_references(SOURCE) == []


def test_the_layering_check_finds_a_planted_forward_reference():
    planted = SOURCE.replace("def ascii_number(text: str, digits: int) -> bool:\n",
                             "def ascii_number(text: str, digits: int) -> bool:\n    Ledger\n", 1)
    assert planted != SOURCE
    found = forward_references(planted)
    assert [(name, using, defining) for _, name, using, defining in found] == [
        ("Ledger", "Untrusted text", "Ledger")]


@pytest.mark.parametrize("kind, budget", [(ast.FunctionDef, FUNCTION_BUDGET), (ast.ClassDef, CLASS_BUDGET)])
def test_no_function_or_class_is_over_its_budget(kind, budget):
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(SOURCE))
            if isinstance(node, kind) and node.end_lineno - node.lineno + 1 > budget]
    assert not long


def test_importing_changes_nothing_global():
    probe = ("import logging, sys, warnings; before = (list(sys.path), len(warnings.filters)); "
             "import cdn_push; log = logging.getLogger('cdn_push'); "
             "assert (list(sys.path), len(warnings.filters)) == before, 'sys.path or warnings changed'; "
             "assert not log.handlers and log.propagate, 'logging configured at import'; "
             "assert 'requests' not in sys.modules and 'http.server' not in sys.modules, 'heavy imports'")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_no_test_rewrites_a_module_global_or_reads_a_private_pipeline_attribute():
    """Tuning, clocks and the hash function are passed in; stages are driven through their surface."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(r"monkeypatch\.setattr\(cdn_push,", line) or re.search(
                    r"\b(p|pipeline)\._[a-z]", line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders
