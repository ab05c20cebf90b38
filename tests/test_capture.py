"""What native code prints to file descriptor 1 goes to the log inside ``stdout_to_log`` (issue 25: Faiss'
on-disk messages made ``--json`` output invalid JSON)."""

from __future__ import annotations

import ctypes
import logging
import os

import pytest

from similar_images._util.capture import stdout_to_log

logger = logging.getLogger("test_capture")


def test_native_prints_on_fd1_go_to_the_log(capfd: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    libc = ctypes.CDLL(None)
    print("before", flush=True)
    with caplog.at_level(logging.DEBUG, logger="test_capture"), stdout_to_log(logger, logging.DEBUG):
        os.write(1, b"resizing /db/index-0001.ivfdata to 48000 bytes\n")
        libc.printf(b"IO_FLAG_ONDISK_SAME_DIR: updating ondisk filename\n")  # buffered by C's stdio
    print("after", flush=True)
    assert capfd.readouterr().out == "before\nafter\n"
    assert [r.getMessage() for r in caplog.records] == [
        "resizing /db/index-0001.ivfdata to 48000 bytes", "IO_FLAG_ONDISK_SAME_DIR: updating ondisk filename"]


def test_fd1_is_restored_when_the_block_raises(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="boom"), stdout_to_log(logger):
        os.write(1, b"lost to the log\n")
        raise RuntimeError("boom")
    os.write(1, b"shown\n")
    assert capfd.readouterr().out == "shown\n"
