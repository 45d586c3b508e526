"""The nightly report: `index.html` and SVG plots beside it, for anyone without dashboard access.

Three sections, all read from the series' nights (`series`, `series_night`: the detector's night
value) and the alerts:

* the night against its history: per (profile, EP size, backend, op), the slowest rank's time of
  every token count night by night, the report's night marked, and a table of every series'
  time against its baseline (the median of up to 7 earlier nights), sorted by change;
* the alerts raised by this run (or, with none, the open ones), each series plotted around its
  change with the baseline and the level after it;
* the backend comparison: per (profile, EP size, op), time against token count for every backend,
  on the report's night (where the lines cross is where one backend overtakes another).

Matplotlib draws the plots (SVG, their text kept as text); the page has no script and no
external resource, so it opens from a file or any static web server. Names in plot labels come
from benchmark output: their `$` are escaped (`_label`), so matplotlib never reads them as
mathtext.
"""

from __future__ import annotations

import html
import logging
import math
import multiprocessing
import os
import statistics
import textwrap
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks import display
from moecomm_tasks.errors import MoecommError
from moecomm_tasks.knobs import KNOB_FIELDS
from moecomm_tasks.names import safe_name
from moecomm_tasks.query import knob_label, spread_columns
from moecomm_tasks.series import SERIES_KEY

log = logging.getLogger(__name__)

HISTORY_NIGHTS = 30
RENDER_TIMEOUT_S = 600  # a batch of plots in a worker process, at most
RENDER_BATCH = 3  # plots a worker process draws per task
BASELINE_NIGHTS = 7


@dataclass(frozen=True)
class Point:
    run_id: str
    run_at: Any
    value: float
    half_rank_range_us: float | None = None
    within_night_stdev_us: float | None = None

    @property
    def spread(self) -> float | None:
        """The night's within-night spread (`display.spread_us`)."""
        return display.spread_us(self.half_rank_range_us, self.within_night_stdev_us)


@dataclass(frozen=True)
class ReportRow:
    """One series in the report's table: this night's value and the baseline, each with its
    within-night spread, the change, and whether it goes beyond both spreads (`display`)."""

    profile: str
    ep_size: int
    backend: str
    size: int
    op: str
    value_us: float
    spread_us: float | None
    baseline_us: float | None
    baseline_spread_us: float | None
    change_pct: float | None
    beyond_noise: bool


def _latest_run(conn: sa.Connection) -> str:
    run = conn.execute(sa.text(
        "SELECT run_id FROM run WHERE kind = 'nightly' ORDER BY run_at DESC, run_id DESC LIMIT 1")).scalar()
    if run is None:
        raise MoecommError("no runs in the database: load or run something first")
    return run


def _history(conn: sa.Connection, run_id: str) -> dict[tuple, list[Point]]:
    """Every series measured in `run_id`, with up to HISTORY_NIGHTS nights up to and including it
    (each series' last nights through its index: never the whole history). Keyed by (profile,
    EP size, backend, op, size, quantization, GPU model, knobs)."""
    rows = conn.execute(sa.text(f"""
        SELECT s.series_pk, s.backend, s.profile, s.ep_size, s.quant_algo, s.local_batch_size, s.op, s.gpu_model,
               {', '.join('s.' + k for k in KNOB_FIELDS)}, h.run_id, h.run_at, h.night_us AS value,
               h.half_rank_range_us, h.within_night_stdev_us
        FROM series_night t
        JOIN series s USING (series_pk)
        CROSS JOIN LATERAL (
            SELECT n.run_id, n.run_at, n.night_us, {spread_columns("n")}
            FROM series_night n
            WHERE n.series_pk = t.series_pk AND n.kind = 'nightly' AND NOT n.excluded AND n.run_at <= t.run_at
            ORDER BY n.run_at DESC, n.run_id DESC LIMIT :keep) h
        WHERE t.run_id = :run AND t.kind = 'nightly'
        ORDER BY s.profile, s.ep_size, s.backend, s.op, s.local_batch_size, {', '.join('s.' + k for k in KNOB_FIELDS)},
                 s.series_pk, h.run_at, h.run_id
    """), {"run": run_id, "keep": HISTORY_NIGHTS}).all()
    series: dict[tuple, list[Point]] = defaultdict(list)
    current, key = None, None
    for r in rows:  # a series' nights one after the other: its key (and knobs' label) once
        if r.series_pk != current:
            current = r.series_pk
            key = (r.profile, r.ep_size, r.backend, r.op, r.local_batch_size, r.quant_algo, r.gpu_model,
                   knob_label(r))
        series[key].append(Point(r.run_id, r.run_at, float(r.value), r.half_rank_range_us, r.within_night_stdev_us))
    return dict(series)


