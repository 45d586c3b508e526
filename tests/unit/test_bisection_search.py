"""The bisection's search and test on literal measurements: each build's repetitions are given
as numbers (as the detector's tests give literal series), so that every path of the search is
checked exactly; the integration tests run the same search on real ranks."""

from __future__ import annotations

import math

import pytest

from moecomm_tasks.bisection_search import (BuildFailed, Noise, Settings, bisect, classify, judge_ends, max_probes,
                                            noise, p_greater)

# A repetition's spread: about 1% around the build's level, the same pattern for every build.
NOISE = (1.0, 1.012, 0.991, 1.006, 0.995, 1.009, 0.988, 1.003)


def levels_measure(levels: dict[str, float], fail: dict[str, str] | None = None, log: list | None = None):
    """`measure` over literal levels: repetition i of a build is its level times NOISE[i]."""
    taken: dict[str, int] = {}

    def measure(build: str, count: int) -> list[float]:
        if log is not None:
            log.append((build, count))
        if fail and build in fail:
            raise BuildFailed(fail[build])
        start = taken.get(build, 0)
        taken[build] = start + count
        return [levels[build] * NOISE[(start + i) % len(NOISE)] for i in range(count)]

    return measure


def catalog(n: int, first_bad: int, good: float = 100.0, bad: float = 180.0) -> tuple[list[str], dict[str, float]]:
    names = [f"b{i}" for i in range(1, n + 1)]
    return names, {name: (bad if i + 1 >= first_bad else good) for i, name in enumerate(names)}


def test_eight_builds_the_fifth_slower_is_found_in_three_probes():
    names, levels = catalog(8, first_bad=5)
    log: list = []
    seen = []
    verdict = bisect(names, levels_measure(levels, log=log), change_pct=80.0, on_measured=seen.append)
    assert (verdict.state, verdict.last_good, verdict.first_bad) == ("culprit", "b4", "b5")
    assert verdict.probes == 3 and verdict.max_probes == 4
    # The ends first, interleaved, then the middle of what is left each time.
    assert [b for b, _ in log][:6] == ["b1", "b8"] * 3
    assert [(m.build, m.role, m.outcome) for m in seen] == [
        ("b1", "good_end", "good"), ("b8", "bad_end", "bad"), ("b4", "probe", "good"), ("b6", "probe", "bad"),
        ("b5", "probe", "bad")]
    assert seen == list(verdict.measured)
    assert all(len(m.values_us) == 3 for m in seen)
    assert "b5 is the first bad build" in verdict.reason


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9, 16, 17, 33])
def test_every_culprit_position_is_found_within_the_bound(n):
    for first_bad in range(2, n + 1):
        names, levels = catalog(n, first_bad)
        verdict = bisect(names, levels_measure(levels), change_pct=80.0)
        assert (verdict.state, verdict.first_bad) == ("culprit", f"b{first_bad}")
        assert verdict.last_good == f"b{first_bad - 1}"
        assert verdict.probes <= math.ceil(math.log2(n - 1)) if n > 2 else verdict.probes == 0
        assert verdict.probes <= max_probes(n) == math.ceil(math.log2(n)) + 1


def test_ends_that_no_longer_differ_end_inconclusive_without_probes():
    names, _ = catalog(8, first_bad=5)
    log: list = []
    verdict = bisect(names, levels_measure({n: 100.0 for n in names}, log=log), change_pct=80.0)
    assert verdict.state == "inconclusive" and verdict.probes == 0
    assert "does not reproduce between b1 and b8" in verdict.reason and "+80.0%" in verdict.reason
    assert {b for b, _ in log} == {"b1", "b8"} and len(log) == 6  # no extra repetitions were needed
    assert [m.outcome for m in verdict.measured] == ["unresolved", "unresolved"]


def test_ends_too_close_for_the_noise_get_repetitions_up_to_the_cap():
    names = ["b1", "b2", "b3"]
    # A 0.5% difference under 1% noise, against an alert of 1%: neither differ nor "less than the alert".
    verdict = bisect(names, levels_measure({"b1": 100.0, "b2": 100.0, "b3": 100.5}), change_pct=1.0,
                     settings=Settings(repetitions=3, max_repetitions=6))
    assert verdict.state == "inconclusive" and "6 repetitions of each end cannot tell b1 from b3" in verdict.reason
    assert [len(m.values_us) for m in verdict.measured] == [6, 6]


