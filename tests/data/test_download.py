"""The downloader against a local HTTP server (127.0.0.1 only) that injects faults.

Every fault is bounded: small files, ``backoff_s`` of milliseconds; a slow body stalls until the
client gives up (never a race between a sleep and a timeout, which a loaded machine can lose), so
the whole module runs in a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import re
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from stages import download as download_stage
from steve1.data.download import read_manifest, run_download
from steve1.data.formats import RAW_FORMAT_VERSION
from steve1.fetch import PART_SUFFIX, RetryPolicy, fetch_file
from steve1.layout import MANIFEST as RAW_MANIFEST

FAST = RetryPolicy(retries=3, backoff_s=0.01, timeout_s=2.0)
EP_A = "alpha-ep-000000000001-20220101-000000"
EP_B = "bravo-ep-000000000002-20220101-000000"


def _tiny_mp4(path: Path, n_frames: int = 8) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (64, 48))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(n_frames):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return path.read_bytes()


@dataclass
class Fault:
    """What the server does to one path; counters refer to requests of that path."""

    status_first: int = 0          # answer the first k requests with `status`
    status: int = 500
    drop_first: int = 0            # first k requests: send half of the body, then close
    slow_first: int = 0            # first k requests: send half, stall until the client hangs up (at most
    sleep_s: float = 60.0          # `sleep_s`), then send the rest
    ignore_range: bool = False     # always 200 with the full body
    extra_length: int = 0          # Content-Length claims this many bytes more than sent
    no_length: bool = False        # send no Content-Length: the body ends when the connection closes
    cut_first: int = 0             # first k requests: the body stops at byte `cut_at` of the file
    cut_at: int = 0


@dataclass
class Server:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    log: list[tuple[str, str | None, int]] = field(default_factory=list)  # path, Range header, status
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests_for(self, path: str) -> list[tuple[str, str | None, int]]:
        return [r for r in self.log if r[0] == path]


def _stall(conn: socket.socket, seconds: float) -> None:
    """Wait ``seconds``, or less: until the client closes the connection (gave up on the body)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([conn], [], [], min(left, 0.05))[0]:
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"":
                    return
            except OSError:
                return
            time.sleep(0.05)      # readable without EOF (a pipelined byte): keep waiting


def _handler(server: Server):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _record(self, status: int) -> int:
            with server.lock:
                n = len(server.requests_for(self.path))
                server.log.append((self.path, self.headers.get("Range"), status))
            return n

        def do_GET(self):
            data = server.files.get(self.path)
            fault = server.faults.get(self.path, Fault())
            with server.lock:
                n = len(server.requests_for(self.path))
            if data is None:
                self._record(404)
                self.send_error(404)
                return
            if n < fault.status_first:
                self._record(fault.status)
                self.send_error(fault.status)
                return
            start, rng = 0, self.headers.get("Range")
            if rng and not fault.ignore_range:
                start = int(rng.removeprefix("bytes=").rstrip("-"))
                if start >= len(data):
                    self._record(416)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._record(206)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self._record(200)
                self.send_response(200)
            body = data[start:]
            if n < fault.cut_first:
                body = body[: max(0, fault.cut_at - start)]
            if not fault.no_length:
                self.send_header("Content-Length", str(len(body) + fault.extra_length))
            self.end_headers()
            half = len(body) // 2
            if n < fault.drop_first:
                self.wfile.write(body[:half])
                self.wfile.flush()
                self.close_connection = True
                return
            if n < fault.slow_first:
                self.wfile.write(body[:half])
                self.wfile.flush()
                _stall(self.connection, fault.sleep_s)
                body = body[half:]
            try:
                self.wfile.write(body)
            except OSError:  # the client gave up on a slow body
                pass

    return Handler


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), None)
    httpd.daemon_threads = True
    srv = Server(base=f"http://127.0.0.1:{httpd.server_address[1]}/")
    httpd.RequestHandlerClass = _handler(srv)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("rec")
    lines = [json.dumps({"tick": i, "keyboard": {"keys": []}, "mouse": {"dx": 0.0, "dy": 0.0}}) for i in range(8)]
    return {"mp4": _tiny_mp4(tmp / "x.mp4"), "jsonl": ("\n".join(lines) + "\n").encode()}


def _serve(server: Server, recording, ids=(EP_A, EP_B), version="10.0") -> list[str]:
    for ep in ids:
        for kind in ("mp4", "jsonl"):
            server.files[f"/data/{version}/{ep}.{kind}"] = recording[kind]
    return [f"data/{version}/{ep}.mp4" for ep in ids]


