"""The MUST-reject rule ids live in one place, slcodec.format.rules (issue 13).

FORMAT.md's table and :data:`rules.MUST_REJECT` name the same rules in the same order; no module
of the package writes a rule id out (the format layer, the codecs, the reader and the adapters
name them through the constants; errors.py, below the format layer, keeps FormatError's default);
every ``rules.NAME`` the package reads exists (a misspelt one would fail only when that error is
raised)."""
import ast
import os
import re

import pytest

from slcodec.errors import FormatError
from slcodec.format import rules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "slcodec")
#: every module of the package but errors.py, which sits below the format layer (its one literal,
#: FormatError's default, is checked against rules.UNSPECIFIED below)
BY_CONSTANT = sorted(os.path.join(folder, f) for folder, _, files in os.walk(PACKAGE) for f in files
                     if f.endswith(".py") and os.path.join(folder, f) != os.path.join(PACKAGE, "errors.py"))


def format_md_rules():
    text = open(os.path.join(ROOT, "FORMAT.md"), encoding="utf-8").read()
    section = text.split("## What a reader MUST reject", 1)[1].split("\n## ", 1)[0]
    table = section.split("| rule | the file is rejected when |", 1)[1].split("\n\n", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\| `([a-z0-9-]+)` \|", table, re.M)]


def package_files():
    for folder, _, files in os.walk(PACKAGE):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(folder, f)


def parse(path):
    return ast.parse(open(path, encoding="utf-8").read(), path)


def rule_literals(tree):
    """(line, id) of each rule id written as a string: a ``rule="..."`` keyword, or the last
    positional argument of a local ``bad(...)`` / ``fail(...)`` reporter."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "rule" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                found.append((node.lineno, kw.value.value))
        name = getattr(node.func, "id", None)
        if name in ("bad", "fail") and len(node.args) >= 2 and isinstance(node.args[-1], ast.Constant) \
                and isinstance(node.args[-1].value, str):
            found.append((node.lineno, node.args[-1].value))
    return found


def test_format_md_table_and_constants_name_the_same_rules():
    table = format_md_rules()
    assert len(table) >= 20, table                 # the table was found and read
    assert len(set(table)) == len(table), table
    assert tuple(table) == rules.MUST_REJECT, (set(table) ^ set(rules.MUST_REJECT)) or "order differs"


def test_every_id_is_a_named_constant_once():
    named = {getattr(rules, n): n for n in dir(rules) if n.isupper() and isinstance(getattr(rules, n), str)}
    assert set(rules.ALL) == set(named) and len(set(rules.ALL)) == len(rules.ALL)
    assert not set(rules.ALL[len(rules.MUST_REJECT):]) & set(rules.MUST_REJECT)
    assert FormatError("x").rule == rules.UNSPECIFIED    # errors.py sits below the format layer: its own literal


@pytest.mark.parametrize("path", BY_CONSTANT, ids=lambda p: os.path.relpath(p, PACKAGE))
def test_modules_name_rules_by_constant(path):
    found = rule_literals(parse(path))
    assert not found, f"{path}: rule ids written out, use slcodec.format.rules: {found}"


def imports_format_rules(tree, path):
    """Whether the module binds ``rules`` to slcodec.format.rules (not slcodec.codecs.rules)."""
    in_format = os.path.dirname(path) == os.path.join(PACKAGE, "format")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "rules" and a.asname is None for a in node.names):
            module = node.module or ""
            if module.endswith("format") or (in_format and node.level == 1 and not module):
                return True
    return False


def test_every_rules_constant_read_exists():
    missing, readers = [], set()
    for path in package_files():
        tree = parse(path)
        if not imports_format_rules(tree, path):
            continue
        readers.add(os.path.relpath(path, PACKAGE))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "rules" \
                    and not hasattr(rules, node.attr):
                missing.append((os.path.relpath(path, ROOT), node.lineno, node.attr))
    assert {"format/container.py", "format/schema.py", "format/shards.py", "pipeline/reader.py", "codecs/base.py",
            "codecs/vq/codec.py", "frameworks/records.py", "frameworks/exporting.py"} <= readers
    assert not missing, missing


def test_the_scan_sees_a_literal():
    # the scanner itself: both spellings are found (so an empty result above means something)
    src = 'def f(bad):\n    bad("m", "manifest")\n    raise FormatError("m", rule="shard-missing")\n'
    assert rule_literals(ast.parse(src)) == [(2, "manifest"), (3, "shard-missing")]
