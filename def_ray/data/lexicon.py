"""The one mapping between our short variable names and HRRR's GRIB2 identities.

Each variable is known two ways:
- its key in NOAA's wgrib2-style `.idx` inventories ("REFC:entire atmosphere"), used to pick byte ranges;
- its GRIB2 identity (discipline, parameter category, parameter number, type of level, level), used to decode
  a message whatever name the local tables give it (HRRR's REFC is an NCEP-local parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Variable", "LEXICON", "DEFAULT_CHANNELS", "UnknownVariableError", "check_variables", "lookup",
           "find_by_identity"]


@dataclass(frozen=True)
class Variable:
    name: str
    idx_key: str  # "PARAM:level" as in the .idx inventory (3rd and 4th fields); MRMS: NSSL's product name
    discipline: int
    category: int
    number: int
    level_type: str  # eccodes typeOfLevel
    level: int
    units: str
    long_name: str
    ecmwf_short: str  # eccodes shortName when writing (centre kwbc)
    # the smallest physical value: forecasts are clipped to it (a model in normalised space can undershoot, e.g.
    # to negative rain); None = unbounded
    floor: float | None = None
    precipitation: bool = False  # rain rate or accumulation: nowcast baselines work on it as rain, not as dBZ

    @property
    def identity(self) -> tuple[int, int, int, str, int]:
        return (self.discipline, self.category, self.number, self.level_type, self.level)


_VARS = [
    Variable("refc", "REFC:entire atmosphere", 0, 16, 196, "atmosphere", 0, "dBZ",
             "composite reflectivity", "refc", floor=-10.0),
    Variable("t2m", "TMP:2 m above ground", 0, 0, 0, "heightAboveGround", 2, "K", "2 m temperature", "2t"),
    Variable("d2m", "DPT:2 m above ground", 0, 0, 6, "heightAboveGround", 2, "K", "2 m dew point", "2d"),
    Variable("u10", "UGRD:10 m above ground", 0, 2, 2, "heightAboveGround", 10, "m s-1", "10 m eastward wind",
             "10u"),
    Variable("v10", "VGRD:10 m above ground", 0, 2, 3, "heightAboveGround", 10, "m s-1", "10 m northward wind",
             "10v"),
    Variable("cape", "CAPE:surface", 0, 7, 6, "surface", 0, "J kg-1", "surface-based CAPE", "cape", floor=0.0),
    Variable("cin", "CIN:surface", 0, 7, 7, "surface", 0, "J kg-1", "surface-based CIN", "cin"),
    Variable("prate", "PRATE:surface", 0, 1, 7, "surface", 0, "kg m-2 s-1", "precipitation rate", "prate",
             floor=0.0, precipitation=True),
    Variable("tsfc", "TMP:surface", 0, 0, 0, "surface", 0, "K", "surface temperature", "t"),
    Variable("hpbl", "HPBL:surface", 0, 3, 18, "surface", 0, "m", "planetary boundary layer height", "blh", floor=0.0),
    Variable("gust", "GUST:surface", 0, 2, 22, "surface", 0, "m s-1", "surface wind gust", "gust", floor=0.0),
    Variable("vil", "VIL:entire atmosphere", 0, 15, 3, "atmosphere", 0, "kg m-2", "vertically integrated liquid",
             "veril", floor=0.0),
    Variable("retop", "RETOP:cloud top", 0, 16, 3, "cloudTop", 0, "m", "echo top", "retop"),
    Variable("apcp", "APCP:surface", 0, 1, 8, "surface", 0, "kg m-2", "accumulated precipitation", "tp",
             floor=0.0, precipitation=True),
    # MRMS radar products (NSSL local tables, discipline 209); decoded by def_ray.data.mrms, never fetched by .idx
    Variable("preciprate", "PrecipRate", 209, 6, 1, "surface", 0, "mm h-1", "MRMS radar precipitation rate",
             "unknown", floor=0.0, precipitation=True),
    Variable("refc_mrms", "MergedReflectivityQCComposite", 209, 10, 0, "surface", 0, "dBZ",
             "MRMS composite reflectivity (quality controlled)", "unknown", floor=-10.0),
    Variable("qpe_01h", "GaugeCorr_QPE_01H", 209, 6, 9, "surface", 0, "mm",
             "MRMS gauge-corrected radar precipitation, 1-hour accumulation", "unknown", floor=0.0,
             precipitation=True),
]

LEXICON: dict[str, Variable] = {v.name: v for v in _VARS}
DEFAULT_CHANNELS: tuple[str, ...] = ("refc", "t2m", "d2m", "u10", "v10", "cape", "cin")


class UnknownVariableError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; say it plainly
        return str(self.args[0])


def lookup(name: str) -> Variable:
    try:
        return LEXICON[name]
    except KeyError:
        raise UnknownVariableError(f"unknown variable {name!r}; known: {', '.join(sorted(LEXICON))}") from None


def check_variables(names: list[str] | tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in LEXICON]
    if unknown:
        raise UnknownVariableError(f"unknown variable(s) {unknown}; known: {', '.join(sorted(LEXICON))}")


def find_by_identity(discipline: int, category: int, number: int, level_type: str, level: int) -> Variable | None:
    """The variable a decoded GRIB2 message holds, or None if it is not one of ours."""
    for v in _VARS:
        if v.identity == (discipline, category, number, level_type, level):
            return v
    return None
