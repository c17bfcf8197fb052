"""steve1/pipeline.py: dvc.yaml is generated, its code deps follow imports, its paths come from the layout."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml

from steve1.layout import Layout
from steve1.params import Params
from steve1.pipeline import DVC_YAML, ImportGraph, main, render, stages

REPO = Path(__file__).resolve().parents[1]


def _importers(rel: str) -> set[str]:
    graph = ImportGraph(REPO)
    return {s.name for s in stages() if rel in graph.deps(s.module)}


def test_committed_dvc_yaml_is_what_the_generator_writes():
    assert (REPO / DVC_YAML).read_text() == render(REPO), \
        "dvc.yaml is stale: run `python -m steve1.pipeline` (make dvc-yaml) and commit it"
    assert main(["--check"]) == 0


def test_check_fails_on_a_hand_edited_dvc_yaml(tmp_path, capsys):
    for rel in ("steve1", "stages", "assets", "configs"):
        (tmp_path / rel).symlink_to(REPO / rel)
    (tmp_path / DVC_YAML).write_text(render(REPO).replace("- steve1/data/sampling.py\n", "", 1))
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_modules_make_exactly_their_importers_stale():
    all_stages = {s.name for s in stages()}
    assert _importers("steve1/data/sampling.py") == {"sample", "report", "train", "evaluate"}
    assert _importers("steve1/params.py") == all_stages
    assert _importers("stages/_common.py") == all_stages
    # weights: through the downloader; rollout plays in an env, it reads no data files
    assert _importers("steve1/data/formats.py") == all_stages - {"rollout"}
    # the expensive embed stage reruns for MineCLIP and data-path edits, not for the policy's
    assert "embed" in _importers("steve1/models/mineclip.py")
    assert "embed" not in _importers("steve1/models/vpt.py") | _importers("steve1/train/trainer.py")
    # data files a module reads are deps of the stages importing it
    assert _importers("configs/deepspeed") == {"train"}
    assert "embed" in _importers("steve1/assets/bpe_simple_vocab_16e6.txt.gz")


def test_import_closure_sees_lazy_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "steve1"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "sub/__init__.py": "from . import leaf\n",
        "sub/leaf.py": "import numpy\n",
        "entry.py": "def f():\n    from steve1.lazy import x\n    return x\n",
        "lazy.py": "from .sub import leaf as _leaf\nx = 1\n",
        "unused.py": "",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(textwrap.dedent(text))
    deps = ImportGraph(tmp_path).deps("steve1.entry")
    assert deps == ["steve1/__init__.py", "steve1/entry.py", "steve1/lazy.py", "steve1/sub/__init__.py",
                    "steve1/sub/leaf.py"]


def test_dvc_yaml_paths_are_the_layout_of_the_placeholders():
    doc = yaml.safe_load((REPO / DVC_YAML).read_text())["stages"]
    template = Layout.template()
    assert str(template.sampling) == "${paths.samplings}/${sample.name}.json"
    assert str(template.sampling) in doc["train"]["deps"] and str(template.sampling) in doc["sample"]["outs"]
    assert {str(template.run.metrics): {"cache": False}} in doc["train"]["metrics"]
    assert str(template.eval_weights) in doc["evaluate"]["deps"]
    # the same layout with params' values is where the code writes
    layout = Layout.from_params(Params())
    assert layout.sampling == Path("data/samplings/default.json")
    assert layout.run.checkpoint == Path("models/default/checkpoint")
    assert layout.eval_weights == Path("models/default/best.weights")
    assert layout.prior == Path("models/prior.pt")


def test_params_imports_no_library_code():
    # the layout only names things (the generated set); the package's numerics sets MKL's mode (stdlib
    # only); nothing from data/, models/, train/ or eval/
    assert ImportGraph(REPO).deps("steve1.params") == ["steve1/__init__.py", "steve1/layout.py", "steve1/numerics.py",
                                                       "steve1/params.py"]


def test_every_stage_is_a_steve1_command_running_the_same_module():
    from steve1.cli import STAGES

    commands = {name: module for name, (module, _) in STAGES.items()} | {"rollout": "stages.rollout"}
    assert commands == {s.name: s.module for s in stages()}
