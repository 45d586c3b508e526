"""CUPTI kernel-span attribution on literal records (the CUPTI package itself needs a GPU)."""

from __future__ import annotations

import pytest

from moecomm_tasks.bench.kernel_spans import SpanError, attribute, ids_in_record_order, stamps_by_id

# Two iterations; event ids 1-4 and 5-8 bracket (dispatch, dispatch end, combine, combine end).
IDS = [(1, 2, 3, 4), (5, 6, 7, 8)]
EVENTS = [(1, 1000), (2, 2000), (3, 2100), (4, 3000), (5, 4000), (6, 5000), (7, 5100), (8, 6000)]


def kernels():
    return [
        ("flush", 500, 900),                                   # outside every window: other
        ("dispatch_a", 1100, 1400), ("dispatch_b", 1500, 1900),
        ("combine_a", 2200, 2900),
        ("flush", 3500, 3900),
        ("dispatch_a", 4100, 4300), ("pdl_b", 4250, 4800),     # overlapping (PDL) kernels count once
        ("combine_a", 5200, 5700),
    ]


def stamps(events=EVENTS):
    return stamps_by_id(events, IDS)


def test_spans_run_from_the_first_kernel_to_the_last_inside_each_window():
    spans = attribute(kernels(), stamps())
    assert spans.span_us == {"dispatch": [0.8, 0.7], "combine": [0.7, 0.5]}
    assert spans.kernels["dispatch"] == {"dispatch_a": [0.3, 0.2], "dispatch_b": [0.4], "pdl_b": [0.55]}
    assert spans.kernels["other"] == {"flush": [0.4, 0.4]}
    assert spans.kernels["combine"] == {"combine_a": [0.7, 0.5]}


def test_events_of_other_ids_are_ignored():
    assert stamps([(99, 1), *EVENTS]) == [(1000, 2000, 2100, 3000), (4000, 5000, 5100, 6000)]


@pytest.mark.parametrize("events, reason", [
    (EVENTS[:-1], "recorded 7 of 8 timing events"),
    ([*EVENTS, (3, 2100)], "repeated timestamp for event 3"),
])
def test_events_missing_or_repeated_are_refused(events, reason):
    with pytest.raises(SpanError, match=reason):
        stamps(events)


@pytest.mark.parametrize("kernels_, events, reason", [
    (kernels(), [(1, 1000), (2, 2200), (3, 2100), *EVENTS[3:]], "not in dispatch-then-combine order"),
    ([*kernels(), ("late", 2800, 3100)], EVENTS, "kernel late crosses the boundary of a combine window"),
    ([*kernels(), ("early", 950, 1100)], EVENTS, "kernel early crosses the boundary of a dispatch window"),
    ([k for k in kernels() if k[1] != 5200], EVENTS, "no combine kernel in one or more timed iterations"),
    ([], EVENTS, "no kernels"),
    ([*kernels(), ("bad", 7000, 6999)], EVENTS, "invalid timestamps for kernel bad"),
])
def test_records_that_cannot_be_trusted_are_refused_with_a_reason(kernels_, events, reason):
    with pytest.raises(SpanError, match=reason):
        attribute(kernels_, stamps(events))


def test_overlapping_iterations_are_refused():
    events = [(1, 1000), (2, 2000), (3, 2100), (4, 3000), (5, 2900), (6, 5000), (7, 5100), (8, 6000)]
    with pytest.raises(SpanError, match="overlap"):
        attribute(kernels()[:4], stamps(events))


def test_event_ids_are_learnt_from_records_in_time_order():
    assert ids_in_record_order([(7, 30), (5, 10), (6, 20)], 3) == [5, 6, 7]
    with pytest.raises(SpanError, match="2 distinct timestamps"):
        ids_in_record_order([(7, 30), (5, 10), (6, 10)], 3)
    with pytest.raises(SpanError, match="recorded 2 CUDA events"):
        ids_in_record_order([(7, 30), (5, 10)], 3)
