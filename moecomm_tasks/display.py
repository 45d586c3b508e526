"""How numbers and run ids are shown to people: short run ids for column headers, a value with its
within-night spread, and the mark of a change beyond that spread. Pure functions, no database;
the CLI tables (`table`, `compare`, `samples`) and the HTML report use the same ones.

A night's *spread* is how far its own measurements disagree: half the range of the ranks'
means (a collective waits for its slowest rank, so ranks that disagree make a night uncertain),
or the iterations' standard deviation within the night when that is larger. Two nights differ
*beyond the noise* when their values are further apart than their spreads together
(|a - b| > spread_a + spread_b: the two intervals value ± spread do not overlap); a night
without a known spread is never marked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

# Longest run id shown whole in a column header.
HEADER_CHARS = 16
# A date, or date and time, inside a run id: 2026-12-01, 20261201, 2026-12-01T02:00:00.123+00:00.
_TIME = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?:[T_ ](\d{2}):?(\d{2})(?::?(\d{2}))?(?:\.\d+)?)?"
                   r"(?:Z|[+-]\d{2}:?\d{2})?(?!\d)")
_SEPARATORS = re.compile(r"([-_./:+ ]+)")
_AFTER_DATE = re.compile(r" [-_./:+]+")
MARK = "*"


@dataclass(frozen=True)
class Headers:
    """Column headers for a list of run ids: `labels[i]` stands for `run_ids[i]`; `dropped` says
    what all of them share and the labels leave out (for a table's title), '' when nothing."""

    run_ids: tuple[str, ...]
    labels: tuple[str, ...]
    dropped: str = ""


def _tokens(run_id: str) -> list[str | tuple[int, ...]]:
    """`run_id` cut at separators, each piece with the separators after it; a date (and time) is
    one token, kept as its numbers (year, month, day[, hour, minute[, second]])."""
    tokens: list[str | tuple[int, ...]] = []
    position = 0
    for match in _TIME.finditer(run_id):
        tokens += _plain(run_id[position:match.start()])
        tokens.append(tuple(int(g) for g in match.groups() if g is not None))
        position = match.end()
    return tokens + _plain(run_id[position:])


def _plain(text: str) -> list[str]:
    parts = _SEPARATORS.split(text)
    pieces = [parts[i] + (parts[i + 1] if i + 1 < len(parts) else "") for i in range(0, len(parts), 2)]
    return [p for p in pieces if p]


def _render(token: str | tuple[int, ...], precision: int, same_year: bool) -> str:
    if isinstance(token, str):
        return token
    year, month, day, *clock = token
    date = f"{month:02d}-{day:02d}" if same_year else f"{year}-{month:02d}-{day:02d}"
    shown = clock[: precision]
    return date + (" " + ":".join(f"{v:02d}" for v in shown) if shown else "") + " "


def _ellipsize(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def short_run_ids(run_ids: Sequence[str], width: int = HEADER_CHARS) -> Headers:
    """Readable, distinct labels of `run_ids` (at most `width` characters each where that keeps
    them distinct): ids that fit are shown as they are; otherwise what every id shares at its
    start and end is left out (whole pieces between separators, never half a date), a date and
    time is shown as month-day and as much of the time as tells the ids apart, and what is still
    too long loses its middle."""
    ids = tuple(run_ids)
    if len(ids) <= 1 or all(len(i) <= width for i in ids):  # one column can be as wide as its id
        return Headers(ids, ids)
    tokens = [_tokens(i) for i in ids]
    shortest = min(len(t) for t in tokens)
    lead = 0
    while lead < shortest - 1 and all(t[lead] == tokens[0][lead] for t in tokens):
        lead += 1
    trail = 0
    while trail < shortest - lead - 1 and all(t[-1 - trail] == tokens[0][-1 - trail] for t in tokens):
        trail += 1
    middles = [t[lead:len(t) - trail] for t in tokens]
    years = {tok[0] for t in tokens for tok in t if isinstance(tok, tuple)}
    same_year = len(years) <= 1
    labels: list[str] = []
    for precision in (0, 2, 3):
        labels = [_AFTER_DATE.sub(" ", "".join(_render(tok, precision, same_year) for tok in m)).strip(" -_./:+")
                  for m in middles]
        if len(set(labels)) == len(set(ids)):
            break
    shown = [_ellipsize(label, width) for label in labels]
    if len(set(shown)) < len(set(ids)):
        shown = labels
    if len(set(shown)) < len(set(ids)):  # two ids differ only in what the dates leave out
        return Headers(ids, ids)
    def text(part: list[str | tuple[int, ...]]) -> str:
        return "".join(_render(tok, 2, False) if isinstance(tok, tuple) else tok for tok in part).strip(" ")

    start, end = text(tokens[0][:lead]), text(tokens[0][len(tokens[0]) - trail:])
    described = f"{start}…{end}" if start or end else ""
    return Headers(ids, tuple(shown), described)


def spread_us(half_rank_range_us: float | None, iteration_stdev_us: float | None) -> float | None:
    """A night's spread (module docstring) from half the range of its ranks' means and its
    iterations' standard deviation; None when neither is known."""
    known = [v for v in (half_rank_range_us, iteration_stdev_us) if v is not None]
    return max(known) if known else None


def beyond_noise(a: float | None, spread_a: float | None, b: float | None, spread_b: float | None) -> bool | None:
    """Whether two values differ by more than their spreads together; None when it cannot be told
    (a value or a spread unknown)."""
    if a is None or b is None or spread_a is None or spread_b is None:
        return None
    return abs(a - b) > spread_a + spread_b


def with_spread(value: float | None, spread: float | None, marked: bool | None = False) -> str:
    """`value ±spread`, with MARK after it when `marked` (a change beyond the noise); '-' for no
    value. Digits after the point follow the size of the value."""
    if value is None:
        return "-"
    digits = 2 if abs(value) < 1000 else 1
    text = f"{value:.{digits}f}"
    if spread is not None:
        text += f" ±{spread:.{digits}f}"
    return text + (MARK if marked else "")


def night_label(run_at: datetime) -> str:
    """A run's time as a short label (for plots): month-day hour:minute."""
    return f"{run_at:%m-%d %H:%M}"
