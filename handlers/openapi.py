"""GET /openapi.json: the OpenAPI 3.1 document of the contract, unsigned.

The document is ``handlers/openapi.json`` (inside the package, so that an
installed server has it too), kept by hand beside CONTRACT.md and checked
against the live server by ``tests/test_openapi.py``.
It is read once, on the first request, and served as stored. An ApiHandler,
so that a wrong method (405) or a missing file (500) still gets the envelope.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

from .base import ApiHandler

DOCUMENT_PATH = Path(__file__).resolve().parent / "openapi.json"


@cache
def document() -> bytes:
    return DOCUMENT_PATH.read_bytes()


class OpenApiHandler(ApiHandler):
    """GET /openapi.json"""

    def get(self) -> None:
        self.finish(document())
