"""Tests of the MS-COCO download stage against a local HTTP server (no internet)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import send_head, serving
from PIL import Image

from similar_images._util import archives
from similar_images._util import download as si_download
from similar_images._util import http as si_http
from similar_images._util.archives import EXTRACTED_MARKER, extract_zip, verify_zip
from similar_images._util.download import download_file
from similar_images.cli import main
from similar_images.errors import DownloadError, NoInputsError
from similar_images.sources.coco import LOCAL_IMAGES_HINT, DownloadConfig, download_coco_val2014, write_file_list

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data_scripts" / "get_ms_coco_dataset.sh"
NAMES = ["COCO_val2014_000000000139.jpg", "COCO_val2014_000000000285.jpg", "COCO_val2014_000000000632.png"]


# --------------------------------------------------------------------------
# A local HTTP server with Range support and failure modes
# --------------------------------------------------------------------------


@dataclass
class ServerState:
    """What the server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    #: Close the connection after this many body bytes (for the next ``drop_times`` responses).
    drop_after: int | None = None
    drop_times: int = 1
    #: Stop sending (without closing) after this many body bytes, for ``stall_s`` seconds.
    stall_after: int | None = None
    stall_s: float = 0.0
    #: Ignore Range headers (answer 200 with the whole file).
    ignore_range: bool = False
    requests: list[dict[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    state: ServerState  # set on a subclass per server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        st = self.state
        range_header = self.headers.get("Range")
        with st.lock:
            st.requests.append({"path": self.path, "range": range_header})
        data = st.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        span = send_head(self, len(data), None if st.ignore_range else range_header, "application/zip")
        if span is None:
            return
        body = data[span[0]:span[1]]
        with st.lock:
            drop = st.drop_after is not None and st.drop_times > 0
            if drop:
                st.drop_times -= 1
        try:
            if drop:
                assert st.drop_after is not None
                self.wfile.write(body[: st.drop_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if st.stall_after is not None:
                self.wfile.write(body[: st.stall_after])
                self.wfile.flush()
                time.sleep(st.stall_s)
                self.close_connection = True
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@dataclass
class Server:
    state: ServerState
    port: int

    def url(self, path: str = "/zips/val2014.zip") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    state = ServerState()
    with serving(type("Handler", (_Handler,), {"state": state})) as url:
        yield Server(state, int(url.rsplit(":", 1)[1]))


def _make_zip(
    tmp_path: Path, *, extra: dict[str, bytes] | None = None, compression: int = zipfile.ZIP_DEFLATED
) -> bytes:
    """A small COCO-like archive: ``val2014/`` holding a few real tiny images."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        zf.writestr(zipfile.ZipInfo("val2014/"), b"")
        for i, name in enumerate(NAMES):
            img = Image.new("RGB", (24 + 8 * i, 16 + 4 * i), (40 * i, 200 - 50 * i, 90))
            for x in range(img.width):  # some structure so that the bytes are not trivial
                img.putpixel((x, x % img.height), (255, 255, 255))
            path = src / name
            img.save(path, quality=90) if name.endswith(".jpg") else img.save(path)
            zf.write(path, f"val2014/{name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def _config(dest: Path, url: str, **kwargs: object) -> DownloadConfig:
    return DownloadConfig(dest=dest, url=url, verbose=False, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def archive(tmp_path: Path, server: Server) -> bytes:
    data = _make_zip(tmp_path)
    server.state.files["/zips/val2014.zip"] = data
    return data


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(si_download, "_RETRY_WAIT_S", 0.0)


# --------------------------------------------------------------------------
# The whole pipeline
# --------------------------------------------------------------------------


def test_complete_download_extracts_and_lists_images(tmp_path: Path, server: Server, archive: bytes) -> None:
    dest = tmp_path / "data"
    file_list = download_coco_val2014(_config(dest, server.url(), expected_members=len(NAMES)))

    assert file_list == (dest / "val2014_files.txt").resolve()
    assert (dest / "val2014.zip").read_bytes() == archive
    folder = (dest / "val2014").resolve()
    assert (folder / EXTRACTED_MARKER).is_file()
    lines = file_list.read_text(encoding="utf-8").splitlines()
    assert lines == [str(folder / name) for name in sorted(NAMES)]
    for line in lines:
        assert Path(line).is_absolute()
        with Image.open(line) as img:
            img.load()  # a real, complete image
    # Nothing temporary is left behind.
    leftovers = [p.name for p in dest.iterdir() if p.name.endswith((".part", ".tmp")) or ".partial-" in p.name]
    assert leftovers == []
    assert [r["range"] for r in server.state.requests] == [None]


def test_resume_after_interruption_uses_range_request(tmp_path: Path, server: Server, archive: bytes) -> None:
    dest = tmp_path / "data"
    cut = len(archive) // 3
    server.state.drop_after, server.state.drop_times = cut, 1

    with pytest.raises(DownloadError) as excinfo:
        download_coco_val2014(_config(dest, server.url(), retries=0))
    message = str(excinfo.value)
    assert "re-running resumes" in message
    part = dest / "val2014.zip.part"
    assert part.stat().st_size == cut
    assert not (dest / "val2014.zip").exists()  # an incomplete archive never gets the final name

    download_coco_val2014(_config(dest, server.url(), retries=0))
    assert [r["range"] for r in server.state.requests] == [None, f"bytes={cut}-"]
    assert (dest / "val2014.zip").read_bytes() == archive
    assert not part.exists()
    assert len((dest / "val2014_files.txt").read_text().splitlines()) == len(NAMES)


def test_interrupted_transfer_is_resumed_within_one_call(tmp_path: Path, server: Server, archive: bytes) -> None:
    server.state.drop_after, server.state.drop_times = 100, 2
    path = download_file(server.url(), tmp_path / "a.zip", retries=3)
    assert path.read_bytes() == archive
    assert [r["range"] for r in server.state.requests] == [None, "bytes=100-", "bytes=200-"]


def test_too_many_interruptions_give_up(tmp_path: Path, server: Server, archive: bytes) -> None:
    server.state.drop_after, server.state.drop_times = 50, 10
    with pytest.raises(DownloadError, match="closed after"):
        download_file(server.url(), tmp_path / "a.zip", retries=2)
    assert len(server.state.requests) == 3  # the first attempt and two resumptions
    assert (tmp_path / "a.zip.part").stat().st_size == 150


def test_server_without_range_support_restarts(tmp_path: Path, server: Server, archive: bytes) -> None:
    (tmp_path / "a.zip.part").write_bytes(b"garbage that is not the start of the file")
    server.state.ignore_range = True
    path = download_file(server.url(), tmp_path / "a.zip")
    assert server.state.requests[0]["range"] is not None  # it asked to resume ...
    assert path.read_bytes() == archive  # ... and the 200 answer replaced the partial file


def test_complete_part_file_is_finished_without_download(tmp_path: Path, server: Server, archive: bytes) -> None:
    # A crash after the last byte but before the rename: the server answers 416.
    (tmp_path / "a.zip.part").write_bytes(archive)
    path = download_file(server.url(), tmp_path / "a.zip")
    assert path.read_bytes() == archive
    assert [r["range"] for r in server.state.requests] == [f"bytes={len(archive)}-"]


def test_second_run_does_no_work(tmp_path: Path, server: Server, archive: bytes) -> None:
    dest = tmp_path / "data"
    first = download_coco_val2014(_config(dest, server.url()))
    stamp = first.stat().st_mtime_ns
    marker = dest / "val2014" / EXTRACTED_MARKER
    marker_stamp = marker.stat().st_mtime_ns
    assert len(server.state.requests) == 1

    second = download_coco_val2014(_config(dest, server.url()))
    assert second == first
    assert len(server.state.requests) == 1  # no second request
    assert first.stat().st_mtime_ns == stamp  # the file list was not rewritten
    assert marker.stat().st_mtime_ns == marker_stamp  # nor the folder re-extracted


def test_deleted_archive_after_extraction_is_not_downloaded_again(
    tmp_path: Path, server: Server, archive: bytes
) -> None:
    dest = tmp_path / "data"
    download_coco_val2014(_config(dest, server.url(), keep_archive=False))
    assert not (dest / "val2014.zip").exists()
    (dest / "val2014_files.txt").unlink()  # only the file list is missing: rewrite it, download nothing
    path = download_coco_val2014(_config(dest, server.url(), keep_archive=False))
    assert len(path.read_text().splitlines()) == len(NAMES)
    assert len(server.state.requests) == 1


# --------------------------------------------------------------------------
# Corrupt and unsafe archives
# --------------------------------------------------------------------------


def _flip_member_bytes(data: bytes, member: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(member)
    # Local header: 30 bytes + name + extra; flip bytes in the middle of the member's data.
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    corrupt = bytearray(data)
    for i in range(start, start + 4):
        corrupt[i] ^= 0xFF
    return bytes(corrupt)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_corrupt_archive_is_refused_and_moved_aside(
    tmp_path: Path, server: Server, compression: int
) -> None:
    good = _make_zip(tmp_path, compression=compression)
    bad = _flip_member_bytes(good, f"val2014/{NAMES[1]}")
    assert len(bad) == len(good) and bad != good
    server.state.files["/zips/val2014.zip"] = bad
    dest = tmp_path / "data"

    with pytest.raises(DownloadError) as excinfo:
        download_coco_val2014(_config(dest, server.url()))
    message = str(excinfo.value)
    assert "corrupt" in message
    assert str(dest.resolve() / "val2014.zip") in message
    assert "re-run" in message
    aside = dest / "val2014.zip.corrupt"
    assert aside.read_bytes() == bad  # moved aside, not deleted
    assert not (dest / "val2014.zip").exists()
    assert not (dest / "val2014").exists()  # nothing extracted
    assert not (dest / "val2014_files.txt").exists()

    # The re-run starts cleanly and succeeds once the server has a good copy.
    server.state.files["/zips/val2014.zip"] = good
    path = download_coco_val2014(_config(dest, server.url()))
    assert (dest / "val2014.zip").read_bytes() == good
    assert len(path.read_text().splitlines()) == len(NAMES)
    assert server.state.requests[-1]["range"] is None


def test_verify_zip_checks_crc_size_and_member_count(tmp_path: Path) -> None:
    data = _make_zip(tmp_path)
    good = tmp_path / "good.zip"
    good.write_bytes(data)
    assert verify_zip(good) == len(NAMES)  # directories are not counted
    assert verify_zip(good, expected_size=len(data), expected_members=len(NAMES)) == len(NAMES)
    with pytest.raises(DownloadError, match="expected 4"):
        verify_zip(good, expected_members=4)
    with pytest.raises(DownloadError, match="bytes, expected"):
        verify_zip(good, expected_size=len(data) + 1)

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DownloadError, match="truncated.zip"):
        verify_zip(truncated)

    flipped = tmp_path / "flipped.zip"
    flipped.write_bytes(_flip_member_bytes(data, f"val2014/{NAMES[0]}"))
    with pytest.raises(DownloadError, match=NAMES[0]):
        verify_zip(flipped)


@pytest.mark.parametrize(
    "evil", ["../evil.jpg", "val2014/../../evil.jpg", "/tmp/evil.jpg", "C:/evil.jpg", "..\\evil.jpg"]
)
def test_zip_slip_member_is_refused(tmp_path: Path, evil: str) -> None:
    data = _make_zip(tmp_path, extra={evil: b"not yours"})
    path = tmp_path / "evil.zip"
    path.write_bytes(data)
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(DownloadError, match="Refusing to extract"):
        extract_zip(path, out)
    assert not out.exists()
    assert not list(out.parent.iterdir())  # nothing partial left either
    assert not list(tmp_path.rglob("evil.jpg"))


def test_pipeline_refuses_zip_slip_archive(tmp_path: Path, server: Server) -> None:
    server.state.files["/zips/val2014.zip"] = _make_zip(tmp_path, extra={"val2014/../../escape.jpg": b"x"})
    dest = tmp_path / "a" / "data"
    with pytest.raises(DownloadError, match="Refusing to extract"):
        download_coco_val2014(_config(dest, server.url()))
    assert not (tmp_path / "a" / "escape.jpg").exists()
    assert not (tmp_path / "escape.jpg").exists()
    assert not (dest / "val2014").exists()


def test_existing_folder_without_marker_is_not_overwritten(tmp_path: Path, server: Server, archive: bytes) -> None:
    dest = tmp_path / "data"
    mine = dest / "val2014" / "mine.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own file")
    with pytest.raises(DownloadError, match="not a completed extraction"):
        download_coco_val2014(_config(dest, server.url()))
    assert mine.read_bytes() == b"my own file"


def test_interrupted_extraction_leaves_no_complete_looking_folder(
    tmp_path: Path, server: Server, archive: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "data"
    real_copy = archives.shutil.copyfileobj
    calls = {"n": 0}

    def crash_on_second(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C
        real_copy(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(archives.shutil, "copyfileobj", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        download_coco_val2014(_config(dest, server.url()))
    assert not (dest / "val2014").exists()
    assert not list(dest.glob(".val2014.partial-*"))

    # A partial folder left by a killed process is cleaned up by the next run.
    stale = dest / ".val2014.partial-killed"
    (stale / "half").mkdir(parents=True)
    monkeypatch.setattr(archives.shutil, "copyfileobj", real_copy)
    path = download_coco_val2014(_config(dest, server.url()))
    assert not stale.exists()
    assert len(path.read_text().splitlines()) == len(NAMES)
    assert len(server.state.requests) == 1  # the completed zip was reused


def test_write_file_list_refuses_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(NoInputsError, match="No images"):
        write_file_list(tmp_path / "empty", tmp_path / "list.txt")
    assert not (tmp_path / "list.txt").exists()


# --------------------------------------------------------------------------
# Network failures are quick and say what to do
# --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "url",
    [f"http://127.0.0.1:{_closed_port()}/val2014.zip", "http://nonexistent.invalid/x.zip"],
    ids=["closed-port", "invalid-host"],
)
def test_unreachable_url_fails_fast_with_local_images_hint(tmp_path: Path, url: str) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError) as excinfo:
        download_coco_val2014(_config(tmp_path / "data", url, timeout=3.0))
    elapsed = time.monotonic() - start
    assert elapsed < 5.0
    message = str(excinfo.value)
    assert url in message
    assert "local folder of images" in message and "similar-images" not in message
    assert (excinfo.value.url, excinfo.value.offline_source) == (url, "images")
    assert not (tmp_path / "data" / "val2014.zip").exists()


def test_stalled_transfer_hits_the_read_timeout(tmp_path: Path, server: Server, archive: bytes) -> None:
    server.state.stall_after, server.state.stall_s = 64, 5.0
    start = time.monotonic()
    with pytest.raises(DownloadError, match="stalled"):
        download_file(server.url(), tmp_path / "a.zip", read_timeout=0.5, retries=0)
    assert time.monotonic() - start < 3.0
    assert (tmp_path / "a.zip.part").stat().st_size == 64  # kept for resuming


def test_http_error_is_not_retried(tmp_path: Path, server: Server) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url("/missing.zip"), tmp_path / "a.zip", retries=5)
    assert len(server.state.requests) == 1
    assert not (tmp_path / "a.zip").exists()


def test_wrong_expected_size_is_refused_before_downloading(tmp_path: Path, server: Server, archive: bytes) -> None:
    with pytest.raises(DownloadError, match="expected"):
        download_file(server.url(), tmp_path / "a.zip", expected_size=len(archive) + 10)
    assert not (tmp_path / "a.zip").exists()
    assert not (tmp_path / "a.zip.part").exists()


def test_hanging_name_lookup_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_lookup(*args: object, **kwargs: object) -> list[object]:
        time.sleep(3.0)  # a resolver that does not answer
        return []

    monkeypatch.setattr(si_http.socket, "getaddrinfo", slow_lookup)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="timed out") as excinfo:
        download_file("http://images.example.test/x.zip", tmp_path / "x.zip", timeout=0.5,
                      offline_hint=LOCAL_IMAGES_HINT, offline_source="images")
    assert time.monotonic() - start < 2.0
    assert "local folder of images" in str(excinfo.value) and excinfo.value.offline_source == "images"


def test_concurrent_download_into_the_same_folder_is_refused(tmp_path: Path, server: Server, archive: bytes) -> None:
    fcntl = pytest.importorskip("fcntl")
    dest = tmp_path / "data"
    dest.mkdir()
    with open(dest / ".download.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DownloadError, match="Another download"):
            download_coco_val2014(_config(dest, server.url()))
    assert server.state.requests == []
    download_coco_val2014(_config(dest, server.url()))  # the lock is free again
    assert len(server.state.requests) == 1


def test_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        DownloadConfig(dest=tmp_path, url="ftp://example.org/x.zip")
    with pytest.raises(ValueError, match="timeouts"):
        DownloadConfig(dest=tmp_path, timeout=0)


# --------------------------------------------------------------------------
# Command line and shell script
# --------------------------------------------------------------------------


def test_cli_help_documents_every_option() -> None:
    result = CliRunner().invoke(main, ["download-coco", "--help"])
    assert result.exit_code == 0, result.output
    for text in ("DEST", "--url", "--timeout", "--read-timeout", "--retries", "--delete-zip", "--quiet",
                 "val2014.zip", "similar-images extract"):
        assert text in result.output


def test_cli_downloads_and_prints_the_file_list(tmp_path: Path, server: Server, archive: bytes) -> None:
    dest = tmp_path / "data"
    result = CliRunner().invoke(main, ["download-coco", str(dest), "--url", server.url(), "--quiet"])
    assert result.exit_code == 0, result.output
    printed = Path(result.output.strip().splitlines()[-1])
    assert printed == (dest / "val2014_files.txt").resolve()
    assert len(printed.read_text().splitlines()) == len(NAMES)


def test_cli_reports_network_errors_without_traceback(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/val2014.zip"
    result = CliRunner().invoke(main, ["download-coco", str(tmp_path / "d"), "--url", url, "--timeout", "2", "-q"])
    assert result.exit_code == 1
    assert "Error:" in result.output
    assert "similar-images extract" in result.output
    assert "Traceback" not in result.output


def _script_env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable}


def test_shell_script_end_to_end(tmp_path: Path, server: Server, archive: bytes) -> None:
    dest = tmp_path / "coco"
    cmd = ["bash", str(SCRIPT), str(dest), "--url", server.url(), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_script_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    file_list = Path(proc.stdout.strip().splitlines()[-1])
    assert file_list == (dest / "val2014_files.txt").resolve()
    assert [Path(p).name for p in file_list.read_text().splitlines()] == sorted(NAMES)
    assert (dest / "val2014.zip").read_bytes() == archive

    # Running it again does no work.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_script_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(server.state.requests) == 1


def test_shell_script_without_arguments_prints_usage(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30, env=_script_env())
    assert proc.returncode == 2
    assert "Usage" in proc.stderr and "DEST" in proc.stderr
