"""The lexicon against NOAA's real inventories and real HRRR messages (../shared/data/hrrr)."""

from __future__ import annotations

from collections import Counter

import pytest

from def_ray.data.idx import parse_idx, select_records
from def_ray.data.lexicon import (DEFAULT_CHANNELS, LEXICON, UnknownVariableError, check_variables,
                                  find_by_identity, lookup)

SUBHF_VARIABLES = ("refc", "t2m", "d2m", "u10", "v10", "prate")


def _inventories(shared_data, product: str):
    paths = sorted((shared_data / "hrrr" / "idx").glob(f"*/hrrr.t*z.{product}*.grib2.idx"))
    assert paths, f"no {product} inventories under {shared_data / 'hrrr' / 'idx'}"
    return [(p, parse_idx(p.read_text(), str(p))) for p in paths]


@pytest.mark.realdata
def test_default_channels_and_prate_in_every_wrfsfcf_inventory(shared_data):
    inventories = _inventories(shared_data, "wrfsfcf")
    assert len(inventories) == 4
    for path, records in inventories:
        selected = select_records(records, [*DEFAULT_CHANNELS, "prate"])
        for name, recs in selected.items():
            assert len(recs) == 1, f"{path.name}: {name} matched {[r.forecast for r in recs]}"
            assert recs[0].key == LEXICON[name].idx_key
            # a surface file holds one valid time; the forecast field says which ("anl" or "N hour fcst")
            lead = int(path.name.split("wrfsfcf")[1][:2])
            assert recs[0].forecast == ("anl" if lead == 0 else f"{lead} hour fcst")


@pytest.mark.realdata
def test_subhourly_inventories_hold_one_record_per_step_and_no_cape(shared_data):
    inventories = _inventories(shared_data, "wrfsubhf")
    assert len(inventories) == 4
    for path, records in inventories:
        lead = int(path.name.split("wrfsubhf")[1][:2])
        # f00 is the analysis alone; a forecast hour holds four 15-minute steps ending at the hour
        steps = ["anl"] if lead == 0 else [f"{60 * lead - 45 + 15 * k} min fcst" for k in range(4)]
        selected = select_records(records, [*SUBHF_VARIABLES, "cape", "cin"])
        assert selected["cape"] == [] and selected["cin"] == []
        for name in SUBHF_VARIABLES:
            recs = selected[name]
            assert [r.forecast for r in recs] == steps, f"{path.name}: {name}"
            assert Counter(r.forecast for r in recs) == Counter(steps)  # exactly one per step


@pytest.mark.realdata
def test_period_averages_are_not_mistaken_for_instantaneous_winds(shared_data):
    # subhf00 lists UGRD:10 m twice: the analysis and a "0-0 day ave fcst" average
    path = shared_data / "hrrr" / "idx" / "20221014" / "hrrr.t01z.wrfsubhf00.grib2.idx"
    records = parse_idx(path.read_text())
    assert sum(r.key == "UGRD:10 m above ground" for r in records) == 2
    (rec,) = select_records(records, ["u10"])["u10"]
    assert rec.forecast == "anl"
    assert rec.number == "17"


@pytest.mark.realdata
def test_identities_match_real_hrrr_messages(shared_data):
    import eccodes

    expected = {"hrrr.t06z.wrfsfcf01-TMP.grib2": ["tsfc"], "hrrr.t06z.wrfsfcf01-UGRD.grib2": ["u10"],
                "hrrr.t00z.wrfsfcf00-HPBL.grib2": ["hpbl"], "hrrr.t06z.wrfsfcf01-missing-zeros.grib2": [None],
                "hrrr.t11z.wrfsfcf12.grib2": ["refc", "retop", None, "vil"],
                "hrrr.wrfsubhf.sample.grib2": ["refc", None],
                "subset_20201214_hrrr.t00z.wrfsfcf12.grib2": ["apcp", "apcp"]}
    for name, names in expected.items():
        found = []
        with open(shared_data / "hrrr" / name, "rb") as fh:
            while True:
                try:
                    h = eccodes.codes_grib_new_from_file(fh)
                except eccodes.PrematureEndOfFileError:  # the deliberately truncated file
                    break
                if h is None:
                    break
                ident = [eccodes.codes_get(h, k) for k in
                         ("discipline", "parameterCategory", "parameterNumber", "typeOfLevel", "level")]
                eccodes.codes_release(h)
                var = find_by_identity(*ident)
                found.append(var.name if var else None)
        assert found == names, name


def test_unknown_names_are_reported_with_the_known_ones():
    with pytest.raises(UnknownVariableError, match=r"unknown variable 'refl'.*refc"):
        lookup("refl")
    with pytest.raises(UnknownVariableError, match=r"\['xx', 'yy'\]"):
        check_variables(["refc", "xx", "yy"])
    check_variables(list(DEFAULT_CHANNELS))  # all known: no error


def test_idx_keys_and_identities_are_unique():
    keys = [v.idx_key for v in LEXICON.values()]
    idents = [v.identity for v in LEXICON.values()]
    assert len(set(keys)) == len(keys)
    assert len(set(idents)) == len(idents)
