"""uvicorn's httptools protocol with a bound on the request's headers: beyond it, 431 in OpenAI's envelope.

Without the bound a client can send headers until memory runs out, and uvicorn's own failure modes answer a bare
400 in plain text. The bound applies per request, to names and values together.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sparsegate.gateway.context import mint_id
from sparsegate.gateway.errors import RequestHeadersTooLarge, error_body

MAX_HEADER_BYTES = 64 * 1024


class _HeadersTooLarge(Exception):
    """Raised from the parser's callback; httptools reports it as a parser error, which uvicorn answers below."""


class BoundedHeadersProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._too_large = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._too_large = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_bytes > MAX_HEADER_BYTES:
            self._too_large = True
            raise _HeadersTooLarge
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:
            super().send_400_response(msg)
            return
        body = error_body(
            RequestHeadersTooLarge(f"The request's headers exceed the limit of {MAX_HEADER_BYTES} bytes.")
        )
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nx-request-id: " + mint_id("req").encode()
            + b"\r\nconnection: close\r\n\r\n"
        )  # fmt: skip
        self.transport.write(head + body)
        self.transport.close()
