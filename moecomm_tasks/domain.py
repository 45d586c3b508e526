"""The typed domain objects that travel between modules: alerts (their kinds, directions,
confirmations and lifecycle states), job states and alert deliveries (channels, states).

The enums are str enums: a member is its string, so SQL parameters, JSON and the CLI's tables
keep the strings they always had (`"regression"`, `"succeeded"`, `"slack"`, ...), and a string
read back from the database becomes a member with `Enum(value)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from moecomm_tasks.series import SERIES_KEY


class AlertState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    MUTED = "muted"


class Direction(StrEnum):
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    CHANGE = "change"  # a kernels alert: neither slower nor faster, different


class Confirmation(StrEnum):
    CANDIDATE = "candidate"
    CONFIRMED = "confirmed"
    UNCONFIRMED = "unconfirmed"


class AlertKind(StrEnum):
    LEVEL = "level"
    KERNELS = "kernels"


@dataclass(frozen=True)
class Alert:
    """One alert as stored (table `alert`, whose id column is `alert_id` too).

    A level alert has a change %, a confidence and the levels before and after; a kernels alert
    has none of them (None) and `kernel_diff` instead. The fields after `confirmation` are those
    `list_alerts` reads besides: the lifecycle and the latest bisection."""

    alert_id: int
    kind: AlertKind
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
    direction: Direction
    change_pct: float | None
    confidence: float | None
    baseline_us: float | None
    after_us: float | None
    last_good_run_id: str
    first_bad_run_id: str
    provenance_diff: dict[str, Any] = field(default_factory=dict)
    kernel_diff: dict[str, Any] | None = None
    confirmation: Confirmation = Confirmation.CONFIRMED
    state: AlertState = AlertState.OPEN
    state_note: str | None = None
    confirm_note: str | None = None
    bisection_state: str | None = None
    first_bad_build: str | None = None
    commit_range: str | None = None

    @property
    def series(self) -> dict[str, Any]:
        """The alert's series key (`query.SERIES_KEY`) and its values."""
        return {k: getattr(self, k) for k in SERIES_KEY}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Alert:
        """An alert from a row of `alert`; columns it does not know are ignored, those missing
        keep their defaults."""
        values = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        values["kind"] = AlertKind(row.get("kind", AlertKind.LEVEL))
        values["direction"] = Direction(row["direction"])
        for name, enum in (("confirmation", Confirmation), ("state", AlertState)):
            if row.get(name) is not None:
                values[name] = enum(row[name])
        for name in ("change_pct", "confidence", "baseline_us", "after_us"):
            values[name] = None if row.get(name) is None else float(row[name])
        values["provenance_diff"] = dict(row.get("provenance_diff") or {})
        return cls(**values)

    def as_json(self) -> dict[str, Any]:
        """The alert as JSON-ready values (XCom, `--format json`): enums as their strings, the
        change % and confidence rounded as people read them."""
        out = {k: (v.value if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}
        for name, digits in (("change_pct", 3), ("confidence", 4)):
            if out[name] is not None:
                out[name] = round(out[name], digits)
        return out


class JobState(StrEnum):
    """A job's recorded outcome (table `job`, column `state`)."""

    SUCCEEDED = "succeeded"
    PARTIAL = "partial"    # some results stored, something dropped or failed
    FAILED = "failed"


class Channel(StrEnum):
    """The channels an alert digest goes out on (`moecomm_tasks.notify`)."""

    SLACK = "slack"
    EMAIL = "email"
    WEBHOOK = "webhook"


class DeliveryState(StrEnum):
    """Where one delivery of the outbox stands (`moecomm alerts deliveries`)."""

    DELIVERED = "delivered"
    PENDING = "pending"     # another attempt will come
    GIVEN_UP = "given up"   # MOECOMM_DELIVERY_MAX_ATTEMPTS attempts failed
