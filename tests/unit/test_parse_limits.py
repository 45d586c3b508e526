"""The parser never raises and keeps within its limits (moecomm_tasks/limits.py): each input that
once crashed `moecomm load` (issue 14) is dropped with its reason, the rest of the input kept."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from moecomm_tasks import jsonscan, limits
from moecomm_tasks.parse import parse_paths, parse_texts

DATA = Path(__file__).parent.parent / "data"
SEED = (DATA / "seed_stdout_2ranks.txt").read_text()
FIRST_RESULT = '"dispatch_us": {\n    "rank0": 301.5,'


def parse(text: str, name: str = "stdout"):
    return parse_texts([(name, text)])


def reasons(out) -> list[str]:
    return [d.reason for d in out.dropped]


def only_first_result_changed(replacement: str):
    """The seed stdout with the first result's rank-0 dispatch time replaced."""
    assert FIRST_RESULT in SEED
    return SEED.replace(FIRST_RESULT, FIRST_RESULT.replace("301.5", replacement), 1)


HEADER_START = SEED.rindex("\n{", 0, SEED.index('"hidden_size"')) + 1
HEADER_END = SEED.index("\n}\n", HEADER_START) + 2
HEADER = json.loads(SEED[HEADER_START:HEADER_END])


def kept_results(out) -> set:
    return {(t.backend, t.local_batch_size) for job in out.jobs for t in job.timings}


ALL_RESULTS = kept_results(parse(SEED))


@pytest.mark.parametrize("value, reason", [
    ("1" + "0" * 5000, "a number of 5001 characters"),          # was ValueError (int() digit limit)
    ("1" + "0" * 400, "a number of 401 characters"),            # was OverflowError (float())
    ("-0.0", "negative time (-0.0)"),                           # was accepted
    ("0.0", "kept as absent"),                                  # a rank without times: absent, reported
    ("Infinity", "not a finite time (inf)"),
    ("NaN", "not a finite time (nan)"),
    ("1e300", "µs is more than"),
    ('{"mean": null, "median": 1.0}', "stats object without a 'mean'"),  # was KeyError
    ('{"mean": 1.0, "median": -0.0}', "negative time (-0.0)"),
    ('"301.5"', "not a number ('301.5')"),
    ("true", "not a number (True)"),
])
def test_bad_times_are_dropped_and_the_other_results_kept(value, reason):
    out = parse(only_first_result_changed(value))
    assert any(reason in r for r in reasons(out)), reasons(out)
    if "absent" in reason:
        assert kept_results(out) == ALL_RESULTS
        assert any(t.stats is None for t in out.jobs[0].timings)
    else:
        assert kept_results(out) == ALL_RESULTS - {("ALLGATHER", 640)}


def test_null_rank_is_absent_not_invalid():
    out = parse(only_first_result_changed("null"))
    assert out.dropped == () and kept_results(out) == ALL_RESULTS
    (absent,) = [t for t in out.jobs[0].timings if t.stats is None]
    assert (absent.backend, absent.local_batch_size, absent.op, absent.rank) == ("ALLGATHER", 640, "dispatch", 0)


def test_deep_nesting_is_refused_before_decoding():
    """2,000 levels once raised RecursionError."""
    deep = "[" * 2000 + "]" * 2000
    out = parse(only_first_result_changed(deep))
    assert any(f"nested deeper than {limits.MAX_JSON_DEPTH}" in r for r in reasons(out))
    assert kept_results(out) == ALL_RESULTS - {("ALLGATHER", 640)}
    report = json.dumps({"benchmark_metadata": HEADER, "results": []})
    nested = report.replace('"results": []', '"results": [' + deep + ', {"backend": "X", "local_batch_size": 1, '
                            '"dispatch_us": {"rank0": 1.0, "rank1": 2.0}}]')
    out = parse(nested, "out.json")
    assert any("nested deeper" in r for r in reasons(out))
    assert kept_results(out) == {("X", 1)}


@pytest.mark.parametrize("key, value, reason", [
    ("ep_size", "Infinity", "ep_size: expected an integer, got inf"),   # was OverflowError
    ("ep_size", "50000000", "ep_size: 50000000 is outside 1..1024"),   # was 8 s and 2 GB
    ("ep_size", "2147483648", "outside 1..1024"),
    ("ep_size", "2.0", "expected an integer"),
    ("hidden_size", '"7168"', "hidden_size: expected an integer"),
    ("profile", '"deep\\u0000seek"', "holds the character U+0000"),
    ("profile", '"\\ud800"', "holds the character U+D800"),               # was UnicodeEncodeError at load
    ("profile", '"' + "p" * 500 + '"', "a name of 500 characters"),
    ("quant_algo", "5", "quant_algo: expected a name"),
    ("cuda_graph", '"yes"', "cuda_graph: expected true or false"),
])
def test_invalid_run_header_is_dropped_with_its_results(key, value, reason):
    header = dict(HEADER)
    header.pop(key, None)
    text = json.dumps(header, indent=2)[:-2] + f',\n  "{key}": {value}\n}}'
    out = parse(SEED[:HEADER_START] + text + SEED[HEADER_END:])
    assert any(reason in r for r in reasons(out)), reasons(out)
    assert not out.loadable
    assert any("run header that was not kept" in r for r in reasons(out))


