from __future__ import annotations

import pytest

from gpuflow.core.errors import RequestError
from gpuflow.core.request import VideoRequest, parse_request

GOOD = {"prompt": "a cat", "image_uri": "file:///srv/cat.png"}


def test_defaults_make_a_valid_small_request() -> None:
    request = parse_request(GOOD)
    assert (request.width, request.height, request.num_frames) == (320, 192, 17)
    assert request.duration_s == pytest.approx(17 / 16)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("resolution", "300x200", "'300x200'"),
        ("resolution", "1280*720", "'1280*720'"),
        ("resolution", "2048x1024", "2048"),
        ("num_frames", 20, "20"),
        ("num_frames", 0, "0"),
        ("fps", 0, "0"),
        ("gpus", 0, "0"),
        ("gpus", 65, "65"),
        ("prompt", "", "''"),
        ("seed", -1, "-1"),
        ("gpu_type", "h100; rm -rf /", "rm -rf"),
    ],
)
def test_a_bad_value_is_refused_naming_field_and_value(
    field: str, value: object, named: str
) -> None:
    with pytest.raises(RequestError) as error:
        parse_request(GOOD | {field: value})
    assert field in str(error.value)
    assert named in str(error.value)


def test_the_gpu_bound_names_itself_as_a_sanity_bound_and_is_in_the_schema() -> None:
    with pytest.raises(RequestError, match=r"gpus 65 is more than 64, .*sanity bound"):
        parse_request(GOOD | {"gpus": 65})
    assert parse_request(GOOD | {"gpus": 64}).gpus == 64
    assert VideoRequest.model_json_schema()["properties"]["gpus"]["maximum"] == 64


def test_an_empty_or_null_gpu_type_means_any() -> None:
    assert parse_request(GOOD).gpu_type == ""
    assert parse_request(GOOD | {"gpu_type": None}).gpu_type == ""
    assert parse_request(GOOD | {"gpu_type": "h100"}).gpu_type == "h100"


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(RequestError, match="frames"):
        parse_request(GOOD | {"frames": 17})


def test_frame_count_error_suggests_valid_neighbours() -> None:
    with pytest.raises(RequestError, match=r"17 or 21"):
        parse_request(GOOD | {"num_frames": 20})


def test_a_request_object_passes_through() -> None:
    request = VideoRequest.model_validate(GOOD)
    assert parse_request(request) is request


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("prompt", "a cat\x00--help", "'\\x00' at offset 5"),
        ("prompt", "red\x1b[2Jcat", "'\\x1b' at offset 3"),
        ("prompt", "cat\x7f", "'\\x7f'"),
        ("prompt", "cat\x85dog", "'\\x85'"),
        ("prompt", "cat\ud800", "'cat\\ud800'"),
        ("image_uri", "file:///srv/cat.png\x00.txt", "'\\x00'"),
        ("image_uri", "file:///srv/cat\n.png", "'\\n'"),
        ("image_uri", "s3://bucket/cat\t.png", "'\\t'"),
    ],
)
def test_control_characters_are_refused_at_the_edge(field: str, value: str, named: str) -> None:
    with pytest.raises(RequestError, match=field) as refused:
        parse_request({**GOOD, field: value})
    assert named in str(refused.value)


def test_a_prompt_may_hold_tabs_line_breaks_and_any_printable_text() -> None:
    prompt = "--help\n\t-cinematic, 猫が走る 🐈 \u200b"
    assert parse_request({**GOOD, "prompt": prompt}).prompt == prompt
