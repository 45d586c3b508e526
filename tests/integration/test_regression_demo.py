"""A regression caught from real measurements: 21 real nights of the worker (2 ranks under
mpirun), then 3 nights made slower by `--extra_combine_passes` (real extra work in combine),
loaded with the real loader, found by the detector with its production parameters."""

from __future__ import annotations

import pytest

from moecomm_tasks import alerts, demo

pytestmark = pytest.mark.integration


def test_a_real_slowdown_is_caught_where_it_starts(engine, tmp_path):
    run_ids = demo.regression_nights(engine, tmp_path)
    raised = alerts.run_detection(engine)
    first_bad = run_ids[demo.REGRESSION_NIGHTS]
    combine = [a for a in raised if a["op"] == "combine" and a["direction"] == "regression"]
    assert [(a["last_good_run_id"], a["first_bad_run_id"]) for a in combine] == [(run_ids[demo.REGRESSION_NIGHTS - 1], first_bad)]
    assert combine[0]["change_pct"] > 10.0 and combine[0]["confidence"] > 0.99
    # The knob adds work to combine only, but under gloo a rank still busy with it delays its peer's
    # next dispatch, so dispatch may move too: never as much as combine.
    dispatch = [a["change_pct"] for a in raised if a["op"] == "dispatch" and a["first_bad_run_id"] == first_bad]
    assert all(change < combine[0]["change_pct"] for change in dispatch)
    assert alerts.run_detection(engine) == []
    assert (tmp_path / first_bad / "TORCH_ALLTOALL-gpt_oss-ep2" / "stdout.txt").exists()  # outputs kept