def _write_index(tmp_path: Path, basedir: str, relpaths: list[str]) -> Path:
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"basedir": basedir, "relpaths": relpaths}))
    return path


def _run(tmp_path, server, recording, policy=FAST, **kw):
    index = _write_index(tmp_path, server.base, _serve(server, recording))
    return run_download(tmp_path / "raw", index, policy=policy, progress=False, **kw)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _assert_exact(raw: Path, ep: str, recording) -> None:
    for kind in ("mp4", "jsonl"):
        assert (raw / f"{ep}.{kind}").read_bytes() == recording[kind]
        assert not (raw / f"{ep}.{kind}{PART_SUFFIX}").exists()
    assert not raw.with_name(raw.name + ".partial").exists()  # the staging folder goes once empty


# ------------------------------------------------------------------------------ clean runs


def test_clean_download_writes_files_and_manifest(tmp_path, server, recording):
    report = _run(tmp_path, server, recording, concurrency=2)
    raw = tmp_path / "raw"
    assert report.n_ok == 2 and not report.failed
    manifest = json.loads((raw / RAW_MANIFEST).read_text())
    assert manifest["format_version"] == RAW_FORMAT_VERSION
    assert manifest["index"]["location"] == str(tmp_path / "index.json")
    assert list(manifest["episodes"]) == [EP_A, EP_B]
    rec = manifest["episodes"][EP_A]
    assert rec["status"] == "ok" and rec["reason"] is None and rec["version"] == "10.0"
    assert rec["url"] == f"{server.base}data/10.0/{EP_A}.mp4"
    assert rec["bytes"] == {"mp4": len(recording["mp4"]), "jsonl": len(recording["jsonl"])}
    assert rec["sha256"] == {"mp4": _sha(recording["mp4"]), "jsonl": _sha(recording["jsonl"])}
    assert "seconds" not in rec   # a DVC output holds only what the sources determine
    for ep in (EP_A, EP_B):
        _assert_exact(raw, ep, recording)
    assert all(r[1] is None for r in server.log)  # no Range on a fresh fetch


def test_index_over_http(tmp_path, server, recording):
    relpaths = _serve(server, recording, ids=(EP_A,))
    server.files["/index.json"] = json.dumps({"basedir": ".", "relpaths": relpaths}).encode()
    report = run_download(tmp_path / "raw", server.base + "index.json", policy=FAST, progress=False)
    assert report.n_ok == 1
    _assert_exact(tmp_path / "raw", EP_A, recording)


def test_file_url_and_relative_path_indices(tmp_path, recording, monkeypatch):
    src = tmp_path / "source"
    (src / "recordings").mkdir(parents=True)
    for kind in ("mp4", "jsonl"):
        (src / "recordings" / f"{EP_A}.{kind}").write_bytes(recording[kind])
    index = src / "index.json"
    index.write_text(json.dumps({"basedir": ".", "relpaths": [f"recordings/{EP_A}.mp4"]}))

    report = run_download(tmp_path / "raw1", index.as_uri(), progress=False)
    assert report.n_ok == 1
    _assert_exact(tmp_path / "raw1", EP_A, recording)
    # outside the working directory: recorded relative to the index's folder, never absolute
    assert report.episodes[EP_A]["url"] == f"recordings/{EP_A}.mp4"

    monkeypatch.chdir(tmp_path)
    report = run_download("raw2", "source/index.json", progress=False)
    assert report.n_ok == 1
    _assert_exact(tmp_path / "raw2", EP_A, recording)
    assert report.episodes[EP_A]["url"] == f"source/recordings/{EP_A}.mp4"   # relative to the workspace
    assert report.episodes[EP_A]["version"] is None

    # a local source regenerated in place is copied again, not "verified" against the old copy
    new_jsonl = recording["jsonl"] + b'{"extra": 1}\n'
    (src / "recordings" / f"{EP_A}.jsonl").write_bytes(new_jsonl)
    report = run_download("raw2", "source/index.json", progress=False)
    assert report.n_ok == 1
    assert (tmp_path / "raw2" / f"{EP_A}.jsonl").read_bytes() == new_jsonl


# ------------------------------------------------------------------------------ injected faults


