"""Streaming reader for multipart/related bodies (WADO-RS), one part at a time to disk.

A part is never held in memory whole: bytes are written to its file as they arrive,
holding back only enough to recognise a boundary that straddles two chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from email.message import Message
from typing import BinaryIO

__all__ = ["MultipartError", "boundary_of", "split_parts"]


class MultipartError(ValueError):
    """The body is not the multipart/related stream its headers announced."""


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a multipart Content-Type header."""
    message = Message()
    message["Content-Type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise MultipartError(f"no boundary in Content-Type {content_type!r}")
    return boundary


def split_parts(
    chunks: Iterable[bytes], boundary: str, open_part: Callable[[int], BinaryIO]
) -> int:
    """Write each part's body to ``open_part(index)``; return the number of parts.

    Raises MultipartError when the stream ends before its closing boundary (a truncated
    transfer must never look complete).
    """
    delimiter = b"\r\n--" + boundary.encode()
    buffer = b"\r\n"  # the first boundary has no preceding CRLF
    index = 0
    out: BinaryIO | None = None
    in_headers = False
    finished = False
    for chunk in chunks:
        buffer += chunk
        while True:
            if in_headers:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                buffer = buffer[end + 4 :]
                in_headers = False
                out = open_part(index)
                index += 1
                continue
            at = buffer.find(delimiter)
            if at < 0:
                keep = len(delimiter) + 2
                if out is not None and len(buffer) > keep:
                    out.write(buffer[:-keep])
                    buffer = buffer[-keep:]
                break
            if out is not None:
                out.write(buffer[:at])
                out.close()
                out = None
            rest = buffer[at + len(delimiter) :]
            if len(rest) < 2:
                buffer = buffer[at:]
                break
            if rest.startswith(b"--"):
                finished = True
                buffer = b""
                break
            buffer = rest
            in_headers = True
        if finished:
            break
    if out is not None:
        out.close()
    if not finished:
        raise MultipartError("the multipart body ended before its closing boundary")
    return index
