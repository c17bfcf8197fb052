"""The params reference (docs/params.md) is generated from the schema and must match it."""

from __future__ import annotations

from steve1.params import Params
from steve1.params_doc import main, params_page, params_table


def test_every_field_is_documented():
    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                yield from walk(ann, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", field.description

    missing = [key for key, doc in walk(Params) if not doc]
    assert not missing, f"params without a description: {missing}"


def test_params_page_matches_schema(repo_root, shipped_params_file):
    page = repo_root / "docs" / "params.md"
    assert page.read_text() == params_page(shipped_params_file)
    assert params_table(shipped_params_file) in page.read_text()
    assert main(["--check", str(page), "--params", str(shipped_params_file)]) == 0
    assert main(["--check", "--params", str(shipped_params_file)]) == 0   # default file: the repository's page


def test_every_leaf_key_has_a_row(repo_root):
    table = params_table()
    for key in ("learning_rate", "engine", "ray.embed.num_gpus", "train.augment.hue", "tune.poll_s"):
        assert f"| `{key}` |" in table


def test_check_fails_on_a_stale_or_missing_page_and_write_fixes_it(tmp_path, repo_root, capsys, shipped_params_file):
    stale = tmp_path / "params.md"
    stale.write_text((repo_root / "docs" / "params.md").read_text()
                     .replace("| `learning_rate` |", "| `learning_rates` |", 1))
    shipped = ["--params", str(shipped_params_file)]
    assert main(["--check", str(stale), *shipped]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--check", str(tmp_path / "none.md"), *shipped]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(["--write", str(stale), *shipped]) == 0
    assert main(["--check", str(stale), *shipped]) == 0
    assert stale.read_text() == params_page(shipped_params_file)
