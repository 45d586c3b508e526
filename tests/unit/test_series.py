"""The series key: one definition, typed."""

from __future__ import annotations

from dataclasses import fields

from moecomm_tasks.knobs import KNOB_FIELDS
from moecomm_tasks.series import JOB_KEY, SERIES_KEY, SeriesKey

ROW = {"backend": "DEEPEP", "profile": "deepseek_v3", "ep_size": 8, "quant_algo": None, "local_batch_size": 128,
       "op": "combine", "gpu_model": None, "cuda_graph": True, "pdl": False, "perfect_router": False,
       "payload_in_workspace": False, "low_precision_combine": False, "timing_method": "kernel_span"}


def test_the_key_holds_every_knob_and_the_gpu_model_in_one_order():
    assert tuple(f.name for f in fields(SeriesKey)) == SERIES_KEY
    assert set(KNOB_FIELDS) <= set(SERIES_KEY) and "gpu_model" in SERIES_KEY
    assert JOB_KEY == tuple(k for k in SERIES_KEY if k not in ("local_batch_size", "op"))


def test_a_key_from_a_row_reads_a_missing_quantization_or_gpu_as_empty():
    key = SeriesKey.of(ROW)
    assert (key.quant_algo, key.gpu_model) == ("", "")
    assert key.astuple() == tuple("" if v is None else v for v in ROW.values())
    assert key.as_dict()["timing_method"] == "kernel_span"
    other_size = SeriesKey.of({**ROW, "local_batch_size": 4096, "op": "dispatch"})
    assert other_size != key and other_size.job == key.job
    assert SeriesKey.of({**ROW, "pdl": True}).job != key.job
