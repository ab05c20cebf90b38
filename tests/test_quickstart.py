"""The quick start's background work: photos read from a zip as it downloads (zip64, data descriptors, stored and
deflated), embedded shard by shard, a truncated or corrupt archive detected with the photos already embedded kept,
and the quick start script stopped by Ctrl+C and resumed."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_image
from helpers import ROOT, plugin_env
from zip_server import ZipServerState, coco_style_zip, zip_server

from similar_images._util.streamzip import GrowingFile, iter_members, parse_central_directory, tail_start
from similar_images.cli import main
from similar_images.errors import DownloadError
from similar_images.store.folder import PARTIAL_DIR
from similar_images.store.manifest import Manifest

PAYLOADS = {f"val2014/COCO_val2014_{i:012d}.jpg": os.urandom(50 + 97 * i) + b"x" * (300 * i) for i in range(7)}


def _zip(compression: int, *, streamed: bool = False, zip64: bool = False,
         monkeypatch: pytest.MonkeyPatch | None = None) -> bytes:
    """A zip of PAYLOADS: ``streamed`` writes to an unseekable stream (data descriptors after each member);
    ``zip64`` makes zipfile write zip64 records (its limits lowered, as a 6.2 GB archive reaches them)."""
    if zip64:
        assert monkeypatch is not None
        monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 10)
        monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    buf = io.BytesIO()

    class Unseekable(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            return buf.write(b)

    target = Unseekable() if streamed else buf
    with zipfile.ZipFile(target, "w", compression) as zf:  # type: ignore[arg-type]
        zf.writestr(zipfile.ZipInfo("val2014/"), b"")
        for name, data in PAYLOADS.items():
            if zip64:
                with zf.open(name, "w", force_zip64=True) as fh:
                    fh.write(data)
            else:
                zf.writestr(name, data)
    if monkeypatch is not None:
        monkeypatch.undo()
    return buf.getvalue()


def _members(data: bytes) -> list:
    first = max(0, len(data) - 70_000)
    start = tail_start(data[first:], first)
    return parse_central_directory(data[start:], start)


def _done() -> str | None:
    return ""


@pytest.mark.parametrize("kind", ["stored", "deflated", "descriptors", "zip64"])
def test_members_are_read_from_synthetic_zips(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    compression = zipfile.ZIP_STORED if kind == "stored" else zipfile.ZIP_DEFLATED
    data = _zip(compression, streamed=kind == "descriptors", zip64=kind == "zip64", monkeypatch=monkeypatch)
    if kind == "zip64":
        assert b"PK\x06\x06" in data[-200:], "zipfile wrote no zip64 end record"
    if kind == "descriptors":
        assert b"PK\x07\x08" in data, "zipfile wrote no data descriptor"
    path = tmp_path / "a.zip"
    path.write_bytes(data)
    members = _members(data)
    got = {m.name: b for m, b in iter_members(GrowingFile([path], _done), members)}
    assert got == PAYLOADS


def test_members_are_returned_as_their_bytes_arrive(tmp_path: Path) -> None:
    data = _zip(zipfile.ZIP_DEFLATED)
    members = _members(data)
    part = tmp_path / "a.zip.part"
    finished: list[str] = []
    arrived: list[tuple[int, str]] = []  # (bytes on disk when a member was returned, its name)

    def writer() -> None:
        with open(part, "wb") as fh:
            for pos in range(0, len(data), 1000):
                fh.write(data[pos:pos + 1000])
                fh.flush()
                time.sleep(0.005)
        finished.append("")

    thread = threading.Thread(target=writer)
    thread.start()
    source = GrowingFile([part], lambda: finished[0] if finished else None, poll_s=0.002)
    for member, _ in iter_members(source, members):
        arrived.append((part.stat().st_size, member.name))
    thread.join()
    assert [n for _, n in arrived] == list(PAYLOADS)
    assert arrived[0][0] < len(data) / 2, "the first member waited for the whole archive"


def test_truncated_and_corrupt_archives_are_named(tmp_path: Path) -> None:
    data = _zip(zipfile.ZIP_STORED)
    members = _members(data)
    short = tmp_path / "short.zip"
    short.write_bytes(data[: members[4].header_offset + 40])
    names = []
    with pytest.raises(DownloadError, match=r"short\.zip is truncated: .*member '.*000000000003\.jpg' needs"):
        for member, _ in iter_members(GrowingFile([short], _done, where="short.zip"), members):
            names.append(member.name)
    assert names == list(PAYLOADS)[:3]  # the members before the cut are read

    bad = bytearray(data)
    victim = members[3]
    bad[victim.header_offset + 30 + len(victim.name) + 5] ^= 0xFF
    corrupt = tmp_path / "bad.zip"
    corrupt.write_bytes(bytes(bad))
    with pytest.raises(DownloadError, match=r"bad\.zip is corrupt: member '.*000000000002\.jpg' fails its CRC-32"):
        list(iter_members(GrowingFile([corrupt], _done, where="bad.zip"), members))
    with pytest.raises(DownloadError, match="not a zip archive, or it is truncated"):
        tail_start(data[:-10], 0)


def test_crc_is_checked_for_deflated_members(tmp_path: Path) -> None:
    data = bytearray(_zip(zipfile.ZIP_DEFLATED))
    members = _members(bytes(data))
    m = members[2]
    data[m.header_offset + 30 + len(m.name) + m.compress_size // 2] ^= 0x01
    path = tmp_path / "d.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="corrupt"):
        list(iter_members(GrowingFile([path], _done), members))


# --------------------------------------------------------------------------- the pipeline, with the tiny model
def _photos(tmp_path: Path, n: int) -> list[Path]:
    return [make_image(tmp_path / "src" / f"p{i:03d}.jpg", seed=i) for i in range(n)]


def _extract_coco(dest: Path, db: Path, url: str, *extra: str) -> object:
    return CliRunner().invoke(main, ["extract-coco", str(dest), str(db), "--url", url, "--model", "tiny",
                                     "--weights", "random", "--shard-size", "4", "--precision", "fp32", "-q",
                                     *extra])


def test_corrupt_archive_is_detected_and_embedded_photos_are_kept(tmp_path: Path, tiny_model: str) -> None:
    good = coco_style_zip(_photos(tmp_path, 20))
    members = sorted(_members(good), key=lambda m: m.header_offset)
    victim = members[1 + 13]  # the 14th photo (after the folder entry): shards 0-2 are whole before it
    bad = bytearray(good)
    bad[victim.header_offset + 30 + len(victim.name) + 100] ^= 0xFF
    state = ZipServerState(data=bytes(bad))
    dest, db = tmp_path / "coco", tmp_path / "db"
    with zip_server(state) as url:
        r = _extract_coco(dest, db, url)
        assert r.exit_code == 1, r.output
        line = r.output.strip().splitlines()[-1]
        assert line.startswith("Error: ") and "corrupt" in line and victim.name in line and "moved aside" in line, \
            r.output
        assert "Traceback" not in r.output
        shards = sorted((db / PARTIAL_DIR).glob("shard-*.json"))
        assert len(shards) >= 3, "the shards embedded before the corrupt photo were lost"
        assert len(list((dest / "val2014").glob("*.jpg"))) >= 13
        assert list(dest.glob("val2014.zip*.corrupt*"))
        state.data = good
        r = _extract_coco(dest, db, url)
    assert r.exit_code == 0, r.output
    assert "resumed after 12" in r.output or "resumed after 16" in r.output, r.output
    manifest = Manifest.load(db)
    assert manifest.counts.items == 20 and manifest.files.get("index")
    assert (dest / "val2014_files.txt").read_text().count("\n") == 20


def test_truncated_download_is_detected_and_embedded_photos_are_kept(tmp_path: Path, tiny_model: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from similar_images._util import download as si_download

    monkeypatch.setattr(si_download, "_RETRY_WAIT_S", 0.01)
    good = coco_style_zip(_photos(tmp_path, 20))
    members = sorted(_members(good), key=lambda m: m.header_offset)
    state = ZipServerState(data=good, cut_at=members[1 + 10].header_offset + 200)
    dest, db = tmp_path / "coco", tmp_path / "db"
    with zip_server(state) as url:
        r = _extract_coco(dest, db, url)
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        line = r.output.strip().splitlines()[-1]
        assert "connection was closed" in line and "re-running resumes" in line, r.output
        assert len(sorted((db / PARTIAL_DIR).glob("shard-*.json"))) >= 2
        assert (dest / "val2014.zip.part").stat().st_size > members[10].header_offset
        state.cut_at = None
        r = _extract_coco(dest, db, url, "--no-index")
    assert r.exit_code == 0, r.output
    assert "resumed after" in r.output and Manifest.load(db).counts.items == 20
    assert any(h and h.startswith("bytes=") and not h.startswith("bytes=-") and h.endswith("-")
               for h in state.requests), "the download was not resumed with a Range request"


# --------------------------------------------------------------------------- the script: Ctrl+C and resume
def _our_processes(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (a unique temporary path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmd:
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_ctrl_c_stops_the_background_work_and_running_again_resumes(tmp_path: Path) -> None:
    photos = _photos(tmp_path, 60)
    state = ZipServerState(data=coco_style_zip(photos), rate=None)
    members = sorted(_members(state.data), key=lambda m: m.header_offset)
    # The whole archive in about 150 s: the first shards come long before its end, even on a busy machine.
    state.rate = members[-1].header_offset / 150
    data, db = tmp_path / "coco", tmp_path / "db"
    log = tmp_path / "db.log"
    env = plugin_env()
    with zip_server(state) as url:
        cmd = ["bash", str(ROOT / "data_scripts" / "quickstart.sh"), "--no-install", "--url", url, "--data",
               str(data), "--db", str(db), "--model", "tiny", "--weights", "random", "--precision", "fp32",
               "--shard-size", "4", "--app", "none"]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while len(list((db / PARTIAL_DIR).glob("shard-*.json"))) < 2:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "no shard committed in 240 s"
                time.sleep(0.2)
            assert _our_processes(str(db)), "no background process found"
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl+C in its terminal does
            out = proc.communicate(timeout=60)[0].decode()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 130, out
        deadline = time.monotonic() + 20
        while _our_processes(str(db)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _our_processes(str(db)), "background processes are left after Ctrl+C"
        assert not (db / "manifest.json").exists(), "the build finished before Ctrl+C: nothing was tested"
        committed = len(list((db / PARTIAL_DIR).glob("shard-*.json")))
        assert committed >= 2 and (data / "val2014.zip.part").exists()

        state.rate = None
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    text = log.read_text()
    assert "resumed after" in text, text[-2000:]
    manifest = Manifest.load(db)
    assert manifest.counts.items == 60 and manifest.files.get("index")
    assert not _our_processes(str(db))


def test_wait_names_the_log_when_the_build_ends_first(tmp_path: Path) -> None:
    done = subprocess.Popen(["true"])
    done.wait()
    log = tmp_path / "db.log"
    log.write_text("INFO starting\nError: the archive is corrupt: member 'val2014/x.jpg' fails its CRC-32 check\n")
    r = CliRunner().invoke(main, ["wait", str(tmp_path / "db"), "--pid", str(done.pid), "--log", str(log)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "ended before it could be searched" in lines[0] and "CRC-32" in lines[0], r.output
    assert str(log) in lines[0]
    r = CliRunner().invoke(main, ["wait", str(tmp_path / "db"), "--timeout", "0.2"])
    assert r.exit_code == 1 and "could not be searched within 0.2 s" in r.output, r.output


def test_wait_returns_once_the_database_can_be_searched(tmp_path: Path, tiny_model: str) -> None:
    good = coco_style_zip(_photos(tmp_path, 6))
    with zip_server(ZipServerState(data=good)) as url:
        assert _extract_coco(tmp_path / "coco", tmp_path / "db", url, "--no-index").exit_code == 0
    r = CliRunner().invoke(main, ["wait", str(tmp_path / "db"), "--timeout", "5"])
    assert r.exit_code == 0 and "6 items can be searched" in r.output, r.output
