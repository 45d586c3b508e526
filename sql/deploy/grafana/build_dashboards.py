"""Writes the Grafana dashboards (dashboards/*.json) from the SQL below; run it after editing:

    python sql/deploy/grafana/build_dashboards.py

Every query reads the public SQL interface (README, "The SQL interface"); tests/integration/
test_dashboards.py substitutes Grafana's macros and variables and runs each against PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "grafana-postgresql-datasource", "uid": "moecomm-pg"}
SERIES_WHERE = ("backend = '$backend' AND profile = '$profile' AND ep_size = $ep_size "
                "AND local_batch_size = $size AND op = '$op'")


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


SERIES_VARIABLES = [
    variable("backend", "backend", "SELECT DISTINCT backend FROM nightly_series ORDER BY 1"),
    variable("profile", "profile", "SELECT DISTINCT profile FROM nightly_series WHERE backend = '$backend' ORDER BY 1"),
    variable("ep_size", "EP size", "SELECT DISTINCT ep_size FROM nightly_series "
                                   "WHERE backend = '$backend' AND profile = '$profile' ORDER BY 1"),
    variable("size", "tokens", "SELECT DISTINCT local_batch_size FROM nightly_series "
                               "WHERE backend = '$backend' AND profile = '$profile' AND ep_size = $ep_size ORDER BY 1"),
    variable("op", "op", "SELECT DISTINCT op FROM nightly_series WHERE backend = '$backend' AND profile = '$profile' "
                         "AND ep_size = $ep_size AND local_batch_size = $size ORDER BY 1"),
]

ALERT_ANNOTATION = {
    "name": "alerts", "datasource": DS, "enable": True, "iconColor": "red",
    "target": target(
        "SELECT r.run_at AS time, a.direction || ' ' || to_char(a.change_pct, 'SG990.0') || '% (alert #' || a.alert_id "
        "|| ', ' || a.state || '; last good ' || a.last_good_run_id || ')' AS text, a.state AS tags "
        "FROM alert a JOIN run r ON r.run_id = a.first_bad_run_id "
        "WHERE $__timeFilter(r.run_at) AND a.backend = '$backend' AND a.profile = '$profile' "
        "AND a.ep_size = $ep_size AND a.local_batch_size = $size AND a.op = '$op'", fmt="table"),
}

TREND = dashboard("moecomm-trend", "moecomm: series trend", variables=SERIES_VARIABLES,
                  annotations=[ALERT_ANNOTATION], panels=[
    panel(1, "$backend $profile EP$ep_size, $size tokens, $op: median and slowest rank (band: within-night spread)",
          "timeseries", [target(
              "SELECT run_at AS time, median_us AS \"median across ranks\", slowest_rank_us AS \"slowest rank\", "
              "slowest_rank_us - within_night_stdev_us AS \"spread low\", "
              "slowest_rank_us + within_night_stdev_us AS \"spread high\" "
              f"FROM nightly_series WHERE $__timeFilter(run_at) AND {SERIES_WHERE} AND NOT excluded ORDER BY 1")],
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
    panel(2, "Per-rank mean, this series", "timeseries", [target(
        "SELECT run_at AS time, 'rank ' || rank AS metric, mean_us AS value FROM measurement_flat "
        f"WHERE $__timeFilter(run_at) AND {SERIES_WHERE} AND NOT excluded ORDER BY 1, 2")],
        (0, 11, 12, 9), fieldConfig={"defaults": {"unit": "µs"}, "overrides": []}),
    panel(3, "Per-rank skew: slowest / fastest rank", "timeseries", [target(
        "SELECT run_at AS time, slowest_rank_us / NULLIF(fastest_rank_us, 0) AS \"slowest / fastest\" "
        f"FROM nightly_series WHERE $__timeFilter(run_at) AND {SERIES_WHERE} AND NOT excluded ORDER BY 1")],
        (12, 11, 12, 9), fieldConfig={"defaults": {"unit": "none", "decimals": 3}, "overrides": []}),
])

LATEST = dashboard("moecomm-latest", "moecomm: latest night against its baseline", panels=[
    panel(1, "Every series of the latest run against the median of its 7 earlier nights, by change", "table", [target(
        "WITH latest AS (SELECT run_id, run_at FROM run WHERE NOT excluded ORDER BY run_at DESC LIMIT 1), "
        "now_ AS (SELECT n.* FROM nightly_series n JOIN latest l USING (run_id)), "
        "base AS (SELECT b.backend, b.profile, b.ep_size, b.local_batch_size, b.op, "
        "         percentile_cont(0.5) WITHIN GROUP (ORDER BY b.slowest_rank_us) AS baseline_us "
        "  FROM (SELECT n.*, row_number() OVER (PARTITION BY n.backend, n.profile, n.ep_size, n.local_batch_size, n.op "
        "                                        ORDER BY n.run_at DESC) AS k "
        "        FROM nightly_series n, latest l WHERE n.run_at < l.run_at AND NOT n.excluded) b "
        "  WHERE b.k <= 7 GROUP BY 1, 2, 3, 4, 5) "
        "SELECT now_.run_id, now_.backend, now_.profile, now_.ep_size AS ep, now_.local_batch_size AS tokens, now_.op, "
        "       now_.slowest_rank_us AS \"slowest rank µs\", base.baseline_us AS \"baseline µs\", "
        "       100.0 * (now_.slowest_rank_us - base.baseline_us) / base.baseline_us AS \"change %\" "
        "FROM now_ LEFT JOIN base USING (backend, profile, ep_size, local_batch_size, op) "
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
        "last_good_run_id AS \"last good\", first_bad_run_id AS \"first bad\", provenance_diff::text AS \"provenance changed\" "
        "FROM alert WHERE state IN ('open', 'acknowledged') ORDER BY created_at DESC, abs(change_pct) DESC", fmt="table")],
        (0, 14, 24, 9)),
], time_from="now-30d")

FASTEST = dashboard("moecomm-fastest", "moecomm: fastest backend by token count", variables=[
    variable("profile", "profile", "SELECT DISTINCT profile FROM nightly_series ORDER BY 1"),
    variable("ep_size", "EP size", "SELECT DISTINCT ep_size FROM nightly_series WHERE profile = '$profile' ORDER BY 1"),
    variable("op", "op", "SELECT DISTINCT op FROM nightly_series WHERE profile = '$profile' ORDER BY 1"),
], panels=[
    panel(1, "Fastest backend per token count, night by night ($profile EP$ep_size $op)", "state-timeline", [target(
        "SELECT DISTINCT ON (run_at, local_batch_size) run_at AS time, local_batch_size::text || ' tokens' AS metric, "
        "backend AS value FROM nightly_series "
        "WHERE $__timeFilter(run_at) AND profile = '$profile' AND ep_size = $ep_size AND op = '$op' AND NOT excluded "
        "ORDER BY run_at, local_batch_size, slowest_rank_us", fmt="table")], (0, 0, 24, 10),
        options={"showValue": "auto", "mergeValues": True, "rowHeight": 0.8}),
    panel(2, "Crossover on the latest night: every backend against token count ($profile EP$ep_size $op)",
          "xychart", [target(
        "SELECT local_batch_size AS tokens, backend, slowest_rank_us AS \"slowest rank µs\" FROM nightly_series "
        "WHERE run_id = (SELECT run_id FROM run WHERE NOT excluded ORDER BY run_at DESC LIMIT 1) "
        "AND profile = '$profile' AND ep_size = $ep_size AND op = '$op' ORDER BY backend, tokens", fmt="table")],
        (0, 10, 12, 10)),
    panel(3, "Winner and margin per night ($profile EP$ep_size $op)", "table", [target(
        "SELECT run_at AS night, local_batch_size AS tokens, "
        "(array_agg(backend ORDER BY slowest_rank_us))[1] AS fastest, "
        "(array_agg(backend ORDER BY slowest_rank_us))[2] AS \"runner-up\", "
        "100.0 * ((array_agg(slowest_rank_us ORDER BY slowest_rank_us))[2] / min(slowest_rank_us) - 1) AS \"margin %\" "
        "FROM nightly_series WHERE $__timeFilter(run_at) AND profile = '$profile' AND ep_size = $ep_size "
        "AND op = '$op' AND NOT excluded GROUP BY run_at, local_batch_size ORDER BY run_at DESC, tokens", fmt="table")],
        (12, 10, 12, 10), fieldConfig={"defaults": {"decimals": 1}, "overrides": []}),
])


def main() -> None:
    out = Path(__file__).parent / "dashboards"
    out.mkdir(exist_ok=True)
    for board in (TREND, LATEST, FASTEST):
        (out / f"{board['uid']}.json").write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