def _alerts(conn: sa.Connection, run_id: str) -> tuple[str, list[sa.Row]]:
    rows = conn.execute(sa.text("SELECT * FROM alert WHERE detected_run_id = :run ORDER BY abs(change_pct) DESC"),
                        {"run": run_id}).all()
    if rows:
        return "raised by this run", rows
    return "open (none raised by this run)", conn.execute(sa.text(
        "SELECT * FROM alert WHERE state = 'open' ORDER BY created_at DESC, abs(change_pct) DESC LIMIT 20")).all()


def _alert_series(conn: sa.Connection, alert: sa.Row) -> list[Point]:
    rows = conn.execute(sa.text(f"""
        SELECT n.run_id, n.run_at, n.night_us AS value
        FROM series s JOIN series_night n USING (series_pk)
        WHERE {' AND '.join(f's.{k} = :{k}' for k in SERIES_KEY)} AND n.kind = 'nightly' AND NOT n.excluded
        ORDER BY n.run_at, n.run_id"""), {**dict(alert._mapping), "quant_algo": alert.quant_algo or "",
                                           "gpu_model": alert.gpu_model or ""}).all()
    return [Point(r.run_id, r.run_at, float(r.value)) for r in rows]


def _label(text: str) -> str:
    """`text` as matplotlib shows it literally: a `$` pair would start mathtext (and a bad command
    in it would fail the whole report)."""
    return text.replace("$", r"\$")


def _date_axis(axis, nights: list) -> None:
    """Nights on a date axis: a few ticks, concise labels (cheaper than rotating many). Nights
    loaded within an hour (or one night) are ticked where they are: matplotlib's date locators
    cannot pick an interval for so short a range, and warn."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DateFormatter, date2num
    from matplotlib.ticker import FixedLocator

    if nights and (max(nights) - min(nights)).total_seconds() < 3600:
        axis.set_major_locator(FixedLocator(date2num(sorted(set(nights)))[:5]))
        axis.set_major_formatter(DateFormatter("%Y-%m-%d %H:%M"))
        return
    locator = AutoDateLocator(minticks=2, maxticks=5)
    axis.set_major_locator(locator)
    axis.set_major_formatter(ConciseDateFormatter(locator))


# A plot's title wraps at this many characters (figures are 6.4 inches wide, titles 9 points);
# past two lines it is set smaller still, so that it never runs off the figure.
TITLE_CHARS = 72


def _title(ax, text: str) -> None:
    lines = textwrap.wrap(_label(text), TITLE_CHARS, break_on_hyphens=False) or [""]
    ax.set_title("\n".join(lines), fontsize=9 if len(lines) <= 2 else 7.5, y=1.0, pad=4)


def _token_axis(ax, sizes: list[int]) -> None:
    """A log2 token axis labelled with the sizes themselves (32, 64, 128), not powers of two."""
    from matplotlib.ticker import FixedLocator, FixedFormatter, NullLocator

    ticks: list[int] = []
    sizes = sorted(set(sizes))
    # At most about eight labels, none closer than an eighth of the axis to the one before it
    # (sizes like 128, 256, 384, ... crowd at the right of a log axis).
    gap = math.log2(sizes[-1] / sizes[0]) / 8 if sizes and sizes[0] > 0 else 0.0
    for size in sizes:
        if not ticks or math.log2(size / ticks[-1]) >= gap:
            ticks.append(size)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([str(t) for t in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())


def _us_axis(ax) -> None:
    """A log µs axis labelled in plain numbers (20, 50, 100, 200), not 2×10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _size_colours(sizes: set[int]) -> dict[int, str]:
    """A colour per token count, from small (dark) to large (light) along viridis."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    ordered = sorted(sizes)
    cmap = colormaps["viridis"]
    return {size: to_hex(cmap(0.9 * i / max(len(ordered) - 1, 1))) for i, size in enumerate(ordered)}


def _backend_colours(backends: set[str]) -> dict[str, str]:
    """A colour per backend (with its knobs), from matplotlib's tab10 (tab20 past ten backends)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    ordered = sorted(backends)
    cmap = colormaps["tab10" if len(ordered) <= 10 else "tab20"]
    return {backend: to_hex(cmap(i % cmap.N)) for i, backend in enumerate(ordered)}


