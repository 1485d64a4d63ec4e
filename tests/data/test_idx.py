"""Parsing, selecting and writing wgrib2-style inventories (def_ray.data.idx)."""

from __future__ import annotations

import pytest

from def_ray.data.idx import (IdxError, format_idx, is_statistical, make_idx, merge_ranges, parse_idx, renumber,
                              select_records)

TEXT = """1:0:d=2022101401:REFC:entire atmosphere:anl:
2:100:d=2022101401:TMP:2 m above ground:anl:
3.1:250:d=2022101401:UGRD:10 m above ground:anl:
3.2:250:d=2022101401:VGRD:10 m above ground:anl:
4:400:d=2022101401:UGRD:10 m above ground:0-0 day ave fcst:
5:700:d=2022101401:APCP:surface:0-1 hour acc fcst:
"""


def test_ranges_run_to_the_next_message_and_the_last_to_the_end():
    recs = parse_idx(TEXT)
    assert [(r.offset, r.end) for r in recs] == [(0, 99), (100, 249), (250, 399), (250, 399), (400, 699),
                                                 (700, None)]
    assert recs[2].key == "UGRD:10 m above ground" and recs[2].number == "3.1"
    assert recs[1].length == 150 and recs[-1].length is None


def test_select_prefers_instantaneous_and_keeps_accumulations():
    sel = select_records(parse_idx(TEXT), ["u10", "v10", "apcp", "cape"])
    assert [r.offset for r in sel["u10"]] == [250]  # the 0-0 day average at 400 is left out
    assert [r.offset for r in sel["v10"]] == [250]
    assert [r.forecast for r in sel["apcp"]] == ["0-1 hour acc fcst"]  # only exists as an accumulation
    assert sel["cape"] == []


@pytest.mark.parametrize("forecast, stat", [("anl", False), ("5 hour fcst", False), ("495 min fcst", False),
                                            ("490-495 min ave fcst", True), ("0-0 day max fcst", True),
                                            ("0-0 day min fcst", True), ("4-5 hour acc fcst", True)])
def test_statistical_forecasts(forecast, stat):
    assert is_statistical(forecast) is stat


def test_merge_ranges():
    recs = parse_idx(TEXT)
    # messages 1 and 2 touch, 3's two fields share one message, 5 runs to the end of the file
    assert merge_ranges([recs[0], recs[1], recs[2], recs[3]]) == [(0, 399)]
    assert merge_ranges([recs[0], recs[2]]) == [(0, 99), (250, 399)]
    assert merge_ranges([recs[0], recs[2]], max_gap=150) == [(0, 399)]
    assert merge_ranges([recs[0], recs[2]], max_gap=149) == [(0, 99), (250, 399)]
    assert merge_ranges([recs[5], recs[4]]) == [(400, None)]
    assert merge_ranges([]) == []


def test_renumber_into_a_new_file_round_trips():
    recs = parse_idx(TEXT)
    chosen = [recs[2], recs[3], recs[5]]
    moved = renumber(chosen, {250: 0, 700: 150})
    text = format_idx(moved)
    assert text.splitlines() == ["1.1:0:d=2022101401:UGRD:10 m above ground:anl:",
                                 "1.2:0:d=2022101401:VGRD:10 m above ground:anl:",
                                 "2:150:d=2022101401:APCP:surface:0-1 hour acc fcst:"]
    assert parse_idx(text) == moved
    with pytest.raises(ValueError, match="700"):
        renumber(chosen, {250: 0})


@pytest.mark.parametrize("bad, where", [
    ("1:0:d=2022101401:REFC:entire atmosphere:anl:\n2:x:d=2022101401:TMP:surface:anl:\n", "line 2"),
    ("1:0:d=2022101401:REFC\n", "line 1"),
    ("1:0:2022101401:REFC:entire atmosphere:anl:\n", "line 1"),
    ("1:500:d=2022101401:REFC:entire atmosphere:anl:\n2:100:d=2022101401:TMP:surface:anl:\n", "backwards"),
    ("\n\n", "empty"),
])
def test_bad_inventories_name_source_and_line(bad, where):
    with pytest.raises(IdxError, match=f"inv.idx.*{where}"):
        parse_idx(bad, "inv.idx")


@pytest.mark.realdata
def test_real_inventory_ranges_tile_the_file(shared_data):
    path = shared_data / "hrrr" / "idx" / "20231104" / "hrrr.t01z.wrfsfcf05.grib2.idx"
    recs = parse_idx(path.read_text(), str(path))
    assert len(recs) == len(path.read_text().splitlines())
    assert recs[0].offset == 0 and recs[-1].end is None
    for a, b in zip(recs, recs[1:]):
        assert a.end == b.offset - 1


@pytest.mark.realdata
def test_make_idx_speaks_noaas_language(shared_data):
    # the truncated wrfsfcf12 file holds the first four messages of a NOAA surface file: our inventory of it must
    # name them as NOAA's own inventories of such files do (real .idx of another cycle, same message order)
    ours = parse_idx(make_idx(shared_data / "hrrr" / "hrrr.t11z.wrfsfcf12.grib2"))
    noaa = parse_idx((shared_data / "hrrr" / "idx" / "20231104" / "hrrr.t01z.wrfsfcf05.grib2.idx").read_text())
    assert [r.key for r in ours] == [r.key for r in noaa[:4]]  # message 5 is truncated: left out
    assert [r.forecast for r in ours] == ["12 hour fcst"] * 4
    assert ours[0].date == "d=2023091411"
    raw = (shared_data / "hrrr" / "hrrr.t11z.wrfsfcf12.grib2").read_bytes()
    for r in ours:  # each offset is where a GRIB2 message starts, and the next one follows its declared length
        assert raw[r.offset:r.offset + 4] == b"GRIB"
    for a, b in zip(ours, ours[1:]):
        assert a.offset + int.from_bytes(raw[a.offset + 8:a.offset + 16], "big") == b.offset
    apcp = parse_idx(make_idx(shared_data / "hrrr" / "subset_20201214_hrrr.t00z.wrfsfcf12.grib2"))
    assert [(r.key, r.forecast) for r in apcp] == [("APCP:surface", "0-12 hour acc fcst"),
                                                    ("APCP:surface", "11-12 hour acc fcst")]
    subhf = parse_idx(make_idx(shared_data / "hrrr" / "hrrr.wrfsubhf.sample.grib2"))
    assert [(r.key, r.forecast) for r in subhf] == [("REFC:entire atmosphere", "15 min fcst"),
                                                     ("VBDSF:surface", "0-15 min ave fcst")]


def test_make_idx_refuses_a_file_without_messages(tmp_path):
    bad = tmp_path / "empty.grib2"
    bad.write_bytes(b"not grib at all")
    with pytest.raises(IdxError, match="empty.grib2"):
        make_idx(bad)
