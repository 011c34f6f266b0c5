"""The module as a map: the docstring's table of contents, short functions, no import side effects."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from conftest import ROOT

SOURCE = (ROOT / "cdn_push.py").read_text(encoding="utf-8")


def test_the_table_of_contents_lists_the_banners_in_order():
    banners = re.findall(r"^# -{70,}\n# (.+)\n# -{70,}$", SOURCE, re.M)
    docstring = ast.get_docstring(ast.parse(SOURCE))
    listed = re.findall(r"^    (\S.*?)\s{2,}\S", docstring.split("Sections, in dependency order", 1)[1], re.M)
    assert listed == banners


def test_no_function_is_longer_than_80_lines():
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(SOURCE))
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 80]
    assert not long


def test_importing_changes_nothing_global():
    probe = ("import logging, sys, warnings; before = (list(sys.path), len(warnings.filters)); "
             "import cdn_push; log = logging.getLogger('cdn_push'); "
             "assert (list(sys.path), len(warnings.filters)) == before, 'sys.path or warnings changed'; "
             "assert not log.handlers and log.propagate, 'logging configured at import'; "
             "assert 'requests' not in sys.modules and 'http.server' not in sys.modules, 'heavy imports'")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
