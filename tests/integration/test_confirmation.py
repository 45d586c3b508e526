"""A regression caught from real measurements and confirmed before paging, with real ranks: 21
real nights of the worker (2 ranks under mpirun), then 4 nights made slower by
`--extra_combine_passes` (real extra work in combine), loaded with the real loader, found by the
detector with its production parameters as candidates, then their job run again for real. A
slowdown that persists at the re-run is confirmed and sent; one that is gone by then (a one-off)
is kept unconfirmed and sent to nobody."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from moecomm_tasks import alerts, confirm, demo, outbox
from moecomm_tasks.confirm import Confirmation

pytestmark = pytest.mark.integration
NOW = datetime(2026, 2, 1, 2, 0, tzinfo=timezone.utc)


def test_a_lasting_slowdown_is_confirmed_and_a_one_off_is_not(engine, tmp_path, http_sink, monkeypatch):
    url, received = http_sink
    monkeypatch.setenv("MOECOMM_ALERT_WEBHOOK_URL", url)
    run_ids = demo.regression_nights(engine, tmp_path)
    raised = alerts.run_detection(engine, deliver_to=["webhook"], digest="night", confirm=True)
    # Caught where it starts.
    first_bad = run_ids[demo.REGRESSION_NIGHTS]
    slower = [a for a in raised if a.op == "combine" and a.direction == "regression"]
    assert [(a.last_good_run_id, a.first_bad_run_id) for a in slower] == [
        (run_ids[demo.REGRESSION_NIGHTS - 1], first_bad)]
    assert slower[0].change_pct > 10.0 and slower[0].confidence > 0.99
    # The knob adds work to combine only, but under gloo a rank still busy with it delays its peer's
    # next dispatch, so dispatch may move too: never as much as combine.
    dispatch = [a.change_pct for a in raised if a.op == "dispatch" and a.first_bad_run_id == first_bad]
    assert all(change < slower[0].change_pct for change in dispatch)
    assert alerts.run_detection(engine, confirm=True) == []  # never raised twice
    assert (tmp_path / first_bad / "TORCH_ALLTOALL-gpt_oss-ep2" / "stdout.txt").exists()  # outputs kept
    combine = [a.alert_id for a in slower]
    assert {a.confirmation for a in raised} == {"candidate"}
    assert outbox.deliver_due(engine) == {} and received == []  # nothing is sent before confirmation

    # The slowdown is gone when the job runs again: a one-off, not confirmed, sent to nobody.
    gone = confirm.run_all(engine, demo.regression_matrix(), "one-off", NOW, ["webhook"], "one-off",
                           artifacts_in=tmp_path)
    decided = {d.alert_id: d for d in gone}
    assert decided[combine[0]].confirmation is Confirmation.UNCONFIRMED
    assert decided[combine[0]].position < 0.5 and "re-run" in decided[combine[0]].note
    # Only dispatch's small move that the slower combine dragged along (above) may happen to land
    # halfway again in a noisy re-run on these CPUs; the slowdown itself is sent to nobody.
    confirmed = {d.alert_id for d in gone if d.confirmation is Confirmation.CONFIRMED}
    assert all(a.op == "dispatch" for a in raised if a.alert_id in confirmed), [d for d in gone]
    outbox.deliver_due(engine)
    assert {a["alert_id"] for r in received for g in r["groups"] for a in g["alerts"]} == confirmed
    received.clear()
    with engine.connect() as conn:  # the re-run is stored, quarantined, and out of the series
        kind, excluded = conn.execute(sa.text("SELECT kind, excluded FROM run WHERE run_id = 'one-off-recheck'")).one()
        assert (kind, excluded) == ("confirmation", True)
        assert not conn.execute(sa.text("SELECT count(*) FROM nightly_series WHERE run_id = 'one-off-recheck'")).scalar()

    # The same candidates again, the slowdown still there at the re-run: confirmed and sent.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alert SET confirmation = 'candidate' WHERE alert_id = ANY(:ids)"),
                     {"ids": [d.alert_id for d in gone]})
    lasting = confirm.run_all(engine, demo.regression_matrix(demo.REGRESSION_PASSES), "lasting", NOW,
                              ["webhook"], "lasting", artifacts_in=tmp_path)
    decided = {d.alert_id: d for d in lasting}
    assert decided[combine[0]].confirmation is Confirmation.CONFIRMED and decided[combine[0]].position >= 0.5
    assert outbox.deliver_due(engine)["webhook lasting"].startswith("sent")
    sent = [a["alert_id"] for g in received[0]["groups"] for a in g["alerts"]]
    assert combine[0] in sent and set(sent) == {d.alert_id for d in lasting if d.confirmation is Confirmation.CONFIRMED}


def test_the_budget_and_jobs_outside_the_matrix(engine, weeks_of_nights):
    """Synthetic nights (no re-run needed): which jobs the plan re-runs, within the budget."""
    raised = alerts.run_detection(engine, confirm=True)
    assert raised and all(a.confirmation == "candidate" for a in raised)
    from moecomm_tasks.matrix import parse_matrix

    base = {"backends": ["TORCH_ALLTOALL", "TORCH_ALLGATHER"], "profiles": ["deepseek_v3", "gpt_oss"], "ep_sizes": [2]}
    plan = confirm.plan(engine, parse_matrix({**base, "confirmation": {"max_jobs": 1}}))
    assert len(plan.rechecks) == 1 and plan.orphans == ()
    assert (plan.rechecks[0].job.backend, plan.rechecks[0].job.profile) == ("TORCH_ALLTOALL", "deepseek_v3")
    elsewhere = confirm.plan(engine, parse_matrix({**base, "backends": ["TORCH_ALLGATHER"]}))
    assert elsewhere.rechecks == () and set(elsewhere.orphans) == {a.alert_id for a in raised}
    decisions = confirm.decide(engine, parse_matrix({**base, "backends": ["TORCH_ALLGATHER"]}), "night-27")
    assert {d.confirmation for d in decisions} == {Confirmation.UNCONFIRMED}
    assert all("not in the matrix" in d.note for d in decisions)


@pytest.mark.parametrize("value, expected", [(100.0, 0.0), (110.0, 1.0), (104.88, 0.5), (95.0, -0.538), (90.0, -1.105)])
def test_where_a_re_run_lies(value, expected):
    """0 at the baseline, 1 at the level after the change, on a log scale (improvements alike)."""
    assert confirm.position(value, 100.0, 110.0) == pytest.approx(expected, abs=1e-3)
    assert confirm.position(100.0 * 100.0 / value, 100.0, 100.0 * 100.0 / 110.0) == pytest.approx(expected, abs=1e-3)
