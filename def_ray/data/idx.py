"""wgrib2-style `.idx` inventories: parse them, pick our variables' byte ranges, and write them.

NOAA publishes beside every HRRR GRIB2 file an inventory with one line per message::

    71:36362081:d=2022101401:TMP:2 m above ground:anl:

(message number, byte offset, reference time, parameter, level, forecast). A message runs from its offset to the
byte before the next message's offset; the last one runs to the end of the file. Knowing this, a client downloads
only the messages it needs with HTTP range requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from def_ray.data.lexicon import Variable, find_by_identity, lookup

__all__ = ["IdxError", "IdxRecord", "parse_idx", "format_idx", "select_records", "is_statistical", "make_idx",
           "merge_ranges", "renumber"]


class IdxError(ValueError):
    """An inventory that cannot be used; the message names the source and the line."""


@dataclass(frozen=True)
class IdxRecord:
    number: str  # "71", or "12.2" for the second field of a message holding several
    offset: int
    end: int | None  # inclusive last byte; None = to the end of the file
    date: str  # "d=YYYYMMDDHH" as written
    param: str
    level: str
    forecast: str
    extra: tuple[str, ...] = ()  # any further fields (ensemble or probability descriptions)

    @property
    def key(self) -> str:
        """"PARAM:level", the form of our lexicon's `idx_key`."""
        return f"{self.param}:{self.level}"

    @property
    def length(self) -> int | None:
        return None if self.end is None else self.end - self.offset + 1


_STATISTICAL = re.compile(r"^\d+-\d+ \w+ (acc|ave|max|min)( fcst)?$")


def is_statistical(forecast: str) -> bool:
    """True for accumulations, averages, maxima and minima over a period ("0-1 hour acc fcst")."""
    return bool(_STATISTICAL.match(forecast.strip()))