def _slug(*parts: Any) -> str:
    return safe_name("_".join(str(p) for p in parts), "-").strip("-")


def _baseline(points: list[Point]) -> float | None:
    earlier = [p.value for p in points[:-1][-BASELINE_NIGHTS:]]
    return statistics.median(earlier) if earlier else None


class _Canvas:
    """One figure a worker draws every plot of one kind on: its axes, ticks and lines are made
    once (most of a plot's cost), then only their data, limits and title change. Lines are kept
    by colour (each colour means one token count, or one backend, on every plot)."""

    def __init__(self, setup) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.fig, self.ax = plt.subplots(figsize=(6.4, 3.0))
        # Fixed margins, not tight_layout: measuring every label to fit them cost a second draw.
        self.fig.subplots_adjust(left=0.12, right=0.98, bottom=0.14, top=0.89)
        self.ax.set_ylabel("slowest rank, µs")
        self.lines: dict[str, Any] = {}
        self.extra: dict[str, Any] = setup(self.ax)

    def draw(self, lines: list[tuple[str, list, list[float]]], **style) -> None:
        """Show these lines (colour, xs, ys) and no other."""
        for line in self.lines.values():
            line.set_visible(False)
        for colour, xs, ys in lines:
            if colour not in self.lines:
                self.lines[colour], = self.ax.plot(xs, ys, color=colour, **style)
            self.lines[colour].set_data(xs, ys)
            self.lines[colour].set_visible(True)

    def save(self, path: Path, title: str) -> None:
        self.ax.relim(visible_only=True)
        self.ax.autoscale_view()
        _title(self.ax, title)
        # SVG with its text as text: sharp at any width, a third cheaper than rasterising a PNG,
        # and the browser finds a backend's name in the plots' titles. No date and fixed ids: the
        # same plot is the same file, whichever process drew it.
        with matplotlib_settings():
            self.fig.savefig(path, format="svg", metadata={"Date": None})

    def close(self) -> None:
        import matplotlib.pyplot as plt

        plt.close(self.fig)


_CANVASES: dict[str, _Canvas] = {}  # this process's, by kind of plot


def matplotlib_settings():
    """The settings the plots are written with: text as <text> elements, fixed element ids."""
    import matplotlib

    return matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "moecomm"})


def _canvas(kind: str, setup) -> _Canvas:
    if kind not in _CANVASES:
        _CANVASES[kind] = _Canvas(setup)
    return _CANVASES[kind]


def _history_setup(ax) -> dict[str, Any]:
    _us_axis(ax)
    return {"dots": None}


def _plot_history(path: Path, title: str, lines: list[tuple[str, list, list[float]]]) -> None:
    """Each token count's nights (colour, nights, µs), this night marked by a dot."""
    from matplotlib.dates import date2num

    canvas = _canvas("history", _history_setup)
    canvas.draw(lines, linewidth=1.2)
    last = [(xs[-1], ys[-1], colour) for colour, xs, ys in lines]
    if canvas.extra["dots"] is None:
        canvas.extra["dots"] = canvas.ax.scatter([x for x, _, _ in last], [y for _, y, _ in last], s=30, zorder=3)
    canvas.extra["dots"].set_offsets([(date2num(x), y) for x, y, _ in last])
    canvas.extra["dots"].set_facecolors([c for _, _, c in last])
    _date_axis(canvas.ax.xaxis, [x for _, xs, _ in lines for x in xs])
    canvas.save(path, title)


def _alert_setup(ax) -> dict[str, Any]:
    return {"bad": ax.axvline(0, color="red", linestyle="--"),
            "baseline": ax.axhline(1, color="grey", linestyle=":"),
            "after": ax.axhline(1, color="red", linestyle=":")}


def _plot_alert(path: Path, title: str, xs: list, ys: list[float], bad: Any, baseline: float,
                after: float) -> None:
    """One series around its change (black): its first bad night (dashed red), the baseline
    (dotted grey) and the level after (dotted red)."""
    from matplotlib.dates import date2num

    canvas = _canvas("alert", _alert_setup)
    canvas.draw([("black", xs, ys)], marker=".")
    canvas.extra["bad"].set_xdata([date2num(bad)] * 2)
    canvas.extra["baseline"].set_ydata([baseline] * 2)
    canvas.extra["after"].set_ydata([after] * 2)
    _date_axis(canvas.ax.xaxis, xs)
    canvas.save(path, title)


