"""Database files that are not what they should be, damaged vectors, a full disk, hostile index descriptions and
inputs, and data that stays right (issue 20, part "database files, index factories, inputs")."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT, tiny_database
from helpers import plugin_env

from similar_images import Database, IndexConfig
from similar_images.cli import main
from similar_images.embed import l2_normalize
from similar_images.errors import UnknownIdError
from similar_images.store import write_database

INDEX = "index-0001.faiss"


def _one_line_error(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 40-image tiny-model database with a Flat index, and three new images."""
    return tiny_database(tmp_path_factory.mktemp("files"), IndexConfig(factory="Flat", eval_queries=0))


# ----------------------------------------------------------------------------- files that are not files
#: Run in a child process, so that a hang or a runaway read fails the test (by its timeout) instead of stopping
#: the run; it prints, for each case, what ``info`` and ``search --id`` said, how long they took, and at the end
#: the child's peak memory.
_CHILD = textwrap.dedent("""
    import json, os, resource, shutil, sys, time
    from pathlib import Path
    from click.testing import CliRunner
    from similar_images.cli import main

    base, work, cases = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.stdin.read())
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.RLIM_INFINITY))

    def damage(db, name, kind):
        path = db / name
        if kind == "unreadable":
            path.chmod(0)
            return
        path.unlink()
        if kind == "folder":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "dev-zero":
            path.symlink_to("/dev/zero")
        elif kind == "loop":
            path.symlink_to(path.name)
        elif kind.startswith("text:"):
            path.write_text(kind[5:])
        elif kind.startswith("size:"):
            path.write_text('{"format": "similar-images-database"}')
            os.truncate(path, int(kind[5:]))

    out = {}
    for i, (name, kind) in enumerate(cases):
        db = work / f"db{i}"
        if not db.exists():
            shutil.copytree(base, db)
            damage(db, name, kind)
        for command in (["info", str(db)], ["search", str(db), "1", "--id", "--exact"]):
            start = time.monotonic()
            r = CliRunner().invoke(main, command)
            out[f"{name} {kind} {command[0]}"] = [r.exit_code, type(r.exception).__name__, r.output.strip(),
                                                  time.monotonic() - start]
    out["maxrss_mb"] = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024
    print(json.dumps(out))
""")

FILES = ["manifest.json", "vectors.f32", "items.jsonl", INDEX, "failures.csv"]
KINDS = {"folder": "a folder, not a file", "fifo": r"a FIFO \(named pipe\)", "dev-zero": "a device",
         "loop": "a loop of symbolic links", "unreadable": r"not readable \(permission denied\)"}


def _run_child(base: Path, work: Path, cases: list[tuple[str, str]], prefix: tuple[str, ...] = ()) -> dict[str, list]:
    try:
        run = subprocess.run([*prefix, sys.executable, "-c", _CHILD, str(base), str(work)], input=json.dumps(cases),
                             capture_output=True, text=True, timeout=180, env=plugin_env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"a command hung on one of {cases}")
    assert run.returncode == 0, f"the process died ({run.returncode}): {run.stderr[-3000:]}"
    outcomes = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcomes.pop("maxrss_mb") < 1500, "a command read far more than the database"
    return outcomes


def _check_outcomes(outcomes: dict[str, list], expected: dict[tuple[str, str], str]) -> None:
    for (name, kind), message in expected.items():
        for command in ("info", "search"):
            code, exc, output, seconds = outcomes[f"{name} {kind} {command}"]
            assert seconds < 10, (name, kind, command, seconds)
            if command == "search" and name == "failures.csv":  # a search does not read it
                assert code == 0 and "(8 results" in output, (name, kind, output)
                continue
            assert code == 1 and exc == "SystemExit", (name, kind, command, output)
            line = _one_line_error(output)
            assert re.search(message, line), (name, kind, command, line)