def test_dropped_connection_resumes_with_range(tmp_path, server, recording):
    path = f"/data/10.0/{EP_A}.mp4"
    server.faults[path] = Fault(drop_first=1)
    report = _run(tmp_path, server, recording)
    assert report.n_ok == 2
    _assert_exact(tmp_path / "raw", EP_A, recording)
    reqs = server.requests_for(path)
    half = len(recording["mp4"]) // 2
    assert reqs == [(path, None, 200), (path, f"bytes={half}-", 206)]


def test_500s_are_retried(tmp_path, server, recording):
    path = f"/data/10.0/{EP_B}.jsonl"
    server.faults[path] = Fault(status_first=2, status=503)
    report = _run(tmp_path, server, recording)
    assert report.n_ok == 2
    assert [r[2] for r in server.requests_for(path)] == [503, 503, 200]
    _assert_exact(tmp_path / "raw", EP_B, recording)


def test_500s_beyond_retries_fail_the_episode(tmp_path, server, recording):
    path = f"/data/10.0/{EP_B}.mp4"
    server.faults[path] = Fault(status_first=100, status=500)
    report = _run(tmp_path, server, recording, policy=RetryPolicy(retries=2, backoff_s=0.01, timeout_s=2.0))
    assert list(report.failed) == [EP_B]
    assert "gave up after 3 attempt(s)" in report.failed[EP_B] and "HTTP 500" in report.failed[EP_B]
    assert len(server.requests_for(path)) == 3
    assert not list((tmp_path / "raw").glob(f"{EP_B}*"))


def test_slow_body_times_out_and_resumes(tmp_path, server, recording):
    path = f"/data/10.0/{EP_A}.mp4"
    server.faults[path] = Fault(slow_first=1)       # stalls mid-body until the client times out
    report = _run(tmp_path, server, recording, policy=RetryPolicy(retries=2, backoff_s=0.01, timeout_s=1.0))
    assert report.n_ok == 2
    _assert_exact(tmp_path / "raw", EP_A, recording)
    assert [r[2] for r in server.requests_for(path)] == [200, 206]


def test_always_slow_fails_after_bounded_retries(tmp_path, server, recording):
    path = f"/data/10.0/{EP_A}.mp4"
    server.faults[path] = Fault(slow_first=100)     # every request stalls mid-body
    report = _run(tmp_path, server, recording, policy=RetryPolicy(retries=1, backoff_s=0.01, timeout_s=1.0))
    assert list(report.failed) == [EP_A]
    assert "timed out" in report.failed[EP_A].lower()
    assert len(server.requests_for(path)) == 2
    # the bytes that did arrive wait for the next run as a partial, outside the raw folder
    assert (tmp_path / "raw.partial" / f"{EP_A}.mp4{PART_SUFFIX}").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted([f"{EP_B}.mp4", f"{EP_B}.jsonl", RAW_MANIFEST])


def test_content_length_longer_than_body(tmp_path, server, recording):
    path = f"/data/10.0/{EP_A}.jsonl"
    server.faults[path] = Fault(extra_length=100, ignore_range=True)  # every answer is short
    report = _run(tmp_path, server, recording)
    assert list(report.failed) == [EP_A]
    assert "IncompleteRead" in report.failed[EP_A] or "short body" in report.failed[EP_A]
    assert len(server.requests_for(path)) == FAST.retries + 1


def test_short_body_once_then_resume(tmp_path, server, recording):
    path = f"/data/10.0/{EP_A}.jsonl"
    server.faults[path] = Fault(drop_first=1)
    report = _run(tmp_path, server, recording)
    assert report.n_ok == 2
    _assert_exact(tmp_path / "raw", EP_A, recording)
    assert server.requests_for(path)[1][1] is not None


def test_404_is_permanent(tmp_path, server, recording):
    relpaths = _serve(server, recording)
    del server.files[f"/data/10.0/{EP_B}.jsonl"]
    index = _write_index(tmp_path, server.base, relpaths)
    report = run_download(tmp_path / "raw", index, policy=FAST, progress=False)
    assert list(report.failed) == [EP_B]
    assert "HTTP 404" in report.failed[EP_B] and "not retried" in report.failed[EP_B]
    assert len(server.requests_for(f"/data/10.0/{EP_B}.jsonl")) == 1
    assert not (tmp_path / "raw" / f"{EP_B}.mp4").exists()  # no half episode under final names
    manifest = read_manifest(tmp_path / "raw")
    assert manifest["episodes"][EP_B]["status"] == "failed"
    assert manifest["episodes"][EP_B]["sha256"] is None


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, recording):
    path = f"/data/10.0/{EP_A}.mp4"
    server.faults[path] = Fault(drop_first=1, ignore_range=True)
    report = _run(tmp_path, server, recording)
    assert report.n_ok == 2
    _assert_exact(tmp_path / "raw", EP_A, recording)
    reqs = server.requests_for(path)
    assert [r[2] for r in reqs] == [200, 200] and reqs[1][1] is not None  # asked for a range, got it all


