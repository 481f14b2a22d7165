"""A consistent copy of the SQLite database, taken while the server serves.

SQLite's online backup API does the copying; this module only makes sure the
copy is whole and checked before it takes the place of anything.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def backup(database: Path, out: Path) -> dict[str, Any]:
    """A consistent copy of ``database`` at ``out``, safe while the server is serving.

    SQLite's online backup API copies every page in one step under one read
    transaction, so the copy is the database as of one commit; in WAL mode the
    server's writer goes on meanwhile. The copy is written beside ``out``,
    checked with ``PRAGMA integrity_check``, and only then renamed into place,
    so ``out`` is never a half-written file.
    """
    if not database.exists():
        raise FileNotFoundError(f"no database at {database}")
    out.parent.mkdir(parents=True, exist_ok=True)  # as demo-accounts does for its --json file
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)
            (verdict,) = copy.execute("PRAGMA integrity_check").fetchone()
            (messages,) = copy.execute("SELECT count(*) FROM message").fetchone()
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
        finally:
            copy.close()
    finally:
        source.close()
    if verdict != "ok":
        partial.unlink(missing_ok=True)
        raise sqlite3.DatabaseError(f"the copy failed its integrity check: {verdict}")
    partial.replace(out)
    return {"backup": str(out), "messages": messages, "bytes": out.stat().st_size}