@pytest.mark.parametrize("old, new, reason", [
    ('"local_batch_size": 640,', '"local_batch_size": 2147483648,', "outside 1..1048576"),  # was struct.error
    ('"local_batch_size": 640,', '"local_batch_size": 0,', "outside 1..1048576"),
    ('"backend": "ALLGATHER",', '"backend": "ALL\\u001bGATHER",', "U+001B"),
    ('"backend": "ALLGATHER",', '"backend": "\\udc80",', "U+DC80"),
    ('"backend": "ALLGATHER",', '"backend": "ALLGATHER", "payload_dtype": 5,', "payload_dtype: expected a name"),  # was AttributeError
    ('"backend": "ALLGATHER",', '"backend": "ALLGATHER", "pdl": 1,', "pdl: expected true or false"),
    ('"backend": "ALLGATHER",', '"backend": "ALLGATHER", "unhonoured": "x",', "unhonoured: expected a list"),
    ('"rank0": 301.5,', '"rank00": 301.5,', "unexpected key 'rank00'"),
])
def test_invalid_result_fields(old, new, reason):
    out = parse(SEED.replace(old, new, 1))
    assert any(reason in r for r in reasons(out)), reasons(out)
    assert kept_results(out) == ALL_RESULTS - {("ALLGATHER", 640)}


def test_duplicate_results_in_one_input_are_reported_not_collapsed_silently():
    start = SEED.index('{\n  "backend": "ALLGATHER"')
    first = SEED[start:SEED.index("\n}\n", start) + 3]
    out = parse(SEED + first * 500)
    duplicates = [r for r in reasons(out) if r.startswith("duplicate result object for ALLGATHER @ 640")]
    assert len(duplicates) == limits.MAX_DROPPED_PER_JOB
    assert out.omitted == {out.jobs[0].header.job_key(): 500 - limits.MAX_DROPPED_PER_JOB}
    assert kept_results(out) == ALL_RESULTS
    # The same result in the stdout and in the output file beside it is not a duplicate.
    assert parse_paths([DATA / "seed_stdout_2ranks.txt", DATA / "seed_output_2ranks.json"]).dropped == ()


def test_a_differing_copy_in_the_output_file_is_reported():
    report = (DATA / "seed_output_2ranks.json").read_text().replace("301.5", "302.5", 1)
    out = parse_texts([("stdout", SEED), ("out.json", report)])
    assert any("differs from the one at stdout:" in r for r in reasons(out))


def test_ep_size_fifty_million_is_quick():
    start = time.perf_counter()
    out = parse(SEED.replace('"ep_size": 2,', '"ep_size": 50000000,'))
    assert time.perf_counter() - start < 2.0
    assert not out.loadable


def test_kernel_listed_twice_keeps_the_first():
    kernel = {"name": "k", "count": 200, "per_rank": {"rank0": 5.0, "rank1": 6.0}}
    result = {"backend": "ALLGATHER", "local_batch_size": 8, "dispatch_us": {"rank0": 9.0, "rank1": 9.5},
              "dispatch_kernels": [kernel, dict(kernel, per_rank={"rank0": 7.0, "rank1": 0.0})]}
    out = parse(json.dumps(HEADER, indent=2) + "\n" + json.dumps(result, indent=2) + "\n")
    assert any("kernel 'k' is listed twice in dispatch_kernels" in r for r in reasons(out))
    (job,) = out.jobs
    assert sorted(k.stats.mean_us for k in job.kernels) == [5.0, 6.0]


def test_lines_and_objects_beyond_the_size_limit(monkeypatch):
    monkeypatch.setattr(limits, "MAX_OBJECT_CHARS", 4_000)
    monkeypatch.setattr(jsonscan, "MAX_OBJECT_CHARS", 4_000)
    long_line = "x" * 10_000
    big_object = '{\n  "backend": "ALLGATHER",\n' + '  "pad": 1,\n' * 1_000 + '  "local_batch_size": 8\n}'
    out = parse(long_line + "\n" + big_object + "\n" + SEED)
    assert any("a line of more than 4000 characters" in r for r in reasons(out))
    assert any("a JSON object of more than 4000 characters" in r for r in reasons(out))
    assert kept_results(out) == ALL_RESULTS
    report = '[{"backend": "B", "local_batch_size": 1, "pad": "' + "y" * 10_000 + '", "dispatch_us": {"rank0": 1.0}}]'
    out = parse_texts([("stdout", SEED), ("out.json", report)])
    assert any("truncated or malformed output file" in r or "more than 4000" in r for r in reasons(out))


def test_garbage_keeps_a_bounded_number_of_dropped_records():
    garbage = "{ not json\n" * 5_000 + "\x00\udcff garbage ]]]\n" * 5_000
    out = parse(SEED + garbage)
    assert len(out.dropped) <= limits.MAX_DROPPED_PER_JOB
    assert sum(out.omitted.values()) == 5_000 - limits.MAX_DROPPED_PER_JOB
    assert kept_results(out) == ALL_RESULTS


def test_free_text_is_made_storable():
    text = SEED.replace("factory returned None.", "factory \x00returned \udc80None.")
    (job,) = parse(text).jobs
    assert any(s.reason == "factory \ufffdreturned \ufffdNone." for s in job.skips)


def test_read_output_file_in_small_chunks(monkeypatch):
    """The chunked scanner gives the same records whatever the chunk boundaries."""
    text = (DATA / "upstream_external_mpi_output.json").read_text()
    whole = list(jsonscan.read_output_file(io.StringIO(text)))
    for chunk in (1, 7, 64):
        monkeypatch.setattr(jsonscan, "CHUNK_CHARS", chunk)
        assert list(jsonscan.read_output_file(io.StringIO(text))) == whole
    assert [e.kind for e in whole] == ["metadata"] + ["item"] * 5


def test_run_id_limits():
    assert limits.run_id("nightly-2026-11-24") == "nightly-2026-11-24"
    for bad in ("", "  ", "a\nb", "x" * 201, " padded", "\ud800"):
        with pytest.raises(limits.Invalid):
            limits.run_id(bad)
