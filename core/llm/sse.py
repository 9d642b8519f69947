"""Server-Sent Events: the incremental parser and the reader over a response body.

Both backends stream over SSE (TGI's `/generate_stream` and any server's
`/v1/chat/completions`); this module only turns bytes into each event's data,
and leaves decoding the data to the backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import aiohttp

from core.llm.errors import StreamStalled


class SSEParser:
    """Incremental Server-Sent Events parser: feed bytes, get each event's data.

    Follows the SSE line rules (LF, CRLF or CR endings, `:` comments, several
    `data` lines joined by newlines, one optional space after the colon, so both
    `data:` and `data: ` work) and copes with lines and events split across
    network chunks.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data of every event completed by them."""
        self._buf.extend(chunk)
        buf = self._buf
        out: list[str] = []
        start = 0
        size = len(buf)
        while start < size:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start)
            if lf < 0 and cr < 0:
                break
            if cr < 0 or 0 <= lf < cr:
                end, after = lf, lf + 1
            elif cr == size - 1:
                break  # a CR at the end may be half of a CRLF split across chunks
            else:
                end = cr
                after = cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            self._line(bytes(buf[start:end]), out)
            start = after
        del buf[:start]
        return out

    def flush(self) -> list[str]:
        """At end of stream: the last line and event even if unterminated."""
        out: list[str] = []
        if self._buf:
            self._line(bytes(self._buf).rstrip(b"\r"), out)
            self._buf.clear()
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[str]) -> None:
        if not line:
            if self._data:
                out.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            if value.startswith(b" "):
                value = value[1:]
            self._data.append(value.decode("utf-8", errors="replace"))


async def iter_sse(
    content: aiohttp.StreamReader, idle_timeout: float | None = None
) -> AsyncGenerator[str, None]:
    """Yield the data of each SSE event read from a response body.

    `idle_timeout` limits the time between data events. TGI sends keep-alive
    comments on an idle stream, so a socket read timeout alone never notices
    a stalled generation; comments therefore do not reset this clock.
    """
    parser = SSEParser()
    loop = asyncio.get_running_loop()
    last_event = loop.time()
    while True:
        try:
            if idle_timeout is None:
                chunk = await content.readany()
            else:
                async with asyncio.timeout(last_event + idle_timeout - loop.time()):
                    chunk = await content.readany()
        except TimeoutError:
            raise StreamStalled("no tokens from the model server within the idle timeout") from None
        if not chunk:
            break
        events = parser.feed(chunk)
        if events:
            last_event = loop.time()
        for data in events:
            yield data
    for data in parser.flush():
        yield data
