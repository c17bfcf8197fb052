"""steve1/pipeline.py: dvc.yaml is generated, its code deps follow imports, its paths come from the layout."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import yaml

from steve1.layout import Layout
from steve1.params import Params
from steve1.pipeline import DVC_YAML, ImportGraph, main, render, stages

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def _deps() -> dict[str, list[str]]:
    """Each stage's code deps in this checkout (one import graph for the module's tests)."""
    graph = ImportGraph(REPO)
    return {s.name: graph.deps(s.module) for s in stages()}


def _importers(rel: str) -> set[str]:
    return {name for name, deps in _deps().items() if rel in deps}


def test_committed_dvc_yaml_is_what_the_generator_writes():
    assert (REPO / DVC_YAML).read_text() == render(REPO), \
        "dvc.yaml is stale: run `python -m steve1.pipeline` (make dvc-yaml) and commit it"
    assert main(["--check"]) == 0


def test_check_fails_on_a_hand_edited_dvc_yaml(tmp_path, capsys):
    for rel in ("steve1", "stages", "assets", "configs", "params.yaml"):
        (tmp_path / rel).symlink_to(REPO / rel)
    (tmp_path / DVC_YAML).write_text(render(REPO).replace("- steve1/data/sampling.py\n", "", 1))
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_modules_make_exactly_their_importers_stale():
    all_stages = {s.name for s in stages()}
    assert _importers("steve1/data/sampling.py") == {"sample", "report", "train", "evaluate"}
    assert _importers("steve1/params.py") == all_stages
    assert _importers("stages/_common.py") == all_stages
    # weights fetches through steve1.fetch, not the data path; rollout plays in an env, it reads no data files
    assert _importers("steve1/data/formats.py") == all_stages - {"rollout", "weights"}
    assert _importers("steve1/fetch.py") == {"weights", "download"}
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
    # names only names things (the generated set, the frame codecs); the package's numerics sets MKL's mode
    # (stdlib only), errors.py the UserError base (no imports); nothing from data/, models/, train/ or eval/,
    # not even the layout
    assert ImportGraph(REPO).deps("steve1.params") == ["steve1/__init__.py", "steve1/errors.py", "steve1/names.py",
                                                       "steve1/numerics.py", "steve1/params.py"]


def test_every_stage_is_a_steve1_command_running_the_same_module():
    from steve1.cli import STAGES

    commands = {name: module for name, (module, _) in STAGES.items()} | {"rollout": "stages.rollout"}
    assert commands == {s.name: s.module for s in stages()}


# ----------------------------------------------------------------------------- what shapes a stage (steve1.shapes)

def _doc(params: Params) -> dict:
    return yaml.safe_load(render(REPO, params))["stages"]


def test_files_named_by_params_are_deps():
    """Overwriting the file train.in_weights names once left `dvc status` "up to date"."""
    from steve1.params import validate_params

    params = validate_params({
        "train": {"in_weights": "start/vpt.weights", "in_model": "start/2x.model", "deepspeed": "configs/ds.json"},
        "evaluate": {"baseline_weights": "baselines/vpt.weights"},
        "embed": {"weights": "clip/attn.pth"},
        "decode": {"cursor_png": "assets/cursor.png"},
        "sample": {"val_from": "data/samplings/old.json"},
        "rollout": {"visual_prompts": {"a": "goals/a.npy"}, "policy_weights": "theirs/steve1.weights"},
        "prior": {"data": "prior/data.pkl"},
        "generate": {"n_episodes": 1, "agents": [{"name": "a", "model": "2x.model", "weights": "mine/a.weights"},
                                                 {"name": "b", "model": "2x.model", "weights": "mine/b.weights"}]},
        "weights": {"files": ["2x.model"]},
        "download": {"index": ["data/source/index.json", "more/index.json", "https://host/index.json"]},
    })
    doc = _doc(params)
    assert {"start/vpt.weights", "start/2x.model", "configs/ds.json"} <= set(doc["train"]["deps"])
    assert {"baselines/vpt.weights", "start/2x.model"} <= set(doc["evaluate"]["deps"])
    assert "clip/attn.pth" in doc["embed"]["deps"] and "clip/attn.pth" in doc["prior"]["deps"]
    assert "clip/attn.pth" in doc["embed-set"]["do"]["deps"] and "assets/cursor.png" in doc["decode"]["deps"]
    assert "data/samplings/old.json" in doc["sample"]["deps"]
    assert {"goals/a.npy", "theirs/steve1.weights", "clip/attn.pth"} <= set(doc["rollout"]["deps"])
    assert "prior/data.pkl" in doc["prior"]["deps"]
    # a bare agent file name lives in weights.dir, already a dep; a path is a dep of its own
    assert {"mine/a.weights", "mine/b.weights"} <= set(doc["generate"]["deps"])
    assert "data/weights/2x.model" not in doc["generate"]["deps"]
    # the default index is inside paths.source (a dep already); a URL is no file dep
    assert "more/index.json" in doc["download"]["deps"] and "data/source/index.json" not in doc["download"]["deps"]
    assert not any("://" in d for d in doc["download"]["deps"])


def test_a_file_named_after_dvc_yaml_was_rendered_is_unlisted_until_it_is_rendered_again(tmp_path):
    """The stages' guard under `dvc repro` (stages/_common.py): a file params name since dvc.yaml was
    rendered is no dep, so DVC would reuse the stage's result when that file changes."""
    from steve1.params import validate_params
    from steve1.pipeline import unlisted_file_deps

    (tmp_path / DVC_YAML).write_text(render(REPO, Params()))
    named = validate_params({"evaluate": {"baseline_weights": "extra/base.weights"}, "embed": {"weights": "clip/attn.pth"},
                             "train": {"in_weights": "data/weights/steve1.weights"}})
    unlisted = unlisted_file_deps(named, tmp_path)
    assert unlisted["evaluate"] == ["extra/base.weights"]
    assert unlisted["embed-set"] == ["clip/attn.pth"]     # a foreach stage: its `do`
    assert "train" not in unlisted                        # inside ${weights.dir}, a dep already
    assert "sample" not in unlisted
    (tmp_path / DVC_YAML).write_text(render(REPO, named))
    assert unlisted_file_deps(named, tmp_path) == {}
    assert unlisted_file_deps(named, tmp_path / "no-such-repo") == {}
    (tmp_path / DVC_YAML).write_text(yaml.safe_dump({"stages": {"mine": {"cmd": "true"}}}))   # a user's own dvc.yaml
    assert unlisted_file_deps(named, tmp_path) == {}