def _backends_setup(ax) -> dict[str, Any]:
    _us_axis(ax)
    ax.set_xlabel("tokens per rank")
    return {}


def _plot_backends(path: Path, title: str, lines: list[tuple[str, list[int], list[float]]]) -> None:
    """Every backend's time against token count on one night (its colour, sizes, µs)."""
    canvas = _canvas("backends", _backends_setup)
    canvas.draw(lines, marker="o")
    _token_axis(canvas.ax, [size for _, sizes, _ in lines for size in sizes])
    canvas.save(path, title)


def _draw(plots: list[tuple]) -> None:
    """Draw these plots on this process's canvases (kept for its next batch)."""
    for plot, args in plots:
        plot(*args)


def _close_canvases() -> None:
    for canvas in _CANVASES.values():
        canvas.close()
    _CANVASES.clear()


def _workers(plots: int) -> int:
    """Processes that draw the plots, this one included: MOECOMM_REPORT_WORKERS, else one per CPU
    this process may use (at most 4), and this one alone for a few plots."""
    setting = os.environ.get("MOECOMM_REPORT_WORKERS", "").strip()
    if setting:
        try:
            return max(1, min(int(setting), 16))
        except ValueError:
            raise MoecommError(f"MOECOMM_REPORT_WORKERS={setting!r}: a number of processes (1 to 16)") from None
    return 1 if plots < 12 else max(1, min(len(os.sched_getaffinity(0)), 4))


def _warm() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def _start_workers(plots: int) -> ProcessPoolExecutor | None:
    """The worker processes that draw about `plots` plots beside this one (`_workers`), started
    now so that they import matplotlib while this process reads the database; None: this process
    draws them alone."""
    workers = _workers(plots) - 1
    if workers < 1 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    try:
        # Forked, not spawned: a spawned child imports the caller's main module again, which a
        # script without a main guard cannot bear. A child only draws: it never touches this
        # process's connections or threads (the database watchdog), and leaves with os._exit.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            for _ in range(workers):
                pool.submit(_warm)
        return pool
    except (AssertionError, OSError) as error:
        # No child processes here (a daemonic worker process, a process limit): draw them in this one.
        log.warning("report: drawing the plots in this process (%s)", error or type(error).__name__)
        return None


def _render(plots: list[tuple], workers: ProcessPoolExecutor | None) -> None:
    """Draw `plots` ((function, args) each), in this process and in the worker processes of
    `workers` (`_start_workers`) if any: a plot costs tens of milliseconds of matplotlib, and a
    year's matrix has about a hundred. The plots go to the workers in small batches; this process
    draws the batches no worker has taken yet, from the last one back, so that every process
    stays busy to the end whatever each one had done before (this one read the database)."""
    try:
        _render_with(plots, workers)
    finally:
        _close_canvases()


def _render_with(plots: list[tuple], pool: ProcessPoolExecutor | None) -> None:
    if pool is None:
        _draw(plots)
        return
    batches = [plots[i:i + RENDER_BATCH] for i in range(0, len(plots), RENDER_BATCH)]
    try:
        running = [(pool.submit(_draw, batch), batch) for batch in batches]
    except (OSError, BrokenProcessPool) as error:
        log.warning("report: drawing the plots in this process (%s)", error or type(error).__name__)
        _draw(plots)
        return
    for done, batch in reversed(running):
        if done.cancel():  # no worker has taken it: draw it here
            _draw(batch)
    for done, batch in running:
        if done.cancelled():
            continue
        try:
            done.result(timeout=RENDER_TIMEOUT_S)
        except (OSError, BrokenProcessPool) as error:
            log.warning("report: drawing the plots in this process (%s)", error or type(error).__name__)
            _draw(batch)


