"""Device trace files: a documented, safe equivalent of FedScale's pickled traces.

FedScale ships device capabilities as a pickle ``{client_id: {"computation": ms_per_sample,
"communication": kbps}}`` and availability as a pickle ``{client_id: {"active": [t...],
"inactive": [t...], "finish_time": s, "duration": s}}``. Unpickling runs arbitrary code, so
fedloom never reads pickles: ``convert_fedscale`` maps the already-loaded dicts, and trace
files use the text format below (see also ``docs/traces.md``).

JSON Lines (``.jsonl``): one JSON object per client per line; blank lines are skipped::

    {"client": 17, "compute_ms_per_sample": 43.1, "up_kbps": 2310.0, "down_kbps": 9100.0,
     "latency_ms": 40, "active": [[0, 3600], [7200, 9000]], "period": 86400}

=======================  ========  ================================================
field                    required  meaning (default)
=======================  ========  ================================================
client                   yes       integer id >= 0, unique in the file
compute_ms_per_sample    yes       forward + backward time per training sample, > 0
up_kbps, down_kbps       one       link rates in kbit/s, > 0; if only one is given
                                   it is used for both directions (FedScale's single
                                   "communication" rate)
latency_ms               no        one-way latency added once per transfer (0)
loss_rate                no        packet loss in [0, 1), throughput * (1 - loss) (0)
failure_prob             no        chance a dispatched task crashes, in [0, 1) (0)
memory_mb                no        device memory, > 0 (unlimited)
tier                     no        integer device-class index, -1 for none (-1)
active                   no        sorted, non-overlapping ``[start, end]`` pairs in
                                   seconds: the client is online in ``[start, end)``;
                                   ``[]`` = never online; absent = always online. The
                                   last end may be ``null`` (online from ``start`` on)
                                   when there is no period. Touching pairs are merged.
period                   no        seconds after which ``active`` repeats; all
                                   boundaries must lie in ``[0, period]`` (no repeat)
=======================  ========  ================================================

CSV (``.csv``): a header row naming any of the fields above, then one row per client. An
empty cell means the field is absent; the ``active`` cell holds the same JSON list as above,
e.g. ``"[[0, 3600], [7200, 9000]]"``.

Rows of the resulting ``Population`` follow the file order; ``Population.ids`` holds the
``client`` values. Every problem is a ``DataError`` naming the file, line, client and field.

References: FedScale (Lai et al., ICML 2022) device and availability traces.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.atomic import atomic_write_text
from fedloom.errors import DataError
from fedloom.sim.availability import AlwaysAvailable, Availability, IntervalTrace
from fedloom.sim.devices import FLOAT_FIELDS, VALUE_RULES, Population

FIELDS = ("client", *FLOAT_FIELDS, "tier", "period", "active")
_DEFAULTS = {"memory_mb": math.inf, "latency_ms": 0.0, "loss_rate": 0.0, "failure_prob": 0.0}


@dataclass
class _Row:
    client: int
    values: dict[str, float]
    tier: int
    active: list[tuple[float, float]] | None
    period: float


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"{where}: field {name!r} must be a number, got {value!r}")
    return float(value)


def _integer(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"{where}: field {name!r} must be an integer, got {value!r}")
    return int(value)


def _intervals(raw: Any, period: float, where: str) -> list[tuple[float, float]]:
    if not isinstance(raw, list):
        raise DataError(f"{where}: field 'active' must be a list of [start, end] pairs")
    out: list[tuple[float, float]] = []
    for k, pair in enumerate(raw):
        at = f"{where}: field 'active' interval {k}"
        if not (isinstance(pair, list) and len(pair) == 2):
            raise DataError(f"{at} must be a [start, end] pair, got {pair!r}")
        start = _number(pair[0], "start", at)
        end = math.inf if pair[1] is None else _number(pair[1], "end", at)
        if not (math.isfinite(start) and start >= 0):
            raise DataError(f"{at}: start must be a finite number >= 0, got {pair[0]!r}")
        if not end > start:
            raise DataError(f"{at}: end must be after start, got {pair!r}")
        if math.isinf(end) and (k != len(raw) - 1 or math.isfinite(period)):
            raise DataError(f"{at}: an open end (null) is allowed only last and without period")
        if out and start < out[-1][1]:
            raise DataError(
                f"{at}: intervals must be sorted and non-overlapping, {pair!r} starts "
                f"before the previous end {out[-1][1]}"
            )
        if end > period:
            raise DataError(f"{at}: end {end} is beyond the period {period}")
        out.append((start, end))
    return out


def _parse(rec: Any, where: str) -> _Row:
    """Validate one client's record (a JSON object or a CSV row already typed)."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - set(FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    if "client" not in rec:
        raise DataError(f"{where}: missing required field 'client'")
    client = _integer(rec["client"], "client", where)
    if client < 0:
        raise DataError(f"{where}: field 'client' must be >= 0, got {client}")
    where = f"{where} (client {client})"
    if "compute_ms_per_sample" not in rec:
        raise DataError(f"{where}: missing required field 'compute_ms_per_sample'")
    if "up_kbps" not in rec and "down_kbps" not in rec:
        raise DataError(f"{where}: missing required field 'up_kbps' or 'down_kbps'")
    values = {**_DEFAULTS}
    values |= {name: _number(rec[name], name, where) for name in FLOAT_FIELDS if name in rec}
    if "up_kbps" not in values:
        values["up_kbps"] = values["down_kbps"]
    if "down_kbps" not in values:
        values["down_kbps"] = values["up_kbps"]
    for name, (what, rule) in VALUE_RULES.items():
        if not rule(np.float64(values[name])):
            raise DataError(f"{where}: field {name!r} must be {what}, got {values[name]!r}")
    tier = _integer(rec["tier"], "tier", where) if "tier" in rec else -1
    if not -1 <= tier <= np.iinfo(np.int16).max:
        raise DataError(f"{where}: field 'tier' must be in [-1, 32767], got {tier}")
    period = math.inf
    if "period" in rec:
        period = _number(rec["period"], "period", where)
        if not (math.isfinite(period) and period > 0):
            raise DataError(f"{where}: field 'period' must be a finite number > 0, got {period}")
        if "active" not in rec:
            raise DataError(f"{where}: field 'period' given without 'active'")
    active = _intervals(rec["active"], period, where) if "active" in rec else None
    return _Row(client, values, tier, active, period)


