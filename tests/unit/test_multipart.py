"""WADO-RS bodies are split part by part, and a truncated body is never taken as complete."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdexit_cli.transport.multipart import MultipartError, boundary_of, split_parts


def body(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def collect(data: bytes, sizes: list[int], boundary: str = "b0undary") -> list[bytes]:
    parts: list[io.BytesIO] = []

    def open_part(index: int) -> BinaryIO:
        buffer = io.BytesIO()
        buffer.close = lambda: None  # type: ignore[method-assign]
        parts.append(buffer)
        return buffer

    chunks, position = [], 0
    for size in sizes or [len(data)]:
        chunks.append(data[position : position + size])
        position += size
    chunks.append(data[position:])
    split_parts(chunks, boundary, open_part)
    return [p.getvalue() for p in parts]


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    sizes=st.lists(st.integers(min_value=1, max_value=50), max_size=30),
)
def test_parts_come_back_exactly_whatever_the_chunking(
    parts: list[bytes], sizes: list[int]
) -> None:
    assert collect(body(parts), sizes) == parts


def test_a_body_cut_short_is_an_error_not_fewer_instances() -> None:
    data = body([b"A" * 100, b"B" * 100])
    with pytest.raises(MultipartError, match="ended before"):
        collect(data[:-40], [])


def test_boundary_is_read_from_the_content_type() -> None:
    header = 'multipart/related; type="application/dicom"; boundary="abc123"'
    assert boundary_of(header) == "abc123"
    with pytest.raises(MultipartError):
        boundary_of("application/dicom")


def test_parts_are_written_to_files(tmp_path: Path) -> None:
    data = body([b"first", b"second"])
    names = []

    def open_part(index: int) -> BinaryIO:
        path = tmp_path / f"{index}.dcm"
        names.append(path)
        return path.open("wb")

    assert split_parts([data], "b0undary", open_part) == 2
    assert [p.read_bytes() for p in names] == [b"first", b"second"]
