"""Kernel checks on real loads: a change in a series' kernels (added, removed, launched a
different number of times) between nights is one `kernels` alert with the difference, whatever
the timing noise; the same kernels under heavy noise, or one kernel spelled mangled one night and
demangled the next, raise none. Nights are the recorded kernel-breakdown output
(`seed_stdout_iter_stats_kernels.txt`) with names, counts and timings edited."""

from __future__ import annotations

import json
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from moecomm_tasks import alerts, outbox, store
from moecomm_tasks.cli import main
from moecomm_tasks.domain import AlertKind, Confirmation, Direction
from moecomm_tasks.parse import parse_texts

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)
SEED = Path(__file__).parents[1] / "data" / "seed_stdout_iter_stats_kernels.txt"
FILL = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int>>"
# The same kernel as the compiler names it, and as libstdc++ demangles that ("> >", parameters).
FILL_MANGLED = "_ZN2at6native29vectorized_elementwise_kernelILi4ENS0_11FillFunctorIiEEEEviT0_"
FILL_DEMANGLED = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int>>(int, at::native::FillFunctor<int>)"


def night_text(rng: random.Random, noise: float, renames: dict[str, str] | None = None,
               counts: dict[str, int] | None = None) -> str:
    """The recorded output with every time scaled by lognormal noise (sigma `noise`), kernels
    renamed and launch counts changed."""
    text = SEED.read_text()
    text = re.sub(r'("(?:mean|median|stdev|min|max)": )([0-9.]+)',
                  lambda m: f"{m.group(1)}{float(m.group(2)) * rng.lognormvariate(0, noise):.3f}", text)
    for old, new in (counts or {}).items():
        text = text.replace(f'"name": "{old}",\n      "count": 200', f'"name": "{old}",\n      "count": {new}')
    for old, new in (renames or {}).items():
        text = text.replace(f'"name": "{old}"', f'"name": "{new}"')
    return text


def load_nights(engine, texts: list[str]) -> None:
    for index, text in enumerate(texts):
        store.load(engine, parse_texts([(f"night-{index}.txt", text)]), f"night-{index:02d}",
                   START + timedelta(days=index), provenance={"gpu_model": "NVIDIA H200"})


def kernel_alerts(raised):
    return [a for a in raised if a.kind is AlertKind.KERNELS]


def test_a_changed_kernel_set_raises_one_alert_with_the_difference(engine):
    rng = random.Random(1)
    same = [night_text(rng, 0.01) for _ in range(3)]
    changed = [night_text(rng, 0.01, renames={"moeA2ACombineKernel": "moeA2ACombineKernelV2"},
                          counts={"moeA2ADispatchKernel": 400}) for _ in range(2)]
    load_nights(engine, same + changed)

    raised = alerts.run_detection(engine, deliver_to=["webhook"], digest="night-04", confirm=True)
    (alert,) = kernel_alerts(raised)
    assert (alert.last_good_run_id, alert.first_bad_run_id) == ("night-02", "night-03")
    assert (alert.backend, alert.profile, alert.ep_size, alert.local_batch_size, alert.op, alert.gpu_model) == (
        "NVLINK_ONE_SIDED", "gpt_oss", 2, 1024, "kernels", "NVIDIA H200")
    assert alert.direction is Direction.CHANGE and alert.confirmation is Confirmation.CONFIRMED
    assert alert.change_pct is None and alert.baseline_us is None
    assert alert.kernel_diff == {
        "added": [{"phase": "combine", "kernel": "moeA2ACombineKernelV2", "printed": ["moeA2ACombineKernelV2"],
                   "count": 200}],
        "removed": [{"phase": "combine", "kernel": "moeA2ACombineKernel", "printed": ["moeA2ACombineKernel"],
                     "count": 200}],
        "count_changed": [{"phase": "dispatch", "kernel": "moeA2ADispatchKernel",
                           "printed_before": ["moeA2ADispatchKernel"], "printed_after": ["moeA2ADispatchKernel"],
                           "count_before": 200, "count_after": 400}],
    }
    with engine.connect() as conn:
        stored = conn.execute(sa.text(
            "SELECT kind, direction, confirmation, kernel_diff FROM alert WHERE alert_id = :id"),
            {"id": alert.alert_id}).one()
        queued = conn.execute(sa.text("SELECT channel FROM alert_delivery WHERE alert_id = :id"),
                              {"id": alert.alert_id}).scalars().all()
    assert tuple(stored[:3]) == ("kernels", "change", "confirmed") and stored.kernel_diff == alert.kernel_diff
    assert queued == ["webhook"]  # exact, so queued at once, unlike a level candidate
    # Raised once: a second detection finds it stored.
    assert kernel_alerts(alerts.run_detection(engine)) == []
    assert alert.as_json()["kind"] == "kernels" and alert.as_json()["direction"] == "change"


def test_heavy_timing_noise_with_the_same_kernels_raises_none(engine):
    rng = random.Random(2)
    load_nights(engine, [night_text(rng, 0.5) for _ in range(6)])  # times vary by x1.6 and more
    assert kernel_alerts(alerts.run_detection(engine, confirm=True)) == []


