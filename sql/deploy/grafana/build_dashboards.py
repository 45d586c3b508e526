"""Writes the Grafana dashboards (dashboards/*.json) from the SQL below; run it after editing:

    python sql/deploy/grafana/build_dashboards.py

Every query reads the public SQL interface (README, "The SQL interface"): a series' nights from
`series_night` (the detector's night value) chosen through `series` (one variable per part of the
series key, moecomm_tasks.series); tests/integration/
test_dashboards.py substitutes Grafana's macros and variables and runs each against PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "grafana-postgresql-datasource", "uid": "moecomm-pg"}
# A series (moecomm_tasks.series): its key, every part of it a variable. A null quantization or
# GPU model is '' in `series`; the variables show 'none' and 'unknown' instead (Grafana's options
# cannot be empty).
QUANT, GPU = "COALESCE(NULLIF(quant_algo, ''), 'none')", "COALESCE(NULLIF(gpu_model, ''), 'unknown')"
KEY_FILTERS = (
    ("backend", "backend = '$backend'"), ("profile", "profile = '$profile'"), ("ep_size", "ep_size = $ep_size"),
    ("size", "local_batch_size = $size"), ("op", "op = '$op'"), ("quant", f"{QUANT} = '$quant'"),
    ("gpu", f"{GPU} = '$gpu'"), ("timing_method", "timing_method = '$timing_method'"),
    ("cuda_graph", "cuda_graph = $cuda_graph"), ("pdl", "pdl = $pdl"), ("perfect_router", "perfect_router = $perfect_router"),
    ("payload_in_workspace", "payload_in_workspace = $payload_in_workspace"),
    ("low_precision_combine", "low_precision_combine = $low_precision_combine"),
)
KEY_VALUES = {"backend": "backend", "profile": "profile", "ep_size": "ep_size", "size": "local_batch_size", "op": "op",
              "quant": QUANT, "gpu": GPU}
LABELS = {"ep_size": "EP size", "size": "tokens", "quant": "quantization", "gpu": "GPU",
          "timing_method": "timing", "cuda_graph": "CUDA graph", "perfect_router": "perfect router",
          "payload_in_workspace": "payload in workspace", "low_precision_combine": "low-precision combine"}
# The night value (series_night.night_us) is the detector's: the slowest rank's median iteration,
# its mean without --iter_stats.
VISIBLE = "n.kind = 'nightly' AND NOT n.excluded"
KNOB_LABEL = ("concat_ws(' ', s.timing_method, CASE WHEN s.cuda_graph THEN 'graph' END, CASE WHEN s.pdl THEN 'pdl' END, "
              "CASE WHEN s.perfect_router THEN 'pr' END, CASE WHEN s.payload_in_workspace THEN 'piw' END, "
              "CASE WHEN s.low_precision_combine THEN 'lpc' END)")


def series_variables(names: tuple[str, ...]) -> list[dict]:
    """One variable per part of the key in `names`, each offering the values that the variables
    before it leave (read from `series`: one row per series, whatever the history's length)."""
    filters = dict(KEY_FILTERS)
    variables = []
    for i, name in enumerate(names):
        where = " AND ".join(filters[n] for n in names[:i])
        value = KEY_VALUES.get(name, name)
        variables.append(variable(name, LABELS.get(name, name),
                                  f"SELECT DISTINCT {value} FROM series{' WHERE ' + where if where else ''} ORDER BY 1"))
    return variables


def series_pks(names: tuple[str, ...]) -> str:
    """The series the variables `names` select, as a condition on `n.series_pk`."""
    filters = dict(KEY_FILTERS)
    return f"n.series_pk IN (SELECT series_pk FROM series WHERE {' AND '.join(filters[n] for n in names)})"


ALL = tuple(name for name, _ in KEY_FILTERS)
# The backend comparison: every key part but the backend and the token count.
COMPARED = tuple(n for n in ALL if n not in ("backend", "size"))


def variable(name: str, label: str, sql: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS, "query": sql, "definition": sql,
            "refresh": 1, "sort": 3 if name in ("ep_size", "size") else 1, "includeAll": False, "multi": False}


def target(sql: str, fmt: str = "time_series", ref: str = "A") -> dict:
    return {"refId": ref, "datasource": DS, "editorMode": "code", "format": fmt, "rawQuery": True, "rawSql": sql}


def panel(pid: int, title: str, kind: str, targets: list, grid: tuple, **extra) -> dict:
    x, y, w, h = grid
    return {"id": pid, "title": title, "type": kind, "datasource": DS, "targets": targets,
            "gridPos": {"x": x, "y": y, "w": w, "h": h}, **extra}


def dashboard(uid: str, title: str, panels: list, variables: list = (), annotations: list = (),
              time_from: str = "now-90d") -> dict:
    return {
        "uid": uid, "title": title, "tags": ["moecomm"], "schemaVersion": 41, "version": 1, "editable": False,
        "time": {"from": time_from, "to": "now"}, "timezone": "utc",
        "templating": {"list": list(variables)},
        "annotations": {"list": list(annotations)},
        "panels": panels,
    }


SERIES_VARIABLES = series_variables(ALL)

ALERT_ANNOTATION = {
    "name": "alerts", "datasource": DS, "enable": True, "iconColor": "red",
    "target": target(
        "SELECT r.run_at AS time, a.direction || ' ' || to_char(a.change_pct, 'SG990.0') || '% (alert #' || a.alert_id "
        "|| ', ' || a.state || '; last good ' || a.last_good_run_id || ')' AS text, a.state AS tags "
        "FROM alert a JOIN run r ON r.run_id = a.first_bad_run_id "
        "WHERE $__timeFilter(r.run_at) AND a.backend = '$backend' AND a.profile = '$profile' "
        "AND a.ep_size = $ep_size AND a.local_batch_size = $size AND a.op = '$op' "
        f"AND {QUANT.replace('quant_algo', 'a.quant_algo')} = '$quant' AND {GPU.replace('gpu_model', 'a.gpu_model')} = '$gpu' "
        "AND a.timing_method = '$timing_method' AND a.cuda_graph = $cuda_graph AND a.pdl = $pdl "
        "AND a.perfect_router = $perfect_router AND a.payload_in_workspace = $payload_in_workspace "
        "AND a.low_precision_combine = $low_precision_combine", fmt="table"),
}

SERIES = series_pks(ALL)
TITLE = "$backend $profile EP$ep_size, $size tokens, $op ($quant, $gpu, $timing_method)"

TREND = dashboard("moecomm-trend", "moecomm: series trend", variables=SERIES_VARIABLES,
                  annotations=[ALERT_ANNOTATION], panels=[
    panel(1, f"{TITLE}: the detector's night value and the median across ranks (band: within-night spread)",
          "timeseries", [target(
              "SELECT n.run_at AS time, n.night_us AS \"night value (detector)\", n.median_us AS \"median across ranks\", "
              "n.night_us - n.within_night_stdev_us AS \"spread low\", "
              "n.night_us + n.within_night_stdev_us AS \"spread high\" "
              f"FROM series_night n WHERE $__timeFilter(n.run_at) AND {SERIES} AND {VISIBLE} ORDER BY 1")],
          (0, 0, 24, 11),
          fieldConfig={"defaults": {"unit": "µs", "custom": {"lineWidth": 2, "showPoints": "always"}},
                       "overrides": [
                           {"matcher": {"id": "byName", "options": "spread high"},
                            "properties": [{"id": "custom.fillBelowTo", "value": "spread low"},
                                           {"id": "custom.lineWidth", "value": 0},
                                           {"id": "custom.showPoints", "value": "never"},
                                           {"id": "color", "value": {"mode": "fixed", "fixedColor": "#8ab8ff"}}]},
                           {"matcher": {"id": "byName", "options": "spread low"},
                            "properties": [{"id": "custom.lineWidth", "value": 0},
                                           {"id": "custom.showPoints", "value": "never"},
                                           {"id": "color", "value": {"mode": "fixed", "fixedColor": "#8ab8ff"}}]}]}),
    panel(2, "Per-rank median iteration (mean without --iter_stats), this series", "timeseries", [target(
        "SELECT n.run_at AS time, 'rank ' || (u.rank - 1) AS metric, COALESCE(u.median_us, u.mean_us) AS value "
        "FROM series_night n JOIN measurement m ON (m.job_pk, m.backend, m.local_batch_size, m.op) "
        "= (n.job_pk, n.backend, n.local_batch_size, n.op) "
        "CROSS JOIN LATERAL unnest(m.median_us, m.mean_us) WITH ORDINALITY AS u (median_us, mean_us, rank) "
        f"WHERE $__timeFilter(n.run_at) AND {SERIES} AND {VISIBLE} AND u.mean_us IS NOT NULL ORDER BY 1, 2")],
        (0, 11, 12, 9), fieldConfig={"defaults": {"unit": "µs"}, "overrides": []}),
    panel(3, "Per-rank skew: slowest / fastest rank (their means)", "timeseries", [target(
        "SELECT n.run_at AS time, n.slowest_rank_us / NULLIF(n.fastest_rank_us, 0) AS \"slowest / fastest\" "
        f"FROM series_night n WHERE $__timeFilter(n.run_at) AND {SERIES} AND {VISIBLE} ORDER BY 1")],
        (12, 11, 12, 9), fieldConfig={"defaults": {"unit": "none", "decimals": 3}, "overrides": []}),
])

LATEST = dashboard("moecomm-latest", "moecomm: latest night against its baseline", panels=[
    panel(1, "Every series of the latest run (the detector's night value) against the median of its 7 earlier "
             "nights, by change", "table", [target(
        "WITH latest AS (SELECT run_id, run_at FROM run WHERE kind = 'nightly' AND NOT excluded "
        "                ORDER BY run_at DESC, run_id DESC LIMIT 1) "
        "SELECT t.run_id, s.backend, s.profile, s.ep_size AS ep, s.local_batch_size AS tokens, s.op, "
        f"       {QUANT.replace('quant_algo', 's.quant_algo')} AS quant, {GPU.replace('gpu_model', 's.gpu_model')} AS gpu, "
        f"       {KNOB_LABEL} AS knobs, "
        "       t.night_us AS \"night µs\", b.baseline_us AS \"baseline µs\", "
        "       100.0 * (t.night_us - b.baseline_us) / b.baseline_us AS \"change %\" "
        "FROM latest l JOIN series_night t ON t.run_id = l.run_id JOIN series s USING (series_pk) "
        "CROSS JOIN LATERAL (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY e.night_us) AS baseline_us "
        "  FROM (SELECT n.night_us FROM series_night n WHERE n.series_pk = t.series_pk AND " + VISIBLE + " "
        "        AND n.run_at < l.run_at ORDER BY n.run_at DESC, n.run_id DESC LIMIT 7) e) b "
        "ORDER BY \"change %\" DESC NULLS LAST", fmt="table")], (0, 0, 24, 14),
        fieldConfig={"defaults": {"decimals": 2}, "overrides": [
            {"matcher": {"id": "byName", "options": "change %"},
             "properties": [{"id": "custom.cellOptions", "value": {"type": "color-background"}},
                            {"id": "thresholds", "value": {"mode": "absolute", "steps": [
                                {"color": "green", "value": None}, {"color": "yellow", "value": 2},
                                {"color": "red", "value": 5}]}}]}]}),
    panel(2, "Open and acknowledged alerts", "table", [target(
        "SELECT alert_id, state, direction, round(change_pct::numeric, 2) AS \"change %\", "
        "round(confidence::numeric, 4) AS confidence, backend, profile, ep_size AS ep, local_batch_size AS tokens, op, "
        f"{QUANT} AS quant, {GPU} AS gpu, {KNOB_LABEL.replace('s.', '')} AS knobs, "
        "last_good_run_id AS \"last good\", first_bad_run_id AS \"first bad\", provenance_diff::text AS \"provenance changed\" "
        "FROM alert WHERE state IN ('open', 'acknowledged') ORDER BY created_at DESC, abs(change_pct) DESC", fmt="table")],
        (0, 14, 24, 9)),
], time_from="now-30d")

COMPARED_SERIES = series_pks(COMPARED)
FASTEST = dashboard("moecomm-fastest", "moecomm: fastest backend by token count", variables=series_variables(COMPARED),
                    panels=[
    panel(1, "Fastest backend per token count, night by night ($profile EP$ep_size $op; the detector's night value)",
          "state-timeline", [target(
        "SELECT DISTINCT ON (n.run_at, n.local_batch_size) n.run_at AS time, "
        "n.local_batch_size::text || ' tokens' AS metric, n.backend AS value FROM series_night n "
        f"WHERE $__timeFilter(n.run_at) AND {COMPARED_SERIES} AND {VISIBLE} "
        "ORDER BY n.run_at, n.local_batch_size, n.night_us", fmt="table")], (0, 0, 24, 10),
        options={"showValue": "auto", "mergeValues": True, "rowHeight": 0.8}),
    panel(2, "Crossover on the latest night: every backend against token count ($profile EP$ep_size $op)",
          "xychart", [target(
        "SELECT n.local_batch_size AS tokens, n.backend, n.night_us AS \"night µs\" FROM series_night n "
        "WHERE n.run_id = (SELECT run_id FROM run WHERE kind = 'nightly' AND NOT excluded "
        "                  ORDER BY run_at DESC, run_id DESC LIMIT 1) "
        f"AND {COMPARED_SERIES} ORDER BY n.backend, tokens", fmt="table")],
        (0, 10, 12, 10)),
    panel(3, "Winner and margin per night ($profile EP$ep_size $op)", "table", [target(
        "SELECT n.run_at AS night, n.local_batch_size AS tokens, "
        "(array_agg(n.backend ORDER BY n.night_us))[1] AS fastest, "
        "(array_agg(n.backend ORDER BY n.night_us))[2] AS \"runner-up\", "
        "100.0 * ((array_agg(n.night_us ORDER BY n.night_us))[2] / min(n.night_us) - 1) AS \"margin %\" "
        f"FROM series_night n WHERE $__timeFilter(n.run_at) AND {COMPARED_SERIES} AND {VISIBLE} "
        "GROUP BY n.run_at, n.local_batch_size ORDER BY n.run_at DESC, tokens", fmt="table")],
        (12, 10, 12, 10), fieldConfig={"defaults": {"decimals": 1}, "overrides": []}),
])


def main() -> None:
    out = Path(__file__).parent / "dashboards"
    out.mkdir(exist_ok=True)
    for board in (TREND, LATEST, FASTEST):
        (out / f"{board['uid']}.json").write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