def write_report(engine: Engine, out: str | Path, run_id: str | None = None) -> Path:
    """Write the report of `run_id` (default: the latest run) into `out`; return index.html's path."""
    with ExitStack() as cleanup:  # the worker processes, however this ends
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with engine.connect() as conn:
            run_id = run_id or _latest_run(conn)
            run = conn.execute(sa.text("SELECT run_id, run_at FROM run WHERE run_id = :r"), {"r": run_id}).first()
            if run is None:
                raise MoecommError(f"no run {run_id!r} (see: moecomm runs)")
            # As many history plots as the night has (profile, EP, backend and knobs, op); about a
            # fifth more for the alerts and the backend comparison.
            groups = conn.execute(sa.text(f"""
                SELECT count(*) FROM (SELECT DISTINCT profile, ep_size, backend, op, {', '.join(KNOB_FIELDS)}
                                      FROM series_night WHERE run_id = :r AND kind = 'nightly') g"""),
                                  {"r": run_id}).scalar()
            workers = _start_workers(groups + groups // 5)
            if workers is not None:
                cleanup.callback(workers.shutdown, cancel_futures=True)
            history = _history(conn, run_id)
            alert_title, alerts = _alerts(conn, run_id)
            alert_points = [(a, _alert_series(conn, a)) for a in alerts]

        images: dict[str, list[tuple[str, str]]] = {"history": [], "alerts": [], "backends": []}
        plots: list[tuple] = []

        def plot(section: str, name: str, caption: str, function, *args) -> None:
            plots.append((function, (out / name, *args)))
            images[section].append((name, caption))

        # The night against its history. One colour per token count (below: per backend), the same
        # in every plot, keyed once on the page: a legend in each plot cost more than the rest of it.
        groups: dict[tuple, dict[int, list[Point]]] = defaultdict(dict)
        for (profile, ep, backend, op, size, _quant, _gpu, knobs), points in history.items():
            groups[(profile, ep, f"{backend} [{knobs}]", op)][size] = points
        colours = _size_colours({size for by_size in groups.values() for size in by_size})
        for (profile, ep, backend, op), by_size in sorted(groups.items()):
            plot("history", f"history_{_slug(profile, ep, backend, op)}.svg",
                 f"{profile}, EP {ep}, {backend}, {op}: the last {HISTORY_NIGHTS} nights (dot: this night)",
                 _plot_history, f"{profile} EP{ep} {backend} {op}",
                 [(colours[size], [p.run_at for p in points], [p.value for p in points])
                  for size, points in sorted(by_size.items())])

        # The alerts, each series around its change.
        for alert, points in alert_points:
            bad = next((i for i, p in enumerate(points) if p.run_id == alert.first_bad_run_id), None)
            if bad is None:
                continue
            window = points[max(0, bad - 21):bad + 14]
            plot("alerts", f"alert_{alert.alert_id}.svg",
                 f"alert #{alert.alert_id} ({alert.state}): {alert.change_pct:+.2f}%, confidence {alert.confidence:.4f}, "
                 f"baseline {alert.baseline_us:.1f} µs, after {alert.after_us:.1f} µs, "
                 f"last good {alert.last_good_run_id}, first bad {alert.first_bad_run_id}",
                 _plot_alert, f"#{alert.alert_id} {alert.direction} {alert.change_pct:+.1f}%: {alert.backend} "
                              f"{alert.profile} EP{alert.ep_size} {alert.local_batch_size} tokens {alert.op}",
                 [p.run_at for p in window], [p.value for p in window], points[bad].run_at,
                 alert.baseline_us, alert.after_us)

        # The backend comparison on this night.
        comparison: dict[tuple, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
        for (profile, ep, backend, op, size, _quant, _gpu, knobs), points in history.items():
            if points[-1].run_id == run_id:
                comparison[(profile, ep, op)][f"{backend} [{knobs}]"].append((size, points[-1].value))
        backend_colours = _backend_colours({backend for by_backend in comparison.values() for backend in by_backend})
        for (profile, ep, op), by_backend in sorted(comparison.items()):
            plot("backends", f"backends_{_slug(profile, ep, op)}.svg",
                 f"{profile}, EP {ep}, {op}: every backend against token count, this night",
                 _plot_backends, f"{profile} EP{ep} {op}: backends on {run_id}",
                 [(backend_colours[backend], [v[0] for v in sorted(values)], [v[1] for v in sorted(values)])
                  for backend, values in sorted(by_backend.items())])
        _render(plots, workers)

        table = []
        for key, points in history.items():
            if points[-1].run_id != run_id:
                continue
            profile, ep, backend, op, size, _quant, _gpu, knobs = key
            base = _baseline(points)
            change = None if base is None else 100.0 * (points[-1].value - base) / base
            spread = points[-1].spread
            # The baseline's spread: the typical (median) spread of the nights it is made of.
            known = [p.spread for p in points[:-1][-BASELINE_NIGHTS:] if p.spread is not None]
            base_spread = statistics.median(known) if known else None
            marked = display.beyond_noise(points[-1].value, spread, base, base_spread)
            table.append(ReportRow(profile, ep, f"{backend} [{knobs}]", size, op, points[-1].value, spread, base,
                                   base_spread, change, bool(marked)))
        table.sort(key=lambda r: -(r.change_pct if r.change_pct is not None else float("-inf")))

        index = out / "index.html"
        index.write_text(_page(run_id, str(run.run_at), table, images, alert_title, len(alerts), colours,
                               backend_colours), encoding="utf-8")
        return index


def _page(run_id: str, run_at: str, table: list[ReportRow], images: dict, alert_title: str, n_alerts: int,
          colours: dict[int, str], backend_colours: dict[str, str]) -> str:
    e = html.escape

    def key(colours: dict) -> str:
        return " ".join(f'<span class="key"><span style="color:{c}">&#9632;</span> {e(str(name))}</span>'
                        for name, c in sorted(colours.items()))

    def figures(section: str) -> str:
        if not images[section]:
            return "<p>None.</p>"
        return '<div class="figures">\n' + "\n".join(
            f'<figure><img src="{e(name)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>'
            for name, caption in images[section]) + "\n</div>"

    def fmt(value: float | None, pattern: str) -> str:
        return "–" if value is None else pattern.format(value)

    def spread(value: float | None) -> str:
        return "" if value is None else f' <span class="spread">±{value:.2f}</span>'

    rows = "\n".join(
        f'<tr{" class=moved" if r.beyond_noise else ""}><td>{e(r.profile)}</td><td>{r.ep_size}</td>'
        f"<td>{e(r.backend)}</td><td>{r.size}</td><td>{e(r.op)}</td>"
        f"<td>{r.value_us:.2f}{spread(r.spread_us)}</td>"
        f"<td>{fmt(r.baseline_us, '{:.2f}')}{spread(r.baseline_spread_us)}</td>"
        f"<td>{fmt(r.change_pct, '{:+.1f}%')}{display.MARK if r.beyond_noise else ''}</td></tr>"
        for r in table)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moecomm nightly report: {e(run_id)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: sans-serif; margin: 1em 2vw; }}
h1, h2, p {{ overflow-wrap: anywhere; }}
table {{ border-collapse: collapse; font-size: 0.85em; width: 100%; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
td:nth-child(-n+5), th:nth-child(-n+5) {{ text-align: left; }}
tr.moved td {{ font-weight: bold; background: #fff4e0; }}
.spread {{ color: #666; font-size: 0.9em; }}
.figures {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 560px), 1fr)); gap: 1em; }}
figure {{ margin: 0; }}
figure img {{ width: 100%; height: auto; }}
figcaption {{ font-size: 0.8em; color: #444; }}
.key {{ white-space: nowrap; margin-right: 0.6em; }}
</style></head><body>
<h1>moecomm nightly report</h1>
<p>Run <b>{e(run_id)}</b> at {e(run_at)}. Times are the slowest rank's (its median iteration where
the run had <code>--iter_stats</code>, else its mean), in µs; the baseline is the median of up to
{BASELINE_NIGHTS} earlier nights. ± is a night's spread (half its ranks' range, or its iterations'
standard deviation if larger; for the baseline, the median of its nights' spreads); a change
marked {display.MARK} (and in bold) is larger than this night's and the baseline's spreads
together.</p>
<h2>Alerts {e(alert_title)}: {n_alerts}</h2>
<p>Each alert's series (black) around its first bad night (dashed red), with the baseline (dotted
grey) and the level after the change (dotted red).</p>
{figures("alerts")}
<h2>This night against its history</h2>
<table><tr><th>profile</th><th>EP</th><th>backend</th><th>tokens</th><th>op</th><th>µs</th><th>baseline µs</th><th>change</th></tr>
{rows}
</table>
<p>Token counts in the plots below: {key(colours)}</p>
{figures("history")}
<h2>Backends compared</h2>
<p>Backends in the plots below: {key(backend_colours)}</p>
{figures("backends")}
</body></html>
"""
