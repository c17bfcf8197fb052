"""Params profiles: named overlays of params.yaml (``configs/profiles/<name>.yaml``).

``steve1 profile paper`` merges the overlay into params.yaml in place, keeping its comments
(ruamel round-trip), validates the result with the one schema before writing, and writes
atomically; ``git diff params.yaml`` shows exactly what changed and ``git checkout params.yaml``
goes back to the embedded default. :func:`merge_into_params` is that write for any overlay
(``steve1 fit-t`` sets ``sample.T`` through it).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from steve1.io import write_text_atomic
from steve1.params import ParamsError, validate_params

PROFILES_DIR = Path(__file__).resolve().parents[1] / "configs" / "profiles"


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    return y


def available_profiles(directory: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def _merge(base: CommentedMap, overlay: dict[str, Any], prefix: str = "") -> list[str]:
    """Deep-merge ``overlay`` into ``base`` in place; return the dotted keys that changed. Lists and empty
    mappings replace (``text_prompts: {}`` means none set, not "keep what is there")."""
    changed = []
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and isinstance(base.get(key), dict):
            changed += _merge(base[key], value, path + ".")
        elif base.get(key) != value:
            base[key] = value
            changed.append(path)
    return changed


def merge_into_params(overlay: dict[str, Any], params_path: str | Path, origin: str, dry_run: bool = False) -> list[str]:
    """Merge ``overlay`` into ``params_path`` keeping its comments; validate the result (``origin`` names the
    change in errors) before writing it atomically, or not at all with ``dry_run``. Returns the changed keys."""
    y = _yaml()
    params_path = Path(params_path)
    doc = y.load(params_path.read_text())
    changed = _merge(doc, overlay)
    buf = io.StringIO()
    y.dump(doc, buf)
    text = buf.getvalue()
    validate_params(YAML(typ="safe").load(text), origin=f"{params_path} with {origin}")
    if not dry_run:
        write_text_atomic(params_path, text)
    return changed


def apply_profile(profile: str, params_path: str | Path = "params.yaml", dry_run: bool = False) -> list[str]:
    """Merge profile ``profile`` (a name in configs/profiles or a YAML path) into ``params_path``."""
    path = Path(profile) if profile.endswith((".yaml", ".yml")) else PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise ParamsError(f"profile {profile!r} not found ({path}); available: {', '.join(available_profiles())}")
    overlay = _yaml().load(path.read_text()) or {}
    return merge_into_params(overlay, params_path, f"profile {path.name}", dry_run)
