"""Output bytes do not depend on the thread count, the engine or what ran before in the process.

The shapes below are the ones that split: MKL divides the 2048-long reduction of the temporal
pooling's last linear layer across threads when a short episode gives few windows (24 and 28
frames: 9 and 13 windows of 16 rows). They differ in the last bits across 1 and 2 threads unless
MKL runs in strict reproducible mode (``steve1.numerics``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fixtures.recordings import write_png_recording
from stages import embed_set as embed_set_stage
from stages import import_set as import_set_stage
from steve1.numerics import blas_is_reproducible, strict_mode

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("given, wanted", [(None, "AUTO,STRICT"), ("", "AUTO,STRICT"), ("AVX2", "AVX2,STRICT"),
                                           ("COMPATIBLE,STRICT", "COMPATIBLE,STRICT"), ("STRICT", "AUTO,STRICT")])
def test_strict_mode_keeps_the_users_branch_and_adds_strict(given, wanted):
    assert strict_mode(given) == wanted


def test_importing_steve1_turns_on_reproducible_blas():
    if blas_is_reproducible() is None:
        pytest.skip("torch here has no MKL")
    assert blas_is_reproducible()


SPLIT_PRODUCT = """
    import torch
    torch.manual_seed(0)
    lin = torch.nn.Linear(2048, 512)
    x = torch.randn(208, 2048)
    out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            out.append(lin(x))
"""


def test_a_fresh_process_computes_the_same_bits_on_one_and_two_threads():
    proc = _python("import steve1\n" + textwrap.dedent(SPLIT_PRODUCT) + "print(torch.equal(*out))",
                   env={"MKL_CBWR": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_a_stage_refuses_to_compute_when_blas_ran_before_steve1_was_imported(tmp_path):
    if blas_is_reproducible() is None:
        pytest.skip("torch here has no MKL")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"custom": str(tmp_path / "custom")}}))
    proc = _python(f"""
        import os, sys, torch
        os.environ.pop("MKL_CBWR", None)
        torch.randn(4, 4) @ torch.randn(4, 4)         # MKL's first computation, in its default mode
        from stages import sample
        sys.exit(sample.main(["--params", {str(params)!r}]))
    """)
    assert proc.returncode == 1
    assert "MKL's reproducible mode could not be turned on" in proc.stderr
    assert "Traceback" not in proc.stderr


def _params(root: Path, source: Path) -> Path:
    params = {"paths": {"custom": str(root / "custom")}, "custom": {"mine": {"source": str(source)}},
              "embed": {"batch_size": 16, "device": "cpu"}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _embeds(root: Path) -> dict[str, bytes]:
    folder = root / "custom" / "mine" / "embeds"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.h5"))}


def test_embed_set_writes_the_same_bytes_in_this_process_on_two_threads_and_in_a_fresh_one_on_one(tmp_path):
    """The in-process sequence (import then embed, after whatever this test session ran, 2 threads) against
    ``python -m stages.embed_set`` alone in a fresh process with ``OMP_NUM_THREADS=1`` (as a Ray worker)."""
    source = tmp_path / "mine"
    for k in range(2):
        write_png_recording(source, f"png-{k}", n_frames=24 + 4 * k, seed=k)
    root = tmp_path / "ws"
    root.mkdir()
    params = _params(root, source)
    assert import_set_stage.main(["mine", "--params", str(params)]) == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert embed_set_stage.main(["mine", "--params", str(params)]) == 0
    finally:
        torch.set_num_threads(threads)
    here = _embeds(root)
    assert len(here) == 2
    for path in (root / "custom" / "mine" / "embeds").iterdir():
        path.unlink()
    proc = subprocess.run([sys.executable, "-m", "stages.embed_set", "mine", "--params", str(params)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_CBWR": ""},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    fresh = _embeds(root)
    assert sorted(fresh) == sorted(here)
    assert [name for name in here if here[name] != fresh[name]] == []


def test_window_embeddings_of_short_episodes_do_not_depend_on_the_thread_count():
    from steve1.data.embedding import embed_frames, make_embedder

    embedder = make_embedder(None, "tiny", seed=0, batch_size=16, device="cpu")
    h, w = embedder.model.config.resolution
    frames = np.random.default_rng(0).integers(0, 256, (28, h, w, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(embed_frames(embedder, frames)[0])
    finally:
        torch.set_num_threads(threads)
    assert out[0].tobytes() == out[1].tobytes()
