"""The import picture of ``steve1/`` and ``stages/``: no cycle, and no import running up a layer.

Every module is parsed with :mod:`ast` (nothing is imported); every ``import`` counts, including
imports inside functions and under ``TYPE_CHECKING``: a function-local import is still a
dependency, only a later one, and a cycle hidden in a function is still a cycle.

:data:`LAYERS` is the one layer table, lowest first. A module may import modules of its own layer
or of a layer below; within a layer the only rule is "no cycle". Why this order:

* ``base``: leaf helpers that know nothing of the pipeline (errors, atomic files, numerics, the
  action space, restricted unpicklers, the name vocabulary that params, layout and formats share).
  Everything may use them, so they may use nothing above.
* ``formats``: the on-disk formats (``steve1.data.formats``, a contract module although it sits in
  the data package): dataset and attribute names, versions, codecs. It describes bytes, so it
  needs no params (the codec names params accept come from ``steve1.names``).
* ``contracts``: what the stages agree on: the params schema, where every artifact lives
  (``layout``), which params each stage declares (``shapes``). They hold names and checks, no work,
  so the models, the engine and the data path can all read them.
* ``models`` (with ``fetch``, the resumable downloader the official checkpoint files need): the
  networks and their checkpoint files. Models know nothing of episodes or datasets: the data path
  feeds them, never the other way round.
* ``engine``: where per-episode work runs (this process or Ray); it knows params, not the data path.
* ``data``: index, download, decode, embed, episode stores, sampling, datasets: uses models (MineCLIP
  embeds frames) and the engine (runs episodes).
* ``work``: training, evaluation and the play package (envs, stand-in world, generate and rollout:
  agents acting in a world); they read data and models.
* ``tools``: whole-project views over the layers below: the dvc.yaml generator, experiments,
  tuning, params profiles and the params reference (docs/params.md).
* ``cli``: the ``steve1`` command: single-file tools over the library; it runs the stage modules
  by name (``importlib``), it does not import them.
* ``stages``: the thin DVC stage scripts, the top; nothing in ``steve1`` imports them.

A module is placed by the longest entry that is it or a package above it (``steve1`` itself, the
package's ``__init__``, matches only itself, so a new top-level module must be placed by hand).
Entries may name modules that do not exist (yet, or any more): the table is the plan.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("steve1", "stages")

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("steve1", "steve1.errors", "steve1.io", "steve1.numerics", "steve1.actions",
              "steve1.unpickle", "steve1.headline", "steve1.devices", "steve1.names")),
    ("formats", ("steve1.data.formats",)),
    ("contracts", ("steve1.params", "steve1.layout", "steve1.shapes")),
    ("models", ("steve1.models", "steve1.fetch")),
    ("engine", ("steve1.engine",)),
    ("data", ("steve1.data",)),
    ("work", ("steve1.train", "steve1.eval", "steve1.play")),
    ("tools", ("steve1.pipeline", "steve1.experiments", "steve1.tune", "steve1.profiles", "steve1.params_doc")),
    ("cli", ("steve1.cli",)),
    ("stages", ("stages",)),
]


def module_files(repo: Path = REPO) -> dict[str, Path]:
    """``dotted name -> file`` of every module under the roots (a package by its ``__init__``)."""
    out = {}
    for root in ROOTS:
        for path in sorted((repo / root).rglob("*.py")):
            parts = list(path.relative_to(repo).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules ``name`` imports: ``from a import b`` counts ``a.b`` when that is a module,
    else ``a``; relative imports are resolved against ``name``'s package."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in ROOTS:
                found.add(target)
    found.discard(name)
    return found


def import_graph(repo: Path = REPO) -> dict[str, set[str]]:
    files = module_files(repo)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def layer_of(module: str) -> Optional[int]:
    """Index in :data:`LAYERS` of the longest entry that is ``module`` or a package above it."""
    best: tuple[int, Optional[int]] = (-1, None)
    for i, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            exact_only = entry == "steve1"
            if module == entry or (not exact_only and module.startswith(entry + ".")):
                if len(entry) > best[0]:
                    best = (len(entry), i)
    return best[1]


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


GRAPH = import_graph()


def test_the_graph_sees_real_imports():
    """The parser finds what the code imports (a guard against a graph that is empty by mistake)."""
    assert "steve1.names" in GRAPH["steve1.params"]
    assert "steve1.fetch" in GRAPH["steve1.models.official_files"]
    assert "steve1.data.formats" in GRAPH["steve1.data.episodes"]        # from steve1.data import formats
    assert "steve1.params" in GRAPH["steve1.layout"]                      # under TYPE_CHECKING
    assert "steve1.eval.prompt" in GRAPH["steve1.cli"]                    # inside a function


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_layer():
    missing = sorted(m for m in GRAPH if layer_of(m) is None)
    assert not missing, f"modules in no layer of LAYERS (tests/test_import_layers.py): {missing}"


def test_no_import_runs_up_a_layer():
    up = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
          for m, deps in sorted(GRAPH.items()) for d in sorted(deps)
          if layer_of(m) is not None and layer_of(d) is not None and layer_of(d) > layer_of(m)]
    assert not up, "imports running up a layer:\n  " + "\n  ".join(up)


def test_steve1_never_imports_stages():
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if m.split(".")[0] == "steve1"
                 for d in deps if d.split(".")[0] == "stages")
    assert not bad, "the library imports stage scripts (stages are the top layer):\n  " + "\n  ".join(bad)


def test_the_checks_bite_on_a_made_up_tree(tmp_path):
    """The checks bite: a made-up tree with a cycle and an upward import is reported."""
    for rel, text in {"steve1/__init__.py": "", "steve1/params.py": "from steve1 import layout\n",
                      "steve1/layout.py": "def f():\n    from .params import X\n",
                      "steve1/io.py": "import steve1.cli\n", "steve1/cli.py": "",
                      "stages/__init__.py": "", "stages/x.py": "from steve1 import io\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["steve1.layout"] == {"steve1.params"}
    assert find_cycle(graph) in (["steve1.layout", "steve1.params", "steve1.layout"],
                                 ["steve1.params", "steve1.layout", "steve1.params"])
    assert layer_of("steve1.io") < layer_of("steve1.cli")
    assert layer_of("steve1.data.formats") < layer_of("steve1.models.vpt") < layer_of("steve1.data.episodes")
    assert layer_of("steve1.something_new") is None


@pytest.mark.parametrize("module", ["steve1.play", "steve1.play.rollout"])
def test_the_play_package_has_its_layer(module):
    assert LAYERS[layer_of(module)][0] == "work"
