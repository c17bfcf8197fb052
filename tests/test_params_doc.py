"""The README's params reference is generated from the schema and must match it."""

from __future__ import annotations

import pytest

from steve1.params import Params
from steve1.params_doc import main, params_table, readme_table


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


def test_readme_table_matches_schema(repo_root):
    assert readme_table((repo_root / "README.md").read_text()) == params_table()
    assert main(["--check", str(repo_root / "README.md")]) == 0


def test_check_fails_on_a_stale_table(tmp_path, repo_root):
    text = (repo_root / "README.md").read_text().replace("| `learning_rate` |", "| `learning_rates` |", 1)
    (tmp_path / "README.md").write_text(text)
    assert main(["--check", str(tmp_path / "README.md")]) == 1
    (tmp_path / "none.md").write_text("no table")
    with pytest.raises(ValueError, match="no params table"):
        readme_table((tmp_path / "none.md").read_text())