def test_a_database_file_that_is_a_folder_fifo_device_or_link_loop_gives_one_line(pristine: dict[str, Path],
                                                                                  tmp_path: Path) -> None:
    """Issue 20: a database file that is a folder, a FIFO, a link to /dev/zero or a link loop gave tracebacks,
    hangs (a FIFO waits for a writer) and 4 GB of memory in 35 s (/dev/zero read to the end). Each now gives one
    line naming the file, within seconds, with bounded memory, from ``info`` and ``search`` alike."""
    cases = [(name, kind) for name in FILES for kind in ("folder", "fifo", "dev-zero", "loop")]
    outcomes = _run_child(pristine["base"], tmp_path, cases)
    _check_outcomes(outcomes, {(name, kind): rf"{re.escape(name)} is {KINDS[kind]}" for name, kind in cases})


def test_an_unreadable_database_file_gives_one_line_naming_it(pristine: dict[str, Path], tmp_path: Path) -> None:
    """Issue 20: an unreadable file (no read permission) gave a traceback. Root reads every file whatever its mode,
    so under root the commands run without the capabilities that let it (setpriv)."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root reads every file; dropping that needs setpriv(1)")
        drop = "-dac_override,-dac_read_search"
        prefix = ("setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--")
    cases = [(name, "unreadable") for name in FILES]
    outcomes = _run_child(pristine["base"], tmp_path, cases, prefix)
    _check_outcomes(outcomes, {(name, kind): rf"{re.escape(name)} is {KINDS[kind]}" for name, kind in cases})


def _manifest_with(path: Path, replace: tuple[str, str]) -> str:
    text = (path / "manifest.json").read_text()
    assert replace[0] in text
    return text.replace(*replace, 1)


def test_a_hand_edited_manifest_beyond_the_limits_gives_one_line(pristine: dict[str, Path], tmp_path: Path) -> None:
    """Issue 20: a hand-edited manifest with ``1e400`` (an overflow), deeply nested arrays (a recursion error), a
    number of 5,000 digits or a size of 100 MB gives one line naming the manifest, quickly."""
    m = json.loads((pristine["base"] / "manifest.json").read_text())
    items = f'"items": {m["counts"]["items"]}'
    edits = {
        "1e400 count": _manifest_with(pristine["base"], (items, '"items": 1e400')),
        "1e400 dimension": _manifest_with(pristine["base"], ('"dim": 16', '"dim": 1e400')),
        "NaN dimension": _manifest_with(pristine["base"], ('"dim": 16', '"dim": NaN')),
        "nested arrays": _manifest_with(pristine["base"], ('"removed_ids": []',
                                                           '"removed_ids": ' + "[" * 100_000 + "]" * 100_000)),
        "5,000 digits": _manifest_with(pristine["base"], (items, '"items": ' + "9" * 5000)),
    }
    cases = [("manifest.json", f"text:{text}") for text in edits.values()]
    cases.append(("manifest.json", f"size:{100 * 2**20}"))
    outcomes = _run_child(pristine["base"], tmp_path, cases)
    messages = [r"manifest\.json is damaged \(its JSON is the number 1e400 is out of range\)",
                r"manifest\.json is damaged \(its JSON is the number 1e400 is out of range\)",
                r"manifest\.json is damaged \(its JSON is NaN is not a JSON number\)",
                r"manifest\.json is damaged \(its JSON is nested 100,001 deep \(at most 64\)\)",
                r"manifest\.json is damaged \(its JSON is Exceeds the limit \(4300 digits\)",
                r"manifest\.json is 104,857,600 bytes, more than the 67,108,864 such a file can have"]
    _check_outcomes(outcomes, dict(zip(cases, messages, strict=True)))


# ----------------------------------------------------------------------------- damaged vectors
def _flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["zeroed vectors", "one bit flipped in a vector", "one bit flipped in an item"])
def test_damaged_vectors_and_items_are_refused_when_the_database_opens(damage: str, pristine: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    """Issue 20: a zeroed vectors file was searched with scores of 0.0; a bit-flipped one passed ``info`` and
    ``add`` and then the database refused to open. The manifest records a CRC-32 of the vectors and the items at
    every commit, verified when the database opens: every command refuses the damaged file in one line."""
    db = tmp_path / "db"
    shutil.copytree(pristine["base"], db)
    if damage == "zeroed vectors":
        (db / "vectors.f32").write_bytes(bytes((db / "vectors.f32").stat().st_size))
        name = "vectors.f32"
    elif damage == "one bit flipped in a vector":
        _flip_bit(db / "vectors.f32", 20 * 16 * 4 + 5 * 4)  # the lowest mantissa bit of row 20: still unit length
        name = "vectors.f32"
    else:
        items = (db / "items.jsonl").read_bytes()
        _flip_bit(db / "items.jsonl", items.index(b"7.png"), 1)  # 7.png -> 5.png: a valid path, the wrong one
        name = "items.jsonl"
    runner = CliRunner()
    for command in (["info", str(db)], ["search", str(db), "1", "--id"], ["search", str(db), "1", "--id", "--exact"],
                    ["add", str(db), str(pristine["new"]), "-q"], ["remove", str(db), "3"]):
        result = runner.invoke(main, command)
        assert result.exit_code == 1, (command, result.output)
        line = _one_line_error(result.output)
        assert f"{name} does not match the checksum the manifest recorded" in line, (command, line)
    assert (db / "manifest.json").read_bytes() == (pristine["base"] / "manifest.json").read_bytes()


def test_checksums_follow_adds_and_a_database_without_them_still_opens(pristine: dict[str, Path],
                                                                       tmp_path: Path, tiny_model: str) -> None:
    """A database written before checksums existed opens (nothing to verify), gets checksums at its next add,
    and from then on a flipped bit in its old rows or in the added ones is caught."""
    db = tmp_path / "db"
    shutil.copytree(pristine["base"], db)
    m = json.loads((db / "manifest.json").read_text())
    assert set(m.pop("checksums")) == {"vectors", "items"}
    (db / "manifest.json").write_text(json.dumps(m))
    assert len(Database.open(db)) == 40
    runner = CliRunner()
    assert runner.invoke(main, ["add", str(db), str(pristine["new"]), "-q"]).exit_code == 0
    checksums = json.loads((db / "manifest.json").read_text())["checksums"]
    assert checksums["vectors"]["rows"] == checksums["items"]["rows"] == 43
    assert len(Database.open(db)) == 43
    for row in (2, 41):
        damaged = tmp_path / f"damaged{row}"
        shutil.copytree(db, damaged)
        _flip_bit(damaged / "vectors.f32", row * 16 * 4 + 4)
        result = runner.invoke(main, ["info", str(damaged)])
        assert result.exit_code == 1 and "vectors.f32 does not match the checksum" in result.output, result.output


# ----------------------------------------------------------------------------- disk full
@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (the tests run as root on CI); skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if not shutil.which("mount") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", f"si-full-{uuid.uuid4().hex[:8]}", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; returns the filler file (remove it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (2**20, 2**12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(size))
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_during_extract_add_or_build_index_gives_one_line_and_keeps_the_database(
        pristine: dict[str, Path], small_disk: Path, tiny_model: str) -> None:
    """Issue 20: a full disk during extract, add or build-index printed a traceback (the database stayed intact).
    Now one line says which file could not be written; the database is unchanged, and the same command works
    once there is space."""
    db = small_disk / "db"
    shutil.copytree(pristine["base"], db)
    (db / INDEX).unlink()
    m = json.loads((db / "manifest.json").read_text())
    m["index"], m["files"]["index"], m["counts"]["indexed"] = None, None, 0
    (db / "manifest.json").write_text(json.dumps(m))
    before = {p.name: p.read_bytes() for p in db.iterdir() if not p.name.startswith(".")}
    runner = CliRunner()
    commands = {
        "add": ["add", str(db), str(pristine["new"]), "-q"],
        "build-index": ["build-index", str(db), "--index", "Flat", "--eval-queries", "0"],
        "extract": ["extract", str(pristine["images"]), str(small_disk / "out"), "--model", tiny_model, "--weights",
                    "random", "-q"],
    }
    filler = _fill(small_disk)
    for name, command in commands.items():
        result = runner.invoke(main, command)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (name, result.output)
        assert "Traceback" not in result.output, (name, result.output)
        line = result.output.strip().splitlines()[-1]  # after build-index's own log lines
        assert line.startswith("Error: ") and "No space left on the device to write" in line, (name, line)
        assert str(small_disk) in line, (name, line)
        assert {p.name: p.read_bytes() for p in db.iterdir() if not p.name.startswith(".")} == before, name
        assert len(Database.open(db)) == 40
    filler.unlink()
    for name, command in commands.items():
        result = runner.invoke(main, command)
        assert result.exit_code == 0, (name, result.output)
    assert len(Database.open(db)) == 43 and Database.open(db).has_index
    assert len(Database.open(small_disk / "out")) == 40


# ----------------------------------------------------------------------------- index descriptions
def test_huge_index_descriptions_are_refused_before_faiss_allocates(tmp_path: Path) -> None:
    """Issue 20: a 20,000-character description segfaulted Faiss' parser (exit 139), and ``PQ16x20`` allocated
    gigabytes of codebooks before any check. Both, and other sizes whose fixed parts need more memory than the
    limit, are refused in one line, with the child's memory staying small. Run in a child process, so that a
    crash fails this test instead of killing the test run."""
    db = tmp_path / "db"
    write_database(db, kind="image", model={"name": "synthetic", "dim": 512}, items=[str(i) for i in range(300)],
                   vector_chunks=[l2_normalize(np.random.default_rng(0).normal(size=(300, 512)).astype(np.float32))])
    factories = {
        "A" * 20_000: "it has 20,000 characters, at most 256",
        "IVF4," * 4000 + "Flat": "it has 20,004 characters, at most 256",
        "PQ16x20": "PQ16x20 asks for codes of 20 bits",
        "IVF64,PQ16x24": "PQ16x24 asks for codes of 24 bits",
        "RQ2x20": "RQ2x20 asks for codes of 20 bits",
        "IMI2x16,Flat": r"fixed parts need 192\.1 GiB .*IMI2x16",
        "IVF4000000,Flat": r"fixed parts need 7\.8 GiB .*IVF4000000",
        "IVF99999999999,Flat": "the number 99999999999 is too large",
    }
    code = textwrap.dedent("""
        import json, sys
        from click.testing import CliRunner
        from similar_images.cli import main
        out = {}
        for factory in json.loads(sys.argv[2]):
            r = CliRunner().invoke(main, ["build-index", sys.argv[1], "--index", factory, "--eval-queries", "0"])
            out[factory] = [r.exit_code, type(r.exception).__name__, r.output.strip()]
        out["maxrss_mb"] = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024
        print(json.dumps(out))
    """)
    run = subprocess.run([sys.executable, "-c", code, str(db), json.dumps(list(factories))], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, f"the process died ({run.returncode}): {run.stderr[-2000:]}"
    outcomes = json.loads(run.stdout.strip().splitlines()[-1])
    # VmHWM is the child's own peak: ru_maxrss would keep the forking pytest process's peak across exec.
    assert outcomes.pop("maxrss_mb") < 1300, "Faiss allocated the index before the check"  # PQ16x20: 2 GiB
    for factory, message in factories.items():
        code_, exc, output = outcomes[factory]
        assert code_ == 1 and exc == "SystemExit", (factory[:40], output)
        assert re.search(message, _one_line_error(output)), (factory[:40], output)
    assert Database.open(db).manifest.index is None
    ok = CliRunner().invoke(main, ["build-index", str(db), "--index", "IVF4,PQ16x8", "--eval-queries", "0"])
    assert ok.exit_code == 0, ok.output


# ----------------------------------------------------------------------------- wrong kinds of input
def test_a_photo_or_a_binary_file_given_as_a_file_list_gives_one_line(pristine: dict[str, Path], tmp_path: Path,
                                                                      tiny_model: str) -> None:
    """Issue 20: a photo given where a folder or file list is expected, and a file list that is not UTF-8, gave a
    UnicodeDecodeError traceback. Both are refused in one line naming the file, by extract and add alike."""
    photo = pristine["images"] / "3.png"
    latin1 = tmp_path / "list.txt"
    latin1.write_bytes(f"{pristine['images'] / '1.png'}\n".encode() + "caf\xe9.png\n".encode("latin-1"))
    jpeg_named_txt = tmp_path / "photo.txt"
    jpeg_named_txt.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200))
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)
    db = tmp_path / "db"
    shutil.copytree(pristine["base"], db)
    cases = {photo: r"3\.png is an image, not a folder or a file list",
             jpeg_named_txt: r"photo\.txt is an image, not a folder or a file list",
             latin1: r"list\.txt is not UTF-8 text \(byte \d+, line 2\)",
             fifo: r"list\.fifo is a FIFO \(named pipe\)"}
    runner = CliRunner()
    for source, message in cases.items():
        for command in (["extract", str(source), str(tmp_path / "out"), "--model", tiny_model, "--weights", "random",
                         "-q"], ["add", str(db), str(source), "-q"]):
            result = runner.invoke(main, command)
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (command, result.output)
            assert re.search(message, _one_line_error(result.output)), (command, result.output)
    assert len(Database.open(db)) == 40 and not (tmp_path / "out" / "manifest.json").exists()


# ----------------------------------------------------------------------------- data stays right
def test_a_removed_image_can_be_added_again(pristine: dict[str, Path], tmp_path: Path, tiny_model: str) -> None:
    """Issue 20: ``add`` skipped a removed image silently ("Added 0"), so it could never be searched again. It is
    added again under a new id; the old id stays removed, and its path finds the new id."""
    db = tmp_path / "db"
    shutil.copytree(pristine["base"], db)
    runner = CliRunner()
    image = pristine["images"] / "7.png"
    assert runner.invoke(main, ["remove", str(db), "7"]).exit_code == 0
    listed = tmp_path / "list.txt"
    listed.write_text(f"{image}\n{pristine['images'] / '8.png'}\n")
    result = runner.invoke(main, ["add", str(db), str(listed), "-q"])
    assert result.exit_code == 0 and "Added 1 images (ids 40..40)" in result.output, result.output
    again = Database.open(db)
    assert len(again) == 40 and again.id_of(image) == 40 and again.removed[7]
    found = runner.invoke(main, ["search", str(db), str(image), "--json", "-k", "1", "--exact"])
    assert found.exit_code == 0, found.output
    assert json.loads(found.output)["results"][0]["id"] == 40
    assert runner.invoke(main, ["add", str(db), str(listed), "-q"]).output.startswith("Added 0 images")
    live = Database.open(db)  # the same object through remove and add: its path lookup follows
    live.id_of(image)
    live.remove([image])
    with pytest.raises(UnknownIdError):
        live.id_of(image)
    assert live.add([image]).ids == [41] and live.id_of(image) == 41


def test_info_reports_the_index_size_after_add_and_remove(pristine: dict[str, Path], tmp_path: Path,
                                                          tiny_model: str) -> None:
    """Issue 20: after add or remove, ``info`` still showed the size the index had when first built."""
    db = tmp_path / "db"
    shutil.copytree(pristine["base"], db)
    runner = CliRunner()

    def reported() -> int:
        out = runner.invoke(main, ["info", str(db)]).output
        return int(re.search(r"([\d,]+) bytes", out).group(1).replace(",", ""))

    def on_disk() -> int:
        return (db / str(Database.open(db).manifest.files["index"])).stat().st_size

    first = reported()
    assert first == on_disk()
    assert runner.invoke(main, ["add", str(db), str(pristine["new"]), "-q"]).exit_code == 0
    assert reported() == on_disk() > first
    assert runner.invoke(main, ["remove", str(db), "1", "2", "3", "4", "5"]).exit_code == 0
    assert reported() == on_disk() < first
