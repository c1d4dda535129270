"""The architecture contract (issue 13): the package's folders are its layers.

* ``.importlinter`` states the layers (adapters > pipeline > codecs > format) and what the
  torch-free parts may not import; ``lint-imports`` checks it here, and a planted violation in a
  copy of the package shows that it catches one;
* no import cycle anywhere in the package, counting imports inside functions (the package's lazy
  ``__getattr__`` included): Tarjan's strongly connected components over grimp's import graph;
* at run time the format layer's sharded-set tools (split, merge) work with the codecs and torch
  unimportable, and stamp the format minor of the feature the file uses.
"""
import os
import shutil
import subprocess
import sys
import sysconfig

import grimp
import numpy as np
import pytest

import slcodec
from slcodec.format.container import Container

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, ".importlinter")
GOLDEN = os.path.join(ROOT, "spec", "golden")
PACKAGE = os.path.dirname(os.path.abspath(slcodec.__file__))


def _lint_imports_command():
    """The `lint-imports` script of this interpreter's environment (installed by the test extra)."""
    for folder in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        path = os.path.join(folder, "lint-imports")
        if os.path.isfile(path):
            return [path]
    found = shutil.which("lint-imports")
    assert found, "lint-imports not found: pip install -e '.[test]' (import-linter)"
    return [found]


def lint_imports(cwd, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([*_lint_imports_command(), "--no-cache", CONFIG], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- contracts
def test_import_contracts_are_kept():
    r = lint_imports(ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "0 broken" in out and "BROKEN" not in out, out


def test_a_planted_layer_violation_breaks_the_contract(tmp_path):
    # The same config run on a copy of the package with two forbidden imports added: the
    # contract must name both (it is not vacuous, and imports inside functions count).
    copy = tmp_path / "slcodec"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    with open(copy / "format" / "limits.py", "a") as f:
        f.write("\n\ndef _planted():\n    import torch  # noqa: F401\n")
    with open(copy / "codecs" / "raw.py", "a") as f:
        f.write("\n\nfrom ..pipeline import reader as _planted  # noqa: E402,F401\n")
    probe = subprocess.run([sys.executable, "-c", "import slcodec; print(slcodec.__file__)"], cwd=tmp_path,
                           env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True)
    assert probe.stdout.strip().startswith(str(copy)), probe.stdout + probe.stderr  # the copy is the one checked
    r = lint_imports(tmp_path, pythonpath=str(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "slcodec.format.limits -> torch" in out, out
    assert "slcodec.codecs.raw -> slcodec.pipeline" in out, out


# --------------------------------------------------------------------------- cycles
def strongly_connected_components(graph, modules):
    """Tarjan's algorithm (iterative: the package is deep enough to make recursion fragile):
    the components of ``modules`` with more than one module, or one that imports itself."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.find_modules_directly_imported_by(node):
                    found.append(sorted(component))
    return found


def _describe(graph, component):
    lines = []
    members = set(component)
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            for d in graph.get_import_details(importer=importer, imported=imported):
                lines.append(f"  {importer} -> {imported} (line {d['line_number']}: {d['line_contents']})")
    return "\n".join(lines)


def test_cycle_finder_finds_a_cycle():
    g = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.d", "p.e"), ("p.e", "p.d"),
                 ("p.f", "p.a")]:
        g.add_import(importer=a, imported=b)
    g.add_module("p.alone")
    assert sorted(strongly_connected_components(g, set(g.modules))) == [["p.a", "p.b", "p.c"], ["p.d", "p.e"]]
    g.add_import(importer="p.alone", imported="p.alone")
    assert ["p.alone"] in strongly_connected_components(g, set(g.modules))


def test_no_import_cycle_in_the_package():
    # grimp reads every import statement, those inside functions too: a lazy import that closes
    # a loop (the package's __getattr__ importing the API, which imports `from slcodec import X`)
    # is a cycle as much as a top-level one.
    graph = grimp.build_graph("slcodec", cache_dir=None)
    modules = {m for m in graph.modules if m == "slcodec" or m.startswith("slcodec.")}
    assert "slcodec.pipeline.reader" in graph.find_modules_directly_imported_by("slcodec")  # lazy imports seen
    cycles = strongly_connected_components(graph, modules)
    assert not cycles, "import cycles:\n" + "\n\n".join(_describe(graph, c) for c in cycles)


# --------------------------------------------------------------------------- the format layer alone
_BLOCKER = '''
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "slcodec.codecs", "slcodec.pipeline")):
            raise ImportError(f"{name} is blocked for this test")

sys.meta_path.insert(0, Block())
'''


@pytest.mark.parametrize("name, minor", [("v1.0-topk5-logits.vqsl", 0), ("v1.2-vq-image-bias-logits.vqsl", 2),
                                         ("v1.3-sparse-k2-prior-classes-logits.vqsl", 3)])
def test_split_and_merge_need_neither_codecs_nor_torch(tmp_path, name, minor):
    src = os.path.join(GOLDEN, name)
    assert os.path.isfile(src), src
    script = _BLOCKER + (
        "from slcodec.format import shards\n"
        "from slcodec.format.container import Container\n"
        "src, out = sys.argv[1], sys.argv[2]\n"
        "shards.split(src, out + '/set.vqsl', shards=2)\n"
        "shards.merge(out + '/set.vqsl', out + '/one.vqsl')\n"
        "assert not shards.verify_set(out + '/set.vqsl')\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('slcodec.codecs', 'slcodec.pipeline'))]\n"
        "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", script, src, str(tmp_path)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    with Container.open(src) as c:
        assert c.preamble.minor == minor
    with Container.open(str(tmp_path / "set.vqsl")) as m:
        assert m.is_manifest and m.preamble.minor == max(minor, 1)  # sharding is 1.1; a codec feature wins
        shard_files = [e["file"] for e in m.read_msgpack("shards")["shards"]]
    for f in shard_files:
        with Container.open(str(tmp_path / f)) as s:
            assert s.is_shard and s.preamble.minor == max(minor, 1)
    with Container.open(str(tmp_path / "one.vqsl")) as one, Container.open(src) as c:
        assert one.preamble.minor == minor and one.preamble.required_flags == 0
        for s in c.header["sections"]:
            if s["kind"] == "stream":
                r_src, r_one = c.stream(s["name"]), one.stream(s["name"])
                assert np.array_equal(r_src.read_rows(0, r_src.rows), r_one.read_rows(0, r_one.rows))


def test_a_sharded_encode_stamps_its_codecs_minor(tmp_path):
    # the pipeline passes the codec's minor to the format layer's shard writer (sq: added in 1.4)
    x = np.load(os.path.join(PACKAGE, "data", "lite0_8x64_fp16.npy"))[:1, :16]
    path = str(tmp_path / "set.vqsl")
    slcodec.encode(x, path, codec="sq", shard_rows=8)
    with Container.open(path) as m:
        assert m.is_manifest and m.preamble.minor == 4
        files = [e["file"] for e in m.read_msgpack("shards")["shards"]]
    assert len(files) == 2
    for f in files:
        with Container.open(str(tmp_path / f)) as s:
            assert s.preamble.minor == 4
