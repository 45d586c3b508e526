"""The limits on what moecomm accepts from a benchmark's output, and the checks of single values.

Every limit is a constant here and listed in the README ("Input limits"); a value beyond one is
refused with a reason that names it (the parser turns the reason into a `Dropped` record), never
raised as a Python error. What the limits protect:

* the parser's memory and time: one JSON object, one line, the nesting depth and the number of
  records kept per job are bounded, so an arbitrarily large or garbage output is read in bounded
  memory (`parse`);
* the database: integers fit its INTEGER columns and the loader's binary COPY (`struct` packs
  4-byte integers), names are short single-line text without lone surrogates (which PostgreSQL
  cannot store), times are positive and finite.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Reading.
MAX_OBJECT_CHARS = 16 * 1024 * 1024    # one JSON object (or one line) of an output
MAX_JSON_DEPTH = 32                    # nesting of one JSON object (a result object needs 5)
MAX_NUMBER_CHARS = 40                  # characters of one JSON number (digits, sign, exponent)
MAX_TRACEBACK_CHARS = 16 * 1024        # a worker traceback is kept up to this many characters
# Records kept per parse; beyond them items are counted, not kept (the count is stored per job).
MAX_DROPPED_PER_JOB = 100              # dropped items (and worker failures) listed per job
MAX_RESULTS_PER_JOB = 10_000           # result objects, i.e. (backend, local_batch_size) pairs
MAX_SKIPS_PER_JOB = 10_000             # skip lines
MAX_JOBS = 1_000                       # run headers (benchmark configurations) in one parse
MAX_RANK_VALUES = 1_000_000            # per-rank values (phase and kernel times) in one parse
MAX_WARNING_CHARS = 64 * 1024          # a job's benchmark_metadata.warning
# Values.
MAX_EP_SIZE = 1_024                    # ranks of one run
MAX_LOCAL_BATCH_SIZE = 1 << 20         # tokens per rank
MAX_SHAPE = 1 << 20                    # hidden_size, num_experts, experts_per_rank
MAX_TOP_K = 1_024
MAX_INT = (1 << 31) - 1                # PostgreSQL INTEGER: kernel counts, max_num_tokens_per_rank
MAX_TIME_US = 3.6e9                    # one hour for one phase or kernel of one iteration
MAX_RUN_ID_CHARS = 200
MAX_NAME_CHARS = 128                   # backend, profile, quantization, dtype, launcher, GPU model
MAX_KERNEL_NAME_CHARS = 4_096          # demangled C++ kernel names are long

_CONTROL_OR_SURROGATE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NUL_OR_SURROGATE = re.compile(r"[\x00\ud800-\udfff]")


class Invalid(Exception):
    """A value that breaks a limit or the contract; the message is the reason it is refused."""


class HugeNumber(str):
    """A JSON number longer than MAX_NUMBER_CHARS, kept as its text so nothing converts it."""


def bounded_number(text: str) -> Any:
    """`json.loads`' parse_int/parse_float: Python's own conversion, unless the number is too
    long (a 5,000-digit integer makes `int()` raise; `1` and 400 zeros overflows `float()`)."""
    if len(text) > MAX_NUMBER_CHARS:
        return HugeNumber(text)
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _number_text(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def integer(value: Any, what: str, low: int, high: int) -> int:
    """A JSON integer within [low, high]."""
    if isinstance(value, HugeNumber):
        raise Invalid(f"{what}: a number of {len(value)} characters (more than {MAX_NUMBER_CHARS})")
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{what}: expected an integer, got {_number_text(value)}")
    if not low <= value <= high:
        raise Invalid(f"{what}: {value} is outside {low}..{high}")
    return value


def time_us(value: Any, what: str, zero_ok: bool = False) -> float:
    """A time in µs: finite, positive (zero too where `zero_ok`, e.g. a standard deviation), at
    most MAX_TIME_US, never -0.0."""
    if isinstance(value, HugeNumber):
        raise Invalid(f"{what}: a number of {len(value)} characters (more than {MAX_NUMBER_CHARS})")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"{what}: not a number ({_number_text(value)})")
    value = float(value)
    if not math.isfinite(value):
        raise Invalid(f"{what}: not a finite time ({value!r})")
    if value < 0 or math.copysign(1.0, value) < 0:
        raise Invalid(f"{what}: negative time ({value!r})")
    if value == 0 and not zero_ok:
        raise Invalid(f"{what}: a time of 0 µs (not a measurement)")
    if value > MAX_TIME_US:
        raise Invalid(f"{what}: {value!r} µs is more than {MAX_TIME_US:.0f} µs")
    return value


def flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"{what}: expected true or false, got {_number_text(value)}")
    return value


def name(value: Any, what: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """A name that identifies something (backend, profile, kernel, ...): text of 1..max_chars
    characters without control characters or lone surrogates."""
    if not isinstance(value, str):
        raise Invalid(f"{what}: expected a name, got {_number_text(value)}")
    value = value.strip()
    if not value:
        raise Invalid(f"{what}: an empty name")
    if len(value) > max_chars:
        raise Invalid(f"{what}: a name of {len(value)} characters (more than {max_chars})")
    if (bad := _CONTROL_OR_SURROGATE.search(value)) is not None:
        raise Invalid(f"{what}: the name holds the character U+{ord(bad.group()):04X}")
    return value


def optional_name(value: Any, what: str, max_chars: int = MAX_NAME_CHARS) -> str | None:
    return None if value is None else name(value, what, max_chars)


def text(value: str, max_chars: int | None = None) -> str:
    """Free text (reasons, excerpts, warnings) made storable: NUL and lone surrogates, which
    PostgreSQL cannot hold, become U+FFFD; cut to `max_chars`."""
    value = _NUL_OR_SURROGATE.sub("\ufffd", value)
    return value if max_chars is None or len(value) <= max_chars else value[: max_chars - 1] + "…"


def json_safe(value: Any) -> Any:
    """A parsed JSON value made storable as JSONB: strings as `text`, non-finite and huge numbers
    as null. Called on values of bounded depth (MAX_JSON_DEPTH)."""
    if isinstance(value, HugeNumber):
        return None
    if isinstance(value, str):
        return text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {text(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def run_id(value: str) -> str:
    """A run id: 1..MAX_RUN_ID_CHARS printable characters, no leading or trailing blanks."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("a run id is required (--run-id)")
    if value != value.strip():
        raise Invalid(f"run id {value!r} has leading or trailing blanks")
    if len(value) > MAX_RUN_ID_CHARS:
        raise Invalid(f"a run id of {len(value)} characters (at most {MAX_RUN_ID_CHARS})")
    if (bad := _CONTROL_OR_SURROGATE.search(value)) is not None:
        raise Invalid(f"the run id holds the character U+{ord(bad.group()):04X} (control characters "
                      "and lone surrogates are refused)")
    return value
