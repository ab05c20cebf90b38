"""Read the members of a zip archive while it is still downloading.

A zip's member list (the central directory) is at its end, but every member's
bytes come in order from the start. :func:`fetch_central_directory` reads the
list first with one HTTP ``Range`` request for the archive's tail;
:func:`iter_members` then returns each member as soon as its bytes are in the
partly downloaded file (:class:`GrowingFile`), checking its local header
against the central directory and its CRC-32. Stored and deflated members,
data descriptors (sizes come from the central directory) and zip64 archives
(over 4 GiB or 65,535 members: the COCO zip is 6.2 GB) are read.

Failures raise :class:`~similar_images.errors.DownloadError` naming the
archive and the member: a truncated archive (the download ended before the
member's bytes) and a corrupt one (bad header, bad CRC, undecodable data).
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DownloadError

__all__ = ["ZipMember", "parse_central_directory", "tail_start", "GrowingFile", "iter_members", "read_member"]

_EOCD = b"PK\x05\x06"
_EOCD64 = b"PK\x06\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_CENTRAL_FMT = struct.Struct("<4s6H3L5H2L")  # 46 bytes: signature .. relative offset of the local header
_LOCAL_FMT = struct.Struct("<4s5H3L2H")  # 30 bytes
_EOCD_FMT = struct.Struct("<4s4H2LH")  # 22 bytes
_EOCD64_FMT = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_LOCATOR_FMT = struct.Struct("<4sLQL")  # 20 bytes
_MAX_COMMENT = 0xFFFF
#: Bytes of the archive's end to read first: the end record, its longest comment and the zip64 records.
TAIL_GUESS = _EOCD_FMT.size + _MAX_COMMENT + _LOCATOR_FMT.size + _EOCD64_FMT.size


@dataclass(frozen=True)
class ZipMember:
    """One member as the central directory describes it.

    Attributes:
        name: Path inside the archive (``/`` separated).
        header_offset: Where its local header starts.
        compress_size: Bytes of its (compressed) data.
        file_size: Bytes once decompressed.
        crc: CRC-32 of the decompressed bytes.
        method: 0 (stored) or 8 (deflated); others are refused when read.
        flags: The general purpose bit flags (bit 0: encrypted).
    """

    name: str
    header_offset: int
    compress_size: int
    file_size: int
    crc: int
    method: int
    flags: int

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")


def _end_records(tail: bytes, tail_offset: int, where: str) -> tuple[int, int, int]:
    """``(central directory offset, its size, member count)`` from the end records found in ``tail``."""
    pos = tail.rfind(_EOCD)
    while pos >= 0 and pos + _EOCD_FMT.size > len(tail):
        pos = tail.rfind(_EOCD, 0, pos)
    if pos < 0:
        raise DownloadError(f"{where} is not a zip archive, or it is truncated: no end of central directory record "
                            "in its last bytes")
    _, _, _, _, count, cd_size, cd_offset, _ = _EOCD_FMT.unpack_from(tail, pos)
    if 0xFFFF in (count,) or 0xFFFFFFFF in (cd_size, cd_offset):
        loc = pos - _LOCATOR_FMT.size
        if loc < 0 or tail[loc:loc + 4] != _EOCD64_LOCATOR:
            raise DownloadError(f"{where} is corrupt: a zip64 archive without its zip64 end record locator")
        _, _, eocd64, _ = _LOCATOR_FMT.unpack_from(tail, loc)
        rel = eocd64 - tail_offset
        if rel < 0 or rel + _EOCD64_FMT.size > len(tail) or tail[rel:rel + 4] != _EOCD64:
            raise DownloadError(f"{where} is corrupt: its zip64 end of central directory record is missing")
        fields = _EOCD64_FMT.unpack_from(tail, rel)
        count, cd_size, cd_offset = fields[7], fields[8], fields[9]
    return cd_offset, cd_size, count


def tail_start(tail: bytes, tail_offset: int, where: str = "the archive") -> int:
    """Where the central directory starts, from a tail of the archive that holds its end records.

    Args:
        tail: The archive's last bytes (at least its end records: :data:`TAIL_GUESS` bytes are always enough).
        tail_offset: The position of ``tail`` in the archive.
        where: The archive's name or address, for errors.

    Raises:
        DownloadError: If no end record is found (not a zip, or truncated) or the zip64 records are missing.
    """
    return _end_records(tail, tail_offset, where)[0]


def parse_central_directory(tail: bytes, tail_offset: int, where: str = "the archive") -> list[ZipMember]:
    """The members of a zip archive, from a tail of it that holds its whole central directory.

    Args:
        tail: The archive's bytes from ``tail_offset`` to its end.
        tail_offset: The position of ``tail`` in the archive.
        where: The archive's name or address, for errors.

    Returns:
        The members, in the order of the central directory.

    Raises:
        DownloadError: If the central directory is not within ``tail``, or is corrupt.
    """
    cd_offset, cd_size, count = _end_records(tail, tail_offset, where)
    pos = cd_offset - tail_offset
    if pos < 0 or pos + cd_size > len(tail):
        raise DownloadError(f"{where} is corrupt: its central directory ({cd_size:,} bytes at {cd_offset:,}) is "
                            "not where its end record says")
    members: list[ZipMember] = []
    for i in range(count):
        if tail[pos:pos + 4] != _CENTRAL or pos + _CENTRAL_FMT.size > len(tail):
            raise DownloadError(f"{where} is corrupt: entry {i + 1} of {count} of its central directory is damaged")
        (_, _, _, flags, method, _, _, crc, csize, usize, nlen, xlen, clen, _, _, _,
         offset) = _CENTRAL_FMT.unpack_from(tail, pos)
        start = pos + _CENTRAL_FMT.size
        raw_name = tail[start:start + nlen]
        extra = tail[start + nlen:start + nlen + xlen]
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        usize, csize, offset = _zip64_fields(extra, usize, csize, offset, where, name)
        members.append(ZipMember(name, offset, csize, usize, crc, method, flags))
        pos = start + nlen + xlen + clen
    return members


def _zip64_fields(extra: bytes, usize: int, csize: int, offset: int, where: str, name: str) -> tuple[int, int, int]:
    """Replace the 0xFFFFFFFF sizes and offset by the values of the zip64 extra field (in this order)."""
    needed = [v == 0xFFFFFFFF for v in (usize, csize, offset)]
    if not any(needed):
        return usize, csize, offset
    i = 0
    while i + 4 <= len(extra):
        tag, size = struct.unpack_from("<2H", extra, i)
        if tag == 0x0001:
            data = extra[i + 4:i + 4 + size]
            values = [usize, csize, offset]
            j = 0
            for k, need in enumerate(needed):
                if need:
                    if j + 8 > len(data):
                        break
                    values[k] = struct.unpack_from("<Q", data, j)[0]
                    j += 8
            else:
                return values[0], values[1], values[2]
            break
        i += 4 + size
    raise DownloadError(f"{where} is corrupt: member {name!r} lacks its zip64 sizes")


class GrowingFile:
    """A file another thread is appending to (a download): reads wait for the bytes they need.

    Args:
        paths: Where the bytes are, in the order to look (e.g. ``archive.zip.part`` while downloading, then
            ``archive.zip`` once it is renamed).
        finished: Returns ``None`` while the writer runs, then ``""`` once it finished, or why it failed.
        poll_s: Seconds between looks at the file's size.
        where: The archive's name, for errors.
    """

    def __init__(self, paths: Iterable[Path], finished: Callable[[], str | None], *, poll_s: float = 0.05,
                 where: str = "the archive") -> None:
        self.paths = [Path(p) for p in paths]
        self.finished = finished
        self.poll_s = poll_s
        self.where = where
        self.stop = threading.Event()

    def _size(self) -> tuple[Path | None, int]:
        for path in self.paths:
            try:
                return path, path.stat().st_size
            except FileNotFoundError:
                continue
        return None, 0

    def read(self, offset: int, n: int, what: str) -> bytes:
        """``n`` bytes at ``offset``, once they have arrived.

        Raises:
            DownloadError: If the writer finished (or failed) before those bytes arrived: the archive is
                truncated (or the download failed), with ``what`` needed them; or :attr:`stop` was set.
        """
        while True:
            done = self.finished()  # before the size: a writer that finishes between the two is seen next turn
            path, size = self._size()
            if path is not None and size >= offset + n:
                try:
                    with open(path, "rb") as fh:
                        fh.seek(offset)
                        data = fh.read(n)
                except FileNotFoundError:
                    continue  # renamed into place between the two looks
                if len(data) == n:
                    return data
            elif done is not None:
                if done:
                    raise DownloadError(done)
                raise DownloadError(f"{self.where} is truncated: it ends at byte {size:,} but {what} needs bytes "
                                    f"up to {offset + n:,}")
            if self.stop.wait(self.poll_s):
                raise DownloadError(f"Reading {self.where} was stopped")


def read_member(source: GrowingFile, member: ZipMember, where: str | None = None) -> bytes:
    """The decompressed bytes of ``member``, once they are in ``source``; its CRC-32 and size are checked.

    Raises:
        DownloadError: If the archive is truncated before the member ends, or the member is corrupt (its local
            header does not match the central directory, its data does not decompress, or its CRC or size
            differs), encrypted, or compressed with a method other than stored or deflated.
    """
    where = where or source.where
    what = f"member {member.name!r}"
    if member.flags & 0x1:
        raise DownloadError(f"{where}: {what} is encrypted; only unencrypted archives can be read")
    if member.method not in (0, 8):
        raise DownloadError(f"{where}: {what} uses compression method {member.method}; only stored (0) and "
                            "deflated (8) members can be read")
    header = source.read(member.header_offset, _LOCAL_FMT.size, what)
    sig, _, _, _, _, _, _, _, _, nlen, xlen = _LOCAL_FMT.unpack(header)
    if sig != _LOCAL:
        raise DownloadError(f"{where} is corrupt: no local header where {what} should start "
                            f"(byte {member.header_offset:,})")
    start = member.header_offset + _LOCAL_FMT.size
    name_bytes = source.read(start, nlen, what)
    if name_bytes.decode("utf-8" if member.flags & 0x800 else "cp437", errors="replace") != member.name:
        raise DownloadError(f"{where} is corrupt: the local header at byte {member.header_offset:,} names "
                            f"{name_bytes!r}, not {what}")
    data = source.read(start + nlen + xlen, member.compress_size, what)
    try:
        if member.method == 8:
            inflater = zlib.decompressobj(-15)
            data = inflater.decompress(data) + inflater.flush()
    except zlib.error as exc:
        raise DownloadError(f"{where} is corrupt: {what} does not decompress ({exc})") from None
    if len(data) != member.file_size or zlib.crc32(data) != member.crc:
        raise DownloadError(f"{where} is corrupt: {what} fails its CRC-32 check")
    return data


def iter_members(source: GrowingFile, members: Iterable[ZipMember], where: str | None = None
                 ) -> Iterator[tuple[ZipMember, bytes]]:
    """``(member, bytes)`` of each file member, in the order of their bytes in the archive, as they arrive.

    Directories are skipped. See :func:`read_member` for the checks.
    """
    for member in sorted(members, key=lambda m: m.header_offset):
        if not member.is_dir:
            yield member, read_member(source, member, where)