def test_corrupt_mp4_fails_verification(tmp_path, server, recording):
    _serve(server, recording)
    server.files[f"/data/10.0/{EP_A}.mp4"] = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
    index = _write_index(tmp_path, server.base, [f"data/10.0/{EP_A}.mp4", f"data/10.0/{EP_B}.mp4"])
    report = run_download(tmp_path / "raw", index, policy=FAST, progress=False)
    assert list(report.failed) == [EP_A]
    assert "video" in report.failed[EP_A].lower() or "frame" in report.failed[EP_A].lower()
    assert not list((tmp_path / "raw").glob(f"{EP_A}*"))


def test_bad_jsonl_fails_verification(tmp_path, server, recording):
    _serve(server, recording)
    server.files[f"/data/10.0/{EP_B}.jsonl"] = b'{"tick": 0}\n{"tick": 1, broken\n'
    report = run_download(
        tmp_path / "raw", _write_index(tmp_path, server.base, [f"data/10.0/{EP_B}.mp4"]), policy=FAST, progress=False
    )
    assert "line 2 is not valid JSON" in report.failed[EP_B]


# ------------------------------------------------------------------------------ truncation and staging


def test_partial_files_of_a_failed_episode_never_sit_in_the_raw_folder(tmp_path, server, recording):
    jsonl = f"/data/10.0/{EP_A}.jsonl"
    server.faults[jsonl] = Fault(drop_first=100)  # half of the body, every time
    report = _run(tmp_path, server, recording, policy=RetryPolicy(retries=1, backoff_s=0.01, timeout_s=2.0))
    assert list(report.failed) == [EP_A]
    raw, staging = tmp_path / "raw", tmp_path / "raw.partial"
    assert sorted(p.name for p in raw.iterdir()) == sorted([f"{EP_B}.mp4", f"{EP_B}.jsonl", RAW_MANIFEST])
    assert sorted(p.name for p in staging.iterdir()) == [f"{EP_A}.jsonl{PART_SUFFIX}", f"{EP_A}.mp4{PART_SUFFIX}"]
    server.faults.clear()
    report = _run(tmp_path, server, recording)
    assert report.n_ok == 2
    _assert_exact(raw, EP_A, recording)


def test_partials_an_older_version_left_in_the_raw_folder_move_out(tmp_path, server, recording):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{EP_A}.mp4{PART_SUFFIX}").write_bytes(recording["mp4"][:100])
    report = _run(tmp_path, server, recording)
    assert report.n_ok == 2
    _assert_exact(raw, EP_A, recording)
    assert server.requests_for(f"/data/10.0/{EP_A}.mp4")[0][1] == "bytes=100-"  # and were resumed


def _line_boundary(data: bytes, frac: float) -> int:
    return data.index(b"\n", int(len(data) * frac)) + 1


def test_a_body_without_a_size_is_confirmed_with_a_range_request(tmp_path, server, recording):
    jsonl, mp4 = f"/data/10.0/{EP_A}.jsonl", f"/data/10.0/{EP_A}.mp4"
    cut = _line_boundary(recording["jsonl"], 0.5)
    server.faults[jsonl] = Fault(no_length=True, cut_first=1, cut_at=cut)  # a proxy closing early, once
    server.faults[mp4] = Fault(no_length=True)  # whole, but unannounced
    report = _run(tmp_path, server, recording)
    assert report.n_ok == 2
    _assert_exact(tmp_path / "raw", EP_A, recording)
    assert server.requests_for(jsonl) == [(jsonl, None, 200), (jsonl, f"bytes={cut}-", 206),
                                          (jsonl, f"bytes={cut}-", 206)]  # asked past the end: more; resumed
    assert server.requests_for(mp4) == [(mp4, None, 200), (mp4, f"bytes={len(recording['mp4'])}-", 416)]


