"""The request schema on its own: conditioning decoding, bounding boxes, and what pydantic refuses."""

import base64

import numpy as np
import pytest
from pydantic import ValidationError

from def_ray.serve.schema import BBox, Conditioning, ForecastRequest, RequestProblem, index_box


def test_conditioning_base64_and_nested_lists_agree():
    a = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4) / 7
    b64 = Conditioning(shape=[2, 3, 4, 4], data_b64=base64.b64encode(a.astype("<f4").tobytes()).decode())
    lists = Conditioning(shape=[2, 3, 4, 4], data=a.tolist())
    np.testing.assert_array_equal(b64.to_array(), a)
    np.testing.assert_array_equal(lists.to_array(), a)


@pytest.mark.parametrize("cond, field, text", [
    (Conditioning(shape=[1, 1, 2, 2], data=[[[[1.0, float("nan")], [0.0, 0.0]]]]), "conditioning", "NaN"),
    (Conditioning(shape=[1, 1, 2, 3], data=[[[[1.0, 2.0], [0.0, 0.0]]]]), "conditioning.data",
     r"has shape \[1, 1, 2, 2\], declared shape \[1, 1, 2, 3\]"),
    (Conditioning(shape=[1, 1, 2, 2], data_b64=base64.b64encode(b"\0" * 12).decode()), "conditioning.data_b64",
     "12 bytes"),
    (Conditioning(shape=[1, 1, 2, 2], data_b64="***"), "conditioning.data_b64", "base64"),
])
def test_bad_conditioning_names_the_field(cond, field, text):
    with pytest.raises(RequestProblem, match=text) as e:
        cond.to_array()
    assert e.value.field == field and e.value.status == 422


def test_index_box_from_indices_and_from_latlon():
    lat, lon = np.meshgrid(np.linspace(30, 40, 11), np.linspace(-100, -90, 6), indexing="ij")
    assert index_box(None, (11, 6)) == (0, 11, 0, 6)
    assert index_box(BBox(y0=1, y1=3, x0=2, x1=6), (11, 6)) == (1, 3, 2, 6)
    # lat 32..35 -> rows 2..5; lon -98..-96 (also given as 262..264 east) -> columns 1..2
    assert index_box(BBox(lat_min=32, lat_max=35, lon_min=-98, lon_max=-96), (11, 6), lat, lon) == (2, 6, 1, 3)
    assert index_box(BBox(lat_min=32, lat_max=35, lon_min=262, lon_max=264), (11, 6), lat, lon) == (2, 6, 1, 3)
    with pytest.raises(RequestProblem, match="outside the 11 x 6 grid"):
        index_box(BBox(y0=0, y1=12, x0=0, x1=1), (11, 6))
    with pytest.raises(RequestProblem, match="no grid point"):
        index_box(BBox(lat_min=50, lat_max=55, lon_min=0, lon_max=1), (11, 6), lat, lon)


@pytest.mark.parametrize("body, where", [
    ({"init_time": "2024-06-01T18", "members": 0}, "members"),
    ({"init_time": "2024-06-01T18", "sampler": "euler"}, "sampler"),
    ({"init_time": "2024-06-01T18", "steps": 0}, "steps"),
    ({"init_time": "2024-06-01T18", "lead_hours": 1.5}, "lead_hours"),
    ({"init_time": "2024-06-01T18", "typo": 1}, "typo"),
    ({}, "exactly one of init_time and conditioning"),
    ({"init_time": "2024-06-01T18", "bbox": {"y0": 1, "y1": 1, "x0": 0, "x1": 2}}, "y0 < y1"),
    ({"init_time": "2024-06-01T18", "bbox": {"y0": 1, "lat_min": 3}}, "either all of y0"),
])
def test_schema_refusals_name_the_field(body, where):
    with pytest.raises(ValidationError, match=where):
        ForecastRequest.model_validate(body)