def test_a_kernel_printed_mangled_then_demangled_is_one_kernel(engine):
    rng = random.Random(3)
    load_nights(engine, [night_text(rng, 0.01, renames={FILL: FILL_DEMANGLED}),
                         night_text(rng, 0.01, renames={FILL: FILL_MANGLED}),
                         night_text(rng, 0.01, renames={FILL: FILL_DEMANGLED})])
    assert kernel_alerts(alerts.run_detection(engine, confirm=True)) == []


def test_excluded_nights_and_nights_without_a_breakdown_are_not_compared(engine):
    rng = random.Random(4)
    plain = re.sub(r',\s*"dispatch_kernels": \[.*\](?=\s*\}\s*$)', "", night_text(rng, 0.01), flags=re.S)
    assert "kernels" not in plain.split('"combine_us"')[1]
    load_nights(engine, [night_text(rng, 0.01), plain,
                         night_text(rng, 0.01, renames={"moeA2ACombineKernel": "other"}), night_text(rng, 0.01)])
    alerts.set_excluded(engine, "night-02", "bad node")
    assert kernel_alerts(alerts.run_detection(engine)) == []
    alerts.set_excluded(engine, "night-02", None)
    assert [(a.last_good_run_id, a.first_bad_run_id) for a in kernel_alerts(alerts.run_detection(engine))] == [
        ("night-00", "night-02"), ("night-02", "night-03")]


def test_cli_lists_and_delivers_the_difference(engine, database_url, monkeypatch, capsys, http_sink):
    rng = random.Random(5)
    load_nights(engine, [night_text(rng, 0.01, renames={FILL: FILL_DEMANGLED}),
                         night_text(rng, 0.01, renames={FILL: FILL_MANGLED, "moeA2ACombineKernel": "combineV2"})])
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    assert main(["detect", "--format", "json"]) == 0
    (raised,) = [a for a in json.loads(capsys.readouterr().out) if a["kind"] == "kernels"]
    assert raised["kernel_diff"]["added"][0]["kernel"] == "combineV2"
    assert main(["alerts", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"#{raised['alert_id']} kernels" in listed and "+ combine combineV2 x200" in listed

    url, received = http_sink
    assert main(["alerts", "list", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["kernel_diff"] == raised["kernel_diff"]
    with engine.begin() as conn:
        outbox.enqueue(conn, [raised["alert_id"]], ["webhook"], "night-01")
    assert outbox.deliver_due(engine, {"MOECOMM_ALERT_WEBHOOK_URL": url}) == {"webhook night-01": "sent (1 alerts)"}
    (payload,) = received
    (group,) = payload["groups"]
    (sent,) = group["alerts"]
    assert sent["kind"] == "kernels" and sent["kernel_diff"] == raised["kernel_diff"]
    assert "- combine moeA2ACombineKernel x200" in sent["difference"]


def test_detect_checks_the_last_two_weeks_and_full_checks_every_night(engine, database_url, monkeypatch, capsys):
    rng = random.Random(6)
    renamed = {"moeA2ADispatchKernel": "moeA2ADispatchKernelV2"}
    load_nights(engine, [night_text(rng, 0.01, renames=renamed if index >= 2 else None) for index in range(20)])
    assert kernel_alerts(alerts.run_detection(engine)) == []  # night-02 is 17 days before the newest
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    assert main(["detect", "--full", "--format", "json"]) == 0
    (raised,) = [a for a in json.loads(capsys.readouterr().out) if a["kind"] == "kernels"]
    assert (raised["last_good_run_id"], raised["first_bad_run_id"]) == ("night-01", "night-02")


def test_the_nightly_sends_a_kernels_alert_in_the_confirm_tasks_one_digest(engine, http_sink, monkeypatch):
    from moecomm_tasks import nightly
    from moecomm_tasks.matrix import parse_matrix

    url, received = http_sink
    monkeypatch.setenv("MOECOMM_ALERT_WEBHOOK_URL", url)
    rng = random.Random(7)
    load_nights(engine, [night_text(rng, 0.01), night_text(rng, 0.01, counts={"moeA2ACombineKernel": 100})])
    matrix = parse_matrix({"backends": ["NVLINK_ONE_SIDED"], "profiles": ["gpt_oss"], "ep_sizes": [2],
                           "confirmation": {"max_jobs": 2}})
    analyzed = nightly.analyze(engine, "night-01", matrix)
    (alert,) = analyzed["new_alerts"]
    assert alert["kind"] == "kernels" and analyzed["notified"] == {} and received == []  # not yet
    confirmed = nightly.confirm(engine, "night-01", matrix)
    assert confirmed["notified"] == {"webhook night-01": "sent (1 alerts)"}
    (digest,) = received
    assert digest["title"] == "moecomm night-01: 1 new alert(s), 0 regression(s), 1 kernel change(s), 1 probable cause(s)"
    assert digest["groups"][0]["alerts"][0]["difference"] == ["~ combine moeA2ACombineKernel x200 -> x100"]