@pytest.mark.parametrize("kind,frac", [("jsonl", 0.5), ("mp4", 0.5), ("mp4", 0.9), ("mp4", 0.99)])
def test_a_cut_body_without_size_or_range_support_is_refused(tmp_path, server, recording, kind, frac):
    path = f"/data/10.0/{EP_A}.{kind}"
    data = recording[kind]
    cut = _line_boundary(data, frac) - 3 if kind == "jsonl" else int(len(data) * frac)  # jsonl: inside a line
    server.faults[path] = Fault(no_length=True, ignore_range=True, cut_first=100, cut_at=cut)
    report = _run(tmp_path, server, recording)
    assert list(report.failed) == [EP_A]
    expected = "does not end with a newline" if kind == "jsonl" else "truncated"
    assert expected in report.failed[EP_A], report.failed[EP_A]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted([f"{EP_B}.mp4", f"{EP_B}.jsonl", RAW_MANIFEST])


def test_a_whole_body_without_size_or_range_support_is_accepted_with_a_warning(tmp_path, server, recording, caplog):
    """Such a server's jsonl is checked against the video instead: a line for each of its frames."""
    for kind in ("mp4", "jsonl"):
        server.faults[f"/data/10.0/{EP_A}.{kind}"] = Fault(no_length=True, ignore_range=True)
    report = _run(tmp_path, server, recording)
    assert report.n_ok == 2
    _assert_exact(tmp_path / "raw", EP_A, recording)
    assert "checked against its video's frame count instead" in caplog.text


@pytest.mark.parametrize("frac", [0.1, 0.7])
def test_a_jsonl_cut_at_a_line_boundary_without_size_or_range_support_is_never_ok(tmp_path, server, recording, frac):
    """The cut a jsonl alone cannot show (every line parses, the last ends with a newline): fewer lines
    than the video has frames; before, it was ok and decode's max_frame_mismatch let it through."""
    path = f"/data/10.0/{EP_A}.jsonl"
    server.faults[path] = Fault(no_length=True, ignore_range=True, cut_first=100,
                                cut_at=_line_boundary(recording["jsonl"], frac))
    report = _run(tmp_path, server, recording)
    assert list(report.failed) == [EP_A]
    assert re.search(rf"{EP_A}.jsonl: \d lines for the 8 frames of the video, and the server declared no size and "
                     r"ignores Range requests: the transfer was probably cut at a line boundary", report.failed[EP_A])
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted([f"{EP_B}.mp4", f"{EP_B}.jsonl", RAW_MANIFEST])


def test_a_short_body_against_its_content_length_leaves_nothing_in_raw(tmp_path, server, recording):
    path = f"/data/10.0/{EP_A}.mp4"
    server.faults[path] = Fault(drop_first=100)
    report = _run(tmp_path, server, recording, policy=RetryPolicy(retries=1, backoff_s=0.01, timeout_s=2.0))
    assert list(report.failed) == [EP_A]
    assert not list((tmp_path / "raw").glob(f"{EP_A}*"))


# ------------------------------------------------------------------------------ reruns


def test_rerun_verifies_instead_of_refetching(tmp_path, server, recording):
    _run(tmp_path, server, recording)
    server.log.clear()
    report = _run(tmp_path, server, recording)
    assert report.n_ok == 2 and report.reused == 2
    assert server.log == []  # not one request

    # a file that no longer matches its recorded sha256 is fetched again, alone
    (tmp_path / "raw" / f"{EP_B}.jsonl").write_bytes(recording["jsonl"][:-2] + b"\n")
    report = _run(tmp_path, server, recording)
    assert report.reused == 1
    assert {r[0] for r in server.log} == {f"/data/10.0/{EP_B}.mp4", f"/data/10.0/{EP_B}.jsonl"}
    _assert_exact(tmp_path / "raw", EP_B, recording)


def test_complete_file_of_a_failed_episode_resumes_with_416(tmp_path, server, recording):
    jsonl = f"/data/10.0/{EP_A}.jsonl"
    server.faults[jsonl] = Fault(status_first=1, status=500)
    report = _run(tmp_path, server, recording, policy=RetryPolicy(retries=0, backoff_s=0.0, timeout_s=2.0))
    assert list(report.failed) == [EP_A]
    assert (tmp_path / "raw.partial" / f"{EP_A}.mp4{PART_SUFFIX}").read_bytes() == recording["mp4"]
    server.log.clear()
    report = _run(tmp_path, server, recording)
    assert report.n_ok == 2 and report.fetched_bytes == len(recording["jsonl"])
    mp4 = f"/data/10.0/{EP_A}.mp4"
    assert server.requests_for(mp4) == [(mp4, f"bytes={len(recording['mp4'])}-", 416)]
    _assert_exact(tmp_path / "raw", EP_A, recording)


