"""Build ``offline.html``: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined, so
``dvc plots show`` renders without network (DVC's own page loads them from a CDN and stays blank
offline). ``.dvc/config`` names it (``plots.html_template``).

    python assets/plots/make_template.py                 # npm pack the pinned versions, write the page
    python assets/plots/make_template.py --tarballs DIR  # from tarballs already packed into DIR

The versions are the ones DVC's page asks for (``dvc_render.vega.VegaRenderer.SCRIPTS``), so every
DVC template renders as DVC means it. The page records each library's npm name, version, tarball
sha512 and the sha256 of the inlined file; ``PROVENANCE.md`` lists them with the licences
(BSD-3-Clause, ``LICENSE-vega.txt``). tests/test_plots_template.py checks the committed page.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "offline.html"
LIBS = (("vega", "5.20.2", "build/vega.min.js"),
        ("vega-lite", "5.2.0", "build/vega-lite.min.js"),
        ("vega-embed", "6.18.2", "build/vega-embed.min.js"))
# The page DVC fills: {plot_divs} (its plots) and {refresh_tag}; no {scripts}, so DVC's CDN <script src> tags
# have nowhere to go.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>steve1 plots</title>
    <!-- Vega, Vega-Lite and Vega-Embed inlined (BSD-3-Clause, University of Washington Interactive Data
         Lab): built by assets/plots/make_template.py; sources and digests in assets/plots/PROVENANCE.md -->
{scripts}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    <p>steve1 pipeline plots, rendered offline (Vega {vega}, Vega-Lite {vega_lite}, Vega-Embed {vega_embed} inlined).</p>
    {{plot_divs}}
</body>
</html>
"""


PROVENANCE = """# assets/plots: provenance

`offline.html` is DVC's plots page (`dvc_render.html.PAGE_HTML`'s placeholders `{{plot_divs}}` and
`{{refresh_tag}}`, no `{{scripts}}`) with three JavaScript libraries inlined, so `dvc plots show` renders
without network. `.dvc/config` names it (`plots.html_template`). It was written by
`python assets/plots/make_template.py` from the npm registry's tarballs (`npm pack <name>@<version>`); the
only change to each library file is the removal of its trailing `//# sourceMappingURL=` comment. The
versions are the ones DVC's own page loads from a CDN (`dvc_render.vega.VegaRenderer.SCRIPTS`).

| package | file inlined | licence | npm tarball integrity | sha256 of the inlined text |
|---|---|---|---|---|
{rows}

The three libraries are by the University of Washington Interactive Data Lab under the BSD 3-Clause
licence (texts beside this file). Their minified builds bundle some of their own dependencies (for
Vega-Embed: vega-tooltip, vega-themes, fast-json-patch, semver, json-stringify-pretty-compact; for
Vega-Lite: clone, fast-deep-equal, fast-json-stable-stringify, json-stringify-pretty-compact), under MIT,
ISC or BSD licences as each package's `package.json` states. `bar_interval.json` (in `.dvc/plots/`) is
this project's own Vega-Lite template.
"""


def pack(directory: Path) -> None:
    subprocess.run(["npm", "pack", *(f"{name}@{version}" for name, version, _ in LIBS)], cwd=directory,
                   check=True, capture_output=True)


def library(tarballs: Path, name: str, version: str, member: str) -> tuple[str, dict[str, str]]:
    tgz = tarballs / f"{name}-{version}.tgz"
    blob = tgz.read_bytes()
    with tarfile.open(tgz) as t:
        meta = json.load(t.extractfile("package/package.json"))
        code = t.extractfile(f"package/{member}").read().decode()
        licence = t.extractfile("package/LICENSE").read().decode()
    if meta["version"] != version or meta["license"] != "BSD-3-Clause":
        raise SystemExit(f"{tgz}: expected {name} {version} under BSD-3-Clause, got {meta['version']} {meta['license']}")
    lines = [ln for ln in code.splitlines() if not ln.startswith("//# sourceMappingURL=")]   # no map to fetch
    code = "\n".join(lines).strip() + "\n"
    if "</script" in code.lower() or any(p in code for p in ("{plot_divs}", "{scripts}", "{refresh_tag}")):
        raise SystemExit(f"{tgz}: {member} cannot be inlined as is (contains </script or a DVC placeholder)")
    info = {"name": name, "version": version, "file": member, "license": meta["license"],
            "tarball_sha512": "sha512-" + base64.b64encode(hashlib.sha512(blob).digest()).decode(),
            "sha256": hashlib.sha256(code.encode()).hexdigest(), "licence_text": licence}
    return code, info


def build(tarballs: Path) -> list[dict[str, str]]:
    scripts, infos = [], []
    for name, version, member in LIBS:
        code, info = library(tarballs, name, version, member)
        infos.append(info)
        scripts.append(f'    <script data-lib="{name}@{version}" data-sha256="{info["sha256"]}">\n{code}    </script>')
    OUT.write_text(PAGE.format(scripts="\n".join(scripts), vega=LIBS[0][1], vega_lite=LIBS[1][1], vega_embed=LIBS[2][1]))
    rows = []
    for i in infos:
        (HERE / f"LICENSE-{i['name']}.txt").write_text(i["licence_text"])
        rows.append(f"| `{i['name']}@{i['version']}` | `package/{i['file']}` | {i['license']} (`LICENSE-{i['name']}.txt`) "
                    f"| `{i['tarball_sha512']}` | `{i['sha256']}` |")
    (HERE / "PROVENANCE.md").write_text(PROVENANCE.format(rows="\n".join(rows)))
    return infos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarballs", type=Path, help="folder holding <name>-<version>.tgz (default: npm pack them)")
    args = parser.parse_args()
    if args.tarballs:
        infos = build(args.tarballs)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            pack(Path(tmp))
            infos = build(Path(tmp))
    for i in infos:
        print(f"{i['name']}@{i['version']} {i['file']} sha256 {i['sha256']} (tarball {i['tarball_sha512']})")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
