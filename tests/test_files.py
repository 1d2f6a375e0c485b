"""The one way Lockgate reads a small file someone else puts in place: a regular file only,
never more than the reader's limit, never waiting on what sits at the path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lockgate._files import FileTooLarge, NotRegularFile, read_regular_file


def test_a_regular_file_within_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 16)
    assert read_regular_file(path, 16) == b"x" * 16
    assert read_regular_file(str(path), 16) == b"x" * 16


def test_one_byte_past_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 17)
    with pytest.raises(FileTooLarge, match="larger than 16 bytes") as raised:
        read_regular_file(path, 16)
    assert isinstance(raised.value, ValueError) and raised.value.limit == 16


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="not a regular file"):
        read_regular_file(fifo, 16)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises((NotRegularFile, IsADirectoryError)):
        read_regular_file(tmp_path, 16)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "absent", 16)