def parse_idx(text: str, source: str = "<idx>") -> list[IdxRecord]:
    """Parse an inventory into records with byte ranges, in file order."""
    rows: list[tuple[str, int, list[str]]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split(":")
        if fields and fields[-1] == "":
            fields = fields[:-1]
        if len(fields) < 6:
            raise IdxError(f"{source} line {lineno}: expected 'n:offset:d=DATE:PARAM:level:forecast:', got {line!r}")
        number, offset_s = fields[0], fields[1]
        if not re.fullmatch(r"\d+(\.\d+)?", number) or not offset_s.isdigit():
            raise IdxError(f"{source} line {lineno}: bad message number or byte offset in {line!r}")
        if not fields[2].startswith("d="):
            raise IdxError(f"{source} line {lineno}: third field should be 'd=YYYYMMDDHH', got {fields[2]!r}")
        offset = int(offset_s)
        if rows and offset < rows[-1][1]:
            raise IdxError(f"{source} line {lineno}: offset {offset} goes backwards (previous {rows[-1][1]})")
        rows.append((number, offset, fields[2:]))
    if not rows:
        raise IdxError(f"{source}: empty inventory")

    # the end of a message is the byte before the next *different* offset (sub-fields share their message's offset)
    offsets = sorted({off for _, off, _ in rows})
    next_offset = dict(zip(offsets, offsets[1:] + [None]))
    out = []
    for number, offset, rest in rows:
        nxt = next_offset[offset]
        out.append(IdxRecord(number=number, offset=offset, end=None if nxt is None else nxt - 1, date=rest[0],
                             param=rest[1], level=rest[2], forecast=rest[3], extra=tuple(rest[4:])))
    return out


def format_idx(records: Iterable[IdxRecord]) -> str:
    """The inventory text of `records` (their own numbers and offsets), one line each, wgrib2 style."""
    lines = []
    for r in records:
        fields = [r.number, str(r.offset), r.date, r.param, r.level, r.forecast, *r.extra]
        lines.append(":".join(fields) + ":")
    return "\n".join(lines) + ("\n" if lines else "")


def select_records(records: Sequence[IdxRecord], names: Iterable[str]) -> dict[str, list[IdxRecord]]:
    """The records holding each of our variables, by short name (an empty list where the inventory lacks it).

    A key such as "UGRD:10 m above ground" appears both as the instantaneous field and as a period average; where a
    variable has instantaneous records only those are kept. Variables that only exist as period statistics
    (accumulated precipitation) keep all of theirs. Sub-hourly files hold one instantaneous record per 15-minute step.
    """
    out: dict[str, list[IdxRecord]] = {}
    for name in names:
        var = lookup(name)
        matches = [r for r in records if r.key == var.idx_key]
        instant = [r for r in matches if not is_statistical(r.forecast)]
        out[name] = instant or matches
    return out


def merge_ranges(records: Iterable[IdxRecord], max_gap: int = 0) -> list[tuple[int, int | None]]:
    """(start, inclusive end) byte ranges covering `records`, merging ranges at most `max_gap` bytes apart.

    Records of the same message (same offset) collapse into one range; end None means "to the end of the file".
    """
    spans = sorted({(r.offset, r.end) for r in records}, key=lambda s: s[0])
    merged: list[list[int | None]] = []
    for start, end in spans:
        if merged:
            last_end = merged[-1][1]
            if last_end is None:
                continue  # the previous range already runs to the end of the file
            if start <= last_end + 1 + max_gap:
                merged[-1][1] = None if end is None else max(last_end, end)
                continue
        merged.append([start, end])
    return [(int(s), e) for s, e in merged]  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- writing inventories

# wgrib2's level wording for the eccodes typeOfLevel values HRRR uses
_LEVELS = {
    "surface": "surface",
    "heightAboveGround": "{level} m above ground",
    "isobaricInhPa": "{level} mb",
    "atmosphere": "entire atmosphere",
    "cloudTop": "cloud top",
    "cloudBase": "cloud base",
    "meanSea": "mean sea level",
    "nominalTop": "top of atmosphere",
    "heightAboveSea": "{level} m above mean sea level",
    "heightAboveGroundLayer": "{first}-{second} m above ground",
}
_STAT_NAMES = {0: "ave", 1: "acc", 2: "max", 3: "min"}
_TIME_UNITS = {0: "min", 1: "hour", 2: "day"}


def _level_text(get, var: Variable | None) -> str:
    if var is not None:
        return var.idx_key.split(":", 1)[1]
    tol = get("typeOfLevel")
    pattern = _LEVELS.get(tol)
    if pattern is None:
        return str(tol)
    if "{first}" in pattern:  # eccodes calls the first surface "top" and the second "bottom"
        return pattern.format(first=get("topLevel"), second=get("bottomLevel"))
    return pattern.format(level=get("level"))


def _param_text(get, var: Variable | None) -> str:
    if var is not None:
        return var.idx_key.split(":", 1)[0]
    short = get("shortName")
    if short and short != "unknown":
        return str(short).upper()
    return (f"var discipline={get('discipline')} center={get('centre:l')} local_table={get('localTablesVersion')} "
            f"parmcat={get('parameterCategory')} parm={get('parameterNumber')}")


def _forecast_text(get) -> str:
    unit = _TIME_UNITS.get(get("indicatorOfUnitOfTimeRange"), "hour")
    start = int(get("forecastTime"))
    stat = get("typeOfStatisticalProcessing")
    if stat is not None:
        length = int(get("lengthOfTimeRange"))
        return f"{start}-{start + length} {unit} {_STAT_NAMES.get(int(stat), f'stat{stat}')} fcst"
    return "anl" if start == 0 else f"{start} {unit} fcst"


def _getter(h):
    """key -> value of one message (None where undefined); "centre:l" asks for the number, not the name."""
    import eccodes

    def get(key: str):
        name = key.removesuffix(":l")
        if not eccodes.codes_is_defined(h, name):
            return None
        return eccodes.codes_get_long(h, name) if key.endswith(":l") else eccodes.codes_get(h, name)

    return get


def make_idx(grib_path: str | Path) -> str:
    """A wgrib2-style inventory of a GRIB2 file, read with eccodes; our lexicon names the variables it knows.

    Raises IdxError naming the file if it holds no complete message; a truncated last message is left out (its
    bytes cannot be served as a message).
    """
    import eccodes

    path = Path(grib_path)
    records = []
    with path.open("rb") as fh:
        while True:
            try:
                h = eccodes.codes_grib_new_from_file(fh)
            except eccodes.PrematureEndOfFileError:
                break
            if h is None:
                break
            try:
                get = _getter(h)
                var = find_by_identity(int(get("discipline")), int(get("parameterCategory")),
                                       int(get("parameterNumber")), str(get("typeOfLevel")), int(get("level")))
                date = f"d={get('dataDate')}{int(get('dataTime')) // 100:02d}"
                records.append(IdxRecord(number=str(len(records) + 1), offset=int(get("offset")), end=None,
                                         date=date, param=_param_text(get, var), level=_level_text(get, var),
                                         forecast=_forecast_text(get)))
            finally:
                eccodes.codes_release(h)
    if not records:
        raise IdxError(f"{path}: no complete GRIB message")
    return format_idx(records)


def renumber(records: Sequence[IdxRecord], new_offsets: dict[int, int]) -> list[IdxRecord]:
    """`records` moved into a new file where the message at old offset o starts at new_offsets[o].

    Messages are numbered 1..n in their new order; fields sharing a message keep their ".k" suffix.
    """
    missing = {r.offset for r in records} - set(new_offsets)
    if missing:
        raise ValueError(f"no new offset for the message(s) at {sorted(missing)}")
    starts = sorted(set(new_offsets[r.offset] for r in records))
    number = {o: i for i, o in enumerate(starts, 1)}
    end = dict(zip(starts, [o - 1 for o in starts[1:]] + [None]))
    out = []
    for r in sorted(records, key=lambda r: (new_offsets[r.offset], r.number)):
        new = new_offsets[r.offset]
        sub = r.number.partition(".")[2]
        out.append(replace(r, number=f"{number[new]}.{sub}" if sub else str(number[new]), offset=new, end=end[new]))
    return out
