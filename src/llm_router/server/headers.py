"""Text in response headers: a header value is ASCII on the wire (uvicorn refuses anything
else, as a 500 after the answer was made), but a model's id is its file name, which may be
`模型` or `modèle`. Such text goes percent-encoded (as a URL's path), so a client reads it back
with `urllib.parse.unquote`; ASCII names are sent as they are."""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["header_text"]

# printable ASCII but '%' (the escape itself): kept as it is
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_text(value: str) -> str:
    """`value` as a header value: itself when it is printable ASCII without '%', else
    percent-encoded UTF-8 (control characters too: no header is split by a newline)."""
    if value.isascii() and value.isprintable() and "%" not in value:
        return value
    return quote(value, safe=_SAFE)