def test_unselected_episodes_are_removed(tmp_path, server, recording):
    _run(tmp_path, server, recording)
    (tmp_path / "raw" / f"{EP_B}.mp4{PART_SUFFIX}").write_bytes(b"partial")
    (tmp_path / "raw" / "notes.txt").write_text("kept")
    report = _run(tmp_path, server, recording, select="list", episodes=[EP_A])
    assert list(report.episodes) == [EP_A] and report.reused == 1
    names = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert names == sorted([f"{EP_A}.mp4", f"{EP_A}.jsonl", RAW_MANIFEST, "notes.txt"])


def test_fetch_file_streams_in_chunks(tmp_path, server, recording):
    server.files["/blob.bin"] = recording["mp4"]
    seen: list[int] = []
    result = fetch_file(server.base + "blob.bin", tmp_path / "blob.bin", FAST, on_bytes=seen.append, chunk_bytes=1024)
    assert result.bytes == len(recording["mp4"]) and result.sha256 == _sha(recording["mp4"])
    assert max(seen) <= 1024 and sum(seen) == len(recording["mp4"])


# ------------------------------------------------------------------------------ the stage


def _params(tmp_path: Path, index: Path, max_failed: float) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(
        f"paths: {{raw: '{tmp_path / 'raw'}'}}\n"
        f"download: {{index: '{index}', retries: 1, backoff_s: 0.01, timeout_s: 2.0, max_failed_fraction: {max_failed}}}\n"
    )
    return path


def test_stage_threshold(tmp_path, server, recording, capsys):
    relpaths = _serve(server, recording)
    del server.files[f"/data/10.0/{EP_B}.mp4"]
    index = _write_index(tmp_path, server.base, relpaths)

    assert download_stage.main(["--params", str(_params(tmp_path, index, 0.4))]) == 1
    err = capsys.readouterr().err
    assert "1 of 2 episodes failed" in err and EP_B in err and "HTTP 404" in err
    assert read_manifest(tmp_path / "raw")["episodes"][EP_B]["status"] == "failed"  # written before failing

    assert download_stage.main(["--params", str(_params(tmp_path, index, 0.5))]) == 0


def test_stage_reports_a_bad_index(tmp_path, capsys):
    assert download_stage.main(["--params", str(_params(tmp_path, tmp_path / "missing.json", 0.1))]) == 1
    assert "missing.json" in capsys.readouterr().err


def test_credentials_in_basedir_reach_no_output_or_log(tmp_path, server, recording, caplog):
    """An index basedir of http://user:password@host/ once wrote the password into the manifest."""
    authed = server.base.replace("http://", "http://alice:s3cret@")
    relpaths = _serve(server, recording, ids=(EP_A,))
    server.faults[f"/data/10.0/{EP_B}.mp4"] = Fault(status_first=9, status=404)
    index = _write_index(tmp_path, authed, [*relpaths, f"data/10.0/{EP_B}.mp4"])
    with caplog.at_level(logging.DEBUG):
        report = run_download(tmp_path / "raw", index, policy=FAST, progress=False)
    assert report.n_ok == 1 and EP_B in report.failed          # fetched with the credentials, one 404
    manifest = (tmp_path / "raw" / "manifest.json").read_text()
    assert "s3cret" not in manifest and "alice" not in manifest
    assert json.loads(manifest)["episodes"][EP_A]["url"] == f"{server.base}data/10.0/{EP_A}.mp4"
    assert json.loads(manifest)["index"]["basedir"] == server.base
    assert "s3cret" not in caplog.text and "s3cret" not in report.summary() + report.failure_message()


def test_concurrency_gives_the_same_bytes(tmp_path, server, recording):
    """download.concurrency is marked speed-only in the schema (no stage's DVC param): this is why."""
    index = _write_index(tmp_path, server.base, _serve(server, recording))
    for n in (1, 4):
        run_download(tmp_path / f"raw{n}", index, policy=FAST, progress=False, concurrency=n)
    one, four = tmp_path / "raw1", tmp_path / "raw4"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in four.iterdir())
    for p in one.iterdir():
        assert p.read_bytes() == (four / p.name).read_bytes(), p.name
