"""Names made safe for files, folders and other tools' identifiers."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str, replacement: str = "_") -> str:
    """`name` with every run of characters other than letters, digits, '_', '.' and '-' replaced."""
    return _UNSAFE.sub(replacement, name)