def test_the_dvc_yaml_check_is_no_code_dep_of_the_stages():
    """stages/_common.py imports steve1.pipeline only to refuse a run: editing the pipeline declaration
    (a plot, a stage's outs) must not make every stage stale."""
    assert "stages/_common.py" in _deps()["train"]
    assert _importers("steve1/pipeline.py") == set()


def test_null_and_empty_params_give_no_file_dep():
    """A file param left null (the defaults) or set to an empty string names no file: no dep of its own,
    the deps of the defaults (the test once compared two renders of the same Params(): it could not fail)."""
    from steve1.params import validate_params

    default = _doc(Params())
    empty = _doc(validate_params({"train": {"in_weights": "", "in_model": ""}, "evaluate": {"baseline_weights": ""},
                                  "embed": {"weights": ""}, "sample": {"val_from": ""}, "prior": {"data": ""},
                                  "rollout": {"policy_weights": ""}}))
    for doc in (default, empty):
        for name in ("train", "evaluate", "embed", "rollout", "prior", "sample", "generate"):
            data = [d for d in doc[name]["deps"] if not d.startswith(("steve1/", "stages/", "assets/", "configs/"))]
            assert all(d.startswith("${") for d in data), (name, data)
    assert {name: s.get("deps") for name, s in empty.items()} == {name: s.get("deps") for name, s in default.items()}


def test_a_start_weights_file_inside_weights_dir_is_covered_by_that_dep():
    from steve1.params import validate_params

    doc = _doc(validate_params({"weights": {"files": ["rl-from-foundation-2x.weights"]},
                                "train": {"in_weights": "data/weights/rl-from-foundation-2x.weights"}}))
    assert "${weights.dir}" in doc["train"]["deps"]
    assert "data/weights/rl-from-foundation-2x.weights" not in doc["train"]["deps"]


def test_params_are_keys_and_speed_only_keys_stale_nothing():
    from fixtures.schema import speed_only_keys

    doc = _doc(Params())
    listed = {s: (e.get("do", e))["params"] for s, e in doc.items()}
    assert set(speed_only_keys()) == {"decode.workers", "decode.video_threads", "train.num_workers",
                                      "download.concurrency"}
    for name, keys in listed.items():
        assert not set(keys) & set(speed_only_keys()), name
        assert all("." in k or k == "learning_rate" for k in keys), (name, keys)   # keys, not whole sections
    assert "decode.frame_quality" in listed["decode"] and "decode.frame_quality" in listed["generate"]
    assert "decode.frame_quality" in listed["import-set"]
    assert "train.augment.hue" in listed["train"] and "train.run" in listed["train"]
