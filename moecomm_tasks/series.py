"""What a series is, and its value on a night: the one definition every reader imports.

A series is everything that changes a result's number: the backend, the model profile, the EP
size, the quantization, the token count (`local_batch_size`), the op, the GPU model, and the
measurement knobs of `moecomm_tasks.knobs` (design: "Regression detection"). Its value on a night
(`NIGHT_VALUE`) is the slowest rank's median iteration time, its mean where the run had no
`--iter_stats`: a collective waits for its slowest rank, and the median is unmoved by outlier
iterations.

In SQL, the table `series` holds one row per series (`series_pk` and the key) and
`series_night` one row per series and run, with `night_us` and what the detector needs; both
are filled at load time by migration 0015's triggers, which hold the only SQL formula of the
night value. Every reader (detector, report, `otava-config`, CLI, Grafana) reads them, or the
`nightly_series` view over them. A null quantization or GPU model is stored as '' there, so that
a key compares with `=`.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import Any, Mapping

from moecomm_tasks.knobs import KNOB_FIELDS

SERIES_KEY = ("backend", "profile", "ep_size", "quant_algo", "local_batch_size", "op", "gpu_model", *KNOB_FIELDS)
# A job's series: the key without the token count and the op (one job measures all of them, in
# the same runs: they share each night's noise).
JOB_KEY = tuple(k for k in SERIES_KEY if k not in ("local_batch_size", "op"))
NIGHT_VALUE = "night_us"  # series_night's column: the slowest rank's median (its mean without --iter_stats)
BLANK_AS_EMPTY = ("quant_algo", "gpu_model")  # stored as '' where the run did not say


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One series, typed. Build it from any row or mapping that has the key's fields with
    `SeriesKey.of`; `astuple`/`as_dict` give it back in `SERIES_KEY`'s order."""

    backend: str
    profile: str
    ep_size: int
    quant_algo: str
    local_batch_size: int
    op: str
    gpu_model: str
    cuda_graph: bool
    pdl: bool
    perfect_router: bool
    payload_in_workspace: bool
    low_precision_combine: bool
    timing_method: str

    @classmethod
    def of(cls, row: Any) -> SeriesKey:
        """The key of a row (an SQLAlchemy row, a mapping or an object with those attributes);
        a null quantization or GPU model reads as ''."""
        get = row.get if isinstance(row, Mapping) else (lambda name: getattr(row, name))
        values = {name: get(name) for name in SERIES_KEY}
        for name in BLANK_AS_EMPTY:
            values[name] = values[name] or ""
        return cls(**values)

    def astuple(self) -> tuple:
        return astuple(self)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def job(self) -> tuple:
        """The job's part of the key (`JOB_KEY`): series that share it are detected together."""
        return tuple(getattr(self, name) for name in JOB_KEY)