def _jsonl_records(text: str, name: str) -> Iterator[tuple[Any, str]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            yield json.loads(line), where
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from exc


def _csv_records(text: str, name: str) -> Iterator[tuple[Any, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    for column in header:
        if column not in FIELDS:
            raise DataError(f"{name}:1: unknown column {column!r} (known: {', '.join(FIELDS)})")
    for row in reader:
        where = f"{name}:{reader.line_num}"
        if None in row:
            raise DataError(f"{where}: more cells than header columns")
        rec: dict[str, Any] = {}
        for column, cell in row.items():
            cell = (cell or "").strip()
            if not cell:
                continue
            try:
                if column == "active":
                    rec[column] = json.loads(cell)
                elif column in ("client", "tier"):
                    rec[column] = int(cell)
                else:
                    rec[column] = float(cell)
            except ValueError as exc:
                raise DataError(f"{where}: field {column!r}: cannot parse {cell!r}") from exc
        yield rec, where


def _check_suffix(path: Path) -> None:
    if path.suffix not in (".jsonl", ".csv"):
        raise DataError(
            f"trace {str(path)!r}: unknown extension {path.suffix!r}, use .jsonl or .csv"
        )


def read_trace(path: Path) -> Population:
    """Load a ``.jsonl`` or ``.csv`` device trace (format in the module docstring)."""
    path = Path(path)
    _check_suffix(path)
    records = _jsonl_records if path.suffix == ".jsonl" else _csv_records
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"trace {str(path)!r} cannot be read: {exc}") from exc
    rows: list[_Row] = []
    seen: dict[int, str] = {}
    for rec, where in records(text, path.name):
        row = _parse(rec, where)
        if row.client in seen:
            raise DataError(
                f"{where}: duplicate client {row.client} (first defined at {seen[row.client]})"
            )
        seen[row.client] = where
        rows.append(row)
    if not rows:
        raise DataError(f"trace {str(path)!r} has no clients")
    return _population(rows)


def _population(rows: list[_Row]) -> Population:
    availability: Availability
    if all(r.active is None for r in rows):
        availability = AlwaysAvailable(len(rows))
    else:
        availability = IntervalTrace.from_intervals(
            [[(0.0, math.inf)] if r.active is None else r.active for r in rows],
            np.array([r.period for r in rows]),
        )
    return Population(
        **{name: np.array([r.values[name] for r in rows]) for name in FLOAT_FIELDS},
        tier=np.array([r.tier for r in rows], dtype=np.int16),
        availability=availability,
        ids=np.array([r.client for r in rows], dtype=np.int64),
    )


def _records(pop: Population) -> Iterator[dict[str, Any]]:
    """One trace record per client, omitting fields at their defaults where allowed."""
    trace = pop.availability.to_intervals()
    columns = {name: getattr(pop, name).tolist() for name in FLOAT_FIELDS}
    for i, client in enumerate(pop.ids.tolist()):
        rec: dict[str, Any] = {"client": client}
        for name in FLOAT_FIELDS:
            value = columns[name][i]
            if not (name == "memory_mb" and math.isinf(value)):
                rec[name] = value
        if pop.tier[i] != -1:
            rec["tier"] = int(pop.tier[i])
        period = float(trace.period[i])
        intervals = trace.intervals(i)
        if math.isfinite(period) or intervals != [(0.0, math.inf)]:
            rec["active"] = [[s, None if math.isinf(e) else e] for s, e in intervals]
            if math.isfinite(period):
                rec["period"] = period
        yield rec


def write_trace(path: Path, pop: Population) -> None:
    """Write ``pop`` as a ``.jsonl`` or ``.csv`` trace, atomically; ``read_trace`` inverts it
    (``Diurnal`` availability is written as its equivalent daily intervals)."""
    path = Path(path)
    _check_suffix(path)
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(rec) + "\n" for rec in _records(pop))
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for rec in _records(pop):
            if "active" in rec:
                rec["active"] = json.dumps(rec["active"])
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in rec.items()})
        text = out.getvalue()
    atomic_write_text(path, text)


