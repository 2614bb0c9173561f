"""The processing budget of one message: a linear scan of its raw bytes, before any parser.

Python's ``email`` package and dkimpy do work that grows faster than the message with some
shapes (60,000 ``Content-Type`` parameters held the processor for minutes, 1,200 nested
``message/rfc822`` parts overflow the stack, 16,000 ``h=`` names cost seconds to verify).
:func:`check` walks the MIME structure as the parsers will (boundaries, nested messages,
each part's header section) without building anything, in time proportional to the size
times the nesting depth, and names the first limit a message goes over. The processor sets
such a message aside (shunted, the operators told) before any parser sees it; the CPU-time
limit of :mod:`coc_mail.cases.watchdog` backs this up for any shape these counts miss.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

_BOUNDARY = re.compile(rb'(?i)\bboundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^;\s"]{1,200}))')
_CTYPE = re.compile(rb"(?i)^\s*([a-z0-9!#$&^_.+-]+)\s*/\s*([a-z0-9!#$&^_.+-]+)")
_H_TAG = re.compile(rb"(?:^|;)\s*h\s*=([^;]*)")
PARSED_AS_MESSAGES = (b"message/rfc822", b"message/global", b"message/delivery-status",
                      b"message/global-delivery-status", b"message/disposition-notification",
                      b"text/rfc822-headers")


@dataclass(frozen=True)
class Limits:
    """What one message may hold (``[processing]`` in the configuration)."""

    parts: int = 1000
    depth: int = 30
    part_header_bytes: int = 65536
    header_fields: int = 1000
    parameters: int = 100
    dkim_signed_headers: int = 100


@dataclass(frozen=True)
class Region:
    start: int
    end: int
    depth: int


def _header_end(data: bytes, start: int, end: int) -> tuple[int, int]:
    """Where the header section starting at ``start`` ends, and where the body begins."""
    if data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        return start, start + (2 if data.startswith(b"\r\n", start) else 1)
    best = (end, end)
    for sep in (b"\r\n\r\n", b"\n\n", b"\n\r\n"):
        at = data.find(sep, start, end)
        if at != -1 and at < best[0]:
            best = (at + 1, at + len(sep))
    return best


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of a section, unfolded: (lowercased name, value)."""
    out: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and out:
            name, value = out[-1]
            out[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if colon:
            out.append((name.strip().lower(), value.strip()))
        else:
            out.append((b"", line))
    return out


def _parameters(value: bytes) -> int:
    """How many ``;``-separated parameters a structured value has (outside quotes)."""
    count, quoted, escaped = 0, False, False
    for byte in value:
        if escaped:
            escaped = False
        elif byte == 0x5C:
            escaped = quoted
        elif byte == 0x22:
            quoted = not quoted
        elif byte == 0x3B and not quoted:
            count += 1
    return count


def check(data: bytes, limits: Limits) -> str:
    """The first limit ``data`` goes over, said without any of its content; "" if none."""
    parts = 0
    stack = [Region(0, len(data), 0)]
    while stack:
        region = stack.pop()
        parts += 1
        if parts > limits.parts:
            return f"more than {limits.parts} MIME parts"
        if region.depth > limits.depth:
            return f"MIME parts nested more than {limits.depth} deep"
        head_end, body_start = _header_end(data, region.start, region.end)
        if region.depth and head_end - region.start > limits.part_header_bytes:
            return f"a part's header section over {limits.part_header_bytes} bytes"
        fields = _fields(data[region.start:head_end])
        if len(fields) > limits.header_fields:
            return f"more than {limits.header_fields} header fields in a part"
        ctype = b"text/plain"
        boundary = b""
        for name, value in fields:
            if name in (b"content-type", b"content-disposition") and value.count(
                    b";") > limits.parameters and _parameters(value) > limits.parameters:
                return f"more than {limits.parameters} parameters in a {name.decode()} field"
            if name == b"content-type":
                m = _CTYPE.match(value)
                ctype = (m.group(1) + b"/" + m.group(2)).lower() if m else b"text/plain"
                b = _BOUNDARY.search(value)
                boundary = (b.group(1) or b.group(2) or b"") if b else b""
            if name == b"dkim-signature" and region.depth == 0:
                h = _H_TAG.search(value)
                if h and h.group(1).count(b":") + 1 > limits.dkim_signed_headers:
                    return f"a DKIM signature over more than {limits.dkim_signed_headers} headers"
        if ctype.startswith(b"multipart/") and boundary:
            stack.extend(_parts(data, body_start, region.end, boundary, region.depth + 1))
        elif ctype in PARSED_AS_MESSAGES and body_start < region.end:
            stack.append(Region(body_start, region.end, region.depth + 1))
    return ""


def _parts(data: bytes, start: int, end: int, boundary: bytes, depth: int) -> list[Region]:
    """The regions between the delimiter lines of one multipart body."""
    delimiter = b"--" + boundary
    found: list[tuple[int, int]] = []  # (line start, line end)
    pos = start
    while pos < end:
        at = data.find(delimiter, pos, end)
        if at == -1:
            break
        if at == start or data[at - 1:at] == b"\n":
            line_end = data.find(b"\n", at, end)
            line_end = end if line_end == -1 else line_end + 1
            found.append((at, line_end))
            if data.startswith(b"--", at + len(delimiter)):
                break  # the close delimiter
            pos = line_end
        else:
            pos = at + len(delimiter)
    regions = []
    for (_, body_from), (next_at, _) in itertools.pairwise(found):
        regions.append(Region(body_from, next_at, depth))
    if found and not data.startswith(b"--", found[-1][0] + len(delimiter)):
        regions.append(Region(found[-1][1], end, depth))  # no close delimiter: to the end
    return regions
