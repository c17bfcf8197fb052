"""The offline plots page (assets/plots/offline.html): DVC's placeholders, the pinned Vega libraries
inlined byte for byte as PROVENANCE.md records them, no script fetched from the network, named by
.dvc/config, and every plot of dvc.yaml names a template DVC can find."""

from __future__ import annotations

import configparser
import hashlib
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "assets" / "plots" / "offline.html"
SCRIPT = re.compile(r'<script data-lib="([^"@]+)@([^"]+)" data-sha256="([0-9a-f]{64})">\n(.*?)    </script>', re.S)


def test_page_has_dvc_placeholders_and_no_network_scripts():
    html = PAGE.read_text()
    assert "{plot_divs}" in html and "{refresh_tag}" in html
    assert "{scripts}" not in html                      # DVC's CDN <script src> tags have nowhere to go
    assert "<script src" not in html and "cdn.jsdelivr" not in html and "sourceMappingURL" not in html
    assert PAGE.stat().st_size < 2_000_000


def test_libraries_are_the_pinned_versions_recorded_in_provenance():
    from dvc_render.vega import VegaRenderer

    html = PAGE.read_text()
    provenance = (PAGE.parent / "PROVENANCE.md").read_text()
    libs = SCRIPT.findall(html)
    assert [(n, v) for n, v, _, _ in libs] == [("vega", "5.20.2"), ("vega-lite", "5.2.0"), ("vega-embed", "6.18.2")]
    for name, version, digest, code in libs:
        assert hashlib.sha256(code.encode()).hexdigest() == digest, name        # inlined as recorded
        assert f"| `{name}@{version}` |" in provenance and f"`{digest}`" in provenance
        assert f"npm/{name}@{version}" in VegaRenderer.SCRIPTS     # the versions DVC's own page asks for
        licence = (PAGE.parent / f"LICENSE-{name}.txt").read_text()
        assert "University of Washington Interactive Data Lab" in licence and "Redistribution" in licence
    assert 'var e="5.20.2"' in libs[0][3]                  # vega's own version string


def test_dvc_config_names_the_page_and_dvc_yaml_templates_exist():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert (REPO / ".dvc" / config["plots"]["html_template"]).resolve() == PAGE
    from dvc_render.vega_templates import TEMPLATES

    builtin = {t.DEFAULT_NAME for t in TEMPLATES}
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    props = [p for s in doc["stages"].values() for out in s.get("plots", []) for p in out.values()]
    props += [p for top in doc["plots"] for p in top.values()]
    for p in props:
        assert p.get("title") and p.get("x_label") and p.get("y_label"), p    # every plot says what it shows
        t = p.get("template", "linear")
        assert t in builtin or (REPO / ".dvc" / "plots" / f"{t}.json").is_file(), t