def convert_fedscale(
    device_info: Mapping[Any, Mapping[str, Any]],
    client_behavior: Mapping[Any, Mapping[str, Any]] | None = None,
    augmentation_factor: float = 3.0,
) -> Population:
    """A ``Population`` from FedScale's (already unpickled) device and behaviour dicts.

    Mapping, one row per ``device_info`` key in ascending id order (``ids`` keeps the keys):

    - ``compute_ms_per_sample = augmentation_factor * computation``: FedScale's
      ``computation`` is inference latency per sample and its runtime multiplies it by 3 to
      account for the backward pass (``ClientMetadata.get_completion_time``);
    - ``up_kbps = down_kbps = communication`` (FedScale measures update sizes in kbit);
    - latency, loss and failure probability 0, memory unlimited, tier -1;
    - availability: client ``c`` is online in ``[active[i], inactive[i])`` repeating every
      ``finish_time`` seconds, as FedScale's ``ClientMetadata.is_active``; pairs are clipped
      to ``finish_time``, empty pairs are dropped and unpaired trailing timestamps ignored.
      Clients missing from ``client_behavior`` (or all of them when it is ``None``) are
      always online, as FedScale treats a client without a trace; behaviour entries for
      clients not in ``device_info`` are ignored.

    References: FedScale (Lai et al., ICML 2022), ``fedscale/cloud/internal/client_metadata.py``.
    """
    if not (math.isfinite(augmentation_factor) and augmentation_factor > 0):
        raise DataError(f"augmentation_factor must be > 0, got {augmentation_factor!r}")
    if not device_info:
        raise DataError("FedScale device_info has no clients")
    try:
        keys = sorted(device_info, key=lambda k: _integer(k, "client id", "FedScale"))
    except TypeError as exc:  # mixed key types that sort() cannot compare
        raise DataError(f"FedScale device_info keys must be integer client ids: {exc}") from exc
    rows: list[_Row] = []
    for key in keys:
        where = f"FedScale (client {key!r})"
        info = device_info[key]
        missing = [f for f in ("computation", "communication") if f not in info]
        if missing:
            raise DataError(f"{where}: missing field {missing[0]!r} in device_info")
        rec: dict[str, Any] = {
            "client": key,
            "compute_ms_per_sample": augmentation_factor
            * _number(info["computation"], "computation", where),
            "up_kbps": _number(info["communication"], "communication", where),
        }
        behavior = None if client_behavior is None else client_behavior.get(key)
        if behavior is not None:
            rec["active"], rec["period"] = _fedscale_intervals(behavior, where)
        rows.append(_parse(rec, "FedScale"))
    return _population(rows)


def _fedscale_intervals(behavior: Mapping[str, Any], where: str) -> tuple[list[list[float]], float]:
    for name in ("active", "inactive", "finish_time"):
        if name not in behavior:
            raise DataError(f"{where}: missing field {name!r} in client_behavior")
    period = _number(behavior["finish_time"], "finish_time", where)
    if not (math.isfinite(period) and period > 0):
        raise DataError(f"{where}: field 'finish_time' must be a finite number > 0, got {period}")
    pairs: list[list[float]] = []
    for raw_start, raw_end in zip(behavior["active"], behavior["inactive"], strict=False):
        start = _number(raw_start, "active", where)
        end = min(_number(raw_end, "inactive", where), period)
        if start >= period:
            continue
        if end < start:
            raise DataError(f"{where}: client_behavior active {start} is after inactive {end}")
        if end > start:
            pairs.append([start, end])
    return pairs, period