def test_a_build_between_the_levels_is_reported_not_guessed():
    names = ["b1", "b2", "b3", "b4", "b5"]
    levels = {"b1": 100.0, "b2": 100.0, "b3": 135.0, "b4": 180.0, "b5": 180.0}
    verdict = bisect(names, levels_measure(levels), change_pct=80.0, settings=Settings(max_repetitions=5))
    assert verdict.state == "inconclusive" and verdict.probes == 1
    assert "b3 lies 51% of the way" in verdict.reason and "part of the regression came with it" in verdict.reason
    assert (verdict.last_good, verdict.first_bad) == ("b1", "b5")
    assert len(verdict.measured[-1].values_us) == 5  # it was given every repetition allowed


@pytest.mark.parametrize("broken, message", [
    ("b4", "b4 failed to run: no interpreter; the first bad build is after b1, at or before b8"),
    ("b1", "the good end b1 failed to run: no interpreter; nothing was bisected"),
    ("b8", "the bad end b8 failed to run: no interpreter; nothing was bisected"),
])
def test_a_build_that_fails_to_run_ends_it_failed(broken, message):
    names, levels = catalog(8, first_bad=5)
    verdict = bisect(names, levels_measure(levels, fail={broken: "no interpreter"}), change_pct=80.0)
    assert verdict.state == "failed" and verdict.reason == message
    assert verdict.measured[-1].outcome == "failed" and verdict.measured[-1].error == "no interpreter"
    if broken == "b8":  # what the good end measured before is kept as evidence
        assert (verdict.measured[0].build, verdict.measured[0].outcome, len(verdict.measured[0].values_us)) == \
            ("b1", "unresolved", 1)


def test_a_failure_after_narrowing_keeps_the_narrowed_range():
    names, levels = catalog(8, first_bad=5)
    verdict = bisect(names, levels_measure(levels, fail={"b6": "timed out after 300 s"}), change_pct=80.0)
    assert (verdict.state, verdict.last_good, verdict.first_bad, verdict.probes) == ("failed", "b4", "b8", 2)
    assert verdict.reason.startswith("b6 failed to run: timed out after 300 s")


def test_classification_needs_significance_and_closeness():
    good, bad = [100.0, 101.0, 99.5], [180.0, 182.0, 178.5]

    def judged(values):
        return classify(values, good, bad, noise([good, bad, values]), Settings())

    assert judged([101.0, 100.2, 99.8])[0] == "good"
    assert judged([179.0, 181.5, 180.4])[0] == "bad"
    outcome, p_bad, p_good, position = judged([140.0, 141.0, 139.0])
    assert outcome == "unresolved" and p_bad < 0.01 and p_good < 0.01 and 0.4 < position < 0.6
    # Repetitions far apart say nothing, whatever their mean.
    assert judged([100.0, 185.0, 120.0])[0] == "unresolved"


def test_the_noise_is_pooled_over_every_build():
    spread = noise([[100.0, 110.0], [200.0, 220.0, 200.0], [50.0]])
    first = math.log(110) - math.log(100)
    second = [math.log(v) - math.log(200) for v in (200.0, 220.0, 200.0)]
    expected = ((first / 2) ** 2 * 2 + sum((x - sum(second) / 3) ** 2 for x in second)) / 3
    assert spread.df == 3 and spread.variance == pytest.approx(expected)
    # One wild repetition of one build weighs less once other builds have been measured.
    wild = [[100.0, 101.0, 135.0], [180.0, 181.0, 179.0]]
    alone = p_greater(wild[1], wild[0], noise(wild))
    pooled = p_greater(wild[1], wild[0], noise(wild + [[140.0, 141.0, 139.5], [120.0, 121.0, 119.0]]))
    assert pooled < alone < 0.05


def test_ends_judgement():
    settings = Settings()
    for good, bad, expected in (([100, 101, 99], [180, 181, 179], "differ"),
                                ([100, 101, 99], [100.5, 99.5, 100.2], "same")):
        assert judge_ends(good, bad, 80.0, noise([good, bad]), settings)[0] == expected
    assert p_greater([5.0, 5.0, 5.0], [6.0, 6.0, 6.0], Noise(0.0, 4)) == 1.0  # no spread, no statistic


def test_builds_must_be_two_or_more_and_distinct():
    with pytest.raises(ValueError):
        bisect(["b1"], levels_measure({"b1": 1.0}), 10.0)
    with pytest.raises(ValueError):
        bisect(["b1", "b1"], levels_measure({"b1": 1.0}), 10.0)
