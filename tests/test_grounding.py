"""Grounding: parsing the model's JSON (clean, fenced, amid prose, malformed, truncated),
mapping from the resized to the original image, clipping, and drawing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qwen25vl_jax.data import scale_boxes, smart_resize
from qwen25vl_jax.inference.grounding import (
    Detection,
    clip_to_image,
    draw_detections,
    ground,
    map_to_original,
    parse_grounding,
)

FENCED = """Here are the objects:
```json
[
  {"bbox_2d": [12, 30, 200, 180], "label": "cat"},
  {"point_2d": [55, 66], "label": "left eye"}
]
```
Anything else?"""


def test_parses_fenced_bare_and_prose_wrapped_json():
    want = [Detection("bbox", (12.0, 30.0, 200.0, 180.0), "cat"),
            Detection("point", (55.0, 66.0), "left eye")]  # fmt: skip
    bare = '[{"bbox_2d": [12, 30, 200, 180], "label": "cat"}, {"point_2d": [55, 66], "label": "left eye"}]'  # noqa: E501
    prose = 'The [only] cat: {"bbox_2d": [12, 30, 200, 180], "label": "cat"}\n' + (
        'and its eye {"point_2d": [55, 66], "label": "left eye"}.'
    )
    nested = '{"objects": [{"bbox_2d": [12, 30, 200, 180], "label": "cat"}], ' + (
        '"points": [{"point_2d": [55.0, 66.0], "label": "left eye"}]}'
    )
    for text in (FENCED, bare, prose, nested, "```json\n" + bare + "\n```\n```json\n[]\n```"):
        result = parse_grounding(text)
        assert result.detections == want, text
        assert result.problems == [], text


def test_two_fences_and_a_missing_label():
    text = '```json\n{"bbox_2d": [1, 2, 3, 4]}\n```\nand\n```\n[{"point_2d": [5, 6]}]\n```'
    result = parse_grounding(text)
    assert result.detections == [Detection("bbox", (1.0, 2.0, 3.0, 4.0)),
                                 Detection("point", (5.0, 6.0))]  # fmt: skip


def test_truncated_json_keeps_complete_objects_and_says_so():
    text = FENCED.split('{"point_2d"')[0] + '{"point_2d": [55, 6'  # the token budget ran out
    result = parse_grounding(text)
    assert result.detections == [Detection("bbox", (12.0, 30.0, 200.0, 180.0), "cat")]
    assert len(result.problems) == 1 and "incomplete" in result.problems[0]


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"bbox_2d": [1, 2, 3, 4], "label": }]', "malformed"),
        ('[{"bbox_2d": [1, 2, 3], "label": "a"}]', "must be 4 numbers"),
        ('[{"point_2d": ["1", 2]}]', "must be 2 numbers"),
        ('[{"bbox_2d": [true, 2, 3, 4]}]', "must be 4 numbers"),
        ('[{"bbox_2d": [NaN, 2, 3, 4]}]', "must be 4 numbers"),
        ('[{"bbox_2d": {"x": 1}}]', "must be 4 numbers"),
        ("I cannot see any cat in this image.", "no 'bbox_2d' or 'point_2d'"),
        ('```json\n{"answer": 42}\n```', "no 'bbox_2d' or 'point_2d'"),
        ("```json\n[{", "no 'bbox_2d' or 'point_2d'"),
        ('```json\n[{"bbox_2d": [1, 2, 3', "incomplete"),
        ("", "no 'bbox_2d' or 'point_2d'"),
    ],
)
def test_bad_output_gives_a_message_not_a_crash(text, message):
    result = parse_grounding(text)
    assert result.detections == []
    assert any(message in p for p in result.problems), result.problems


def test_trailing_commas_are_forgiven():
    result = parse_grounding('[{"bbox_2d": [1, 2, 3, 4], "label": "a",},]')
    assert result.detections == [Detection("bbox", (1.0, 2.0, 3.0, 4.0), "a")]


def test_maps_from_the_resized_image_and_clips():
    original = (750, 1000)  # (h, w)
    resized = smart_resize(*original, min_pixels=3136, max_pixels=200_000)
    assert resized != original
    box = np.array([100.0, 50.0, 600.0, 400.0])  # original pixels
    seen = scale_boxes(box, original, resized)  # what the model is trained to output
    objects = [{"bbox_2d": [round(float(v), 6) for v in seen], "label": "dog"},
               {"point_2d": [round(float(v), 6) for v in seen[:2]]}]  # fmt: skip
    text = json.dumps(objects)
    result = ground(text, resized, original)
    assert result.problems == []
    np.testing.assert_allclose(result.detections[0].coords, box, atol=1e-4)
    np.testing.assert_allclose(result.detections[1].coords, box[:2], atol=1e-4)
    assert result.detections[0].label == "dog"


def test_clip_orders_corners_and_drops_boxes_outside():
    dets = [
        Detection("bbox", (-20.0, 300.0, 50.0, 10.0), "swapped, sticks out"),
        Detection("bbox", (120.0, 5.0, 180.0, 40.0), "outside"),
        Detection("point", (-3.0, 250.0)),
    ]
    problems: list[str] = []
    out = clip_to_image(dets, (200, 100), problems)  # h=200, w=100
    assert out == [Detection("bbox", (0.0, 10.0, 50.0, 200.0), "swapped, sticks out"),
                   Detection("point", (0.0, 200.0))]  # fmt: skip
    assert len(problems) == 1 and "outside" in problems[0]


def test_map_to_original_scales_x_and_y_separately():
    dets = [Detection("bbox", (10.0, 10.0, 20.0, 20.0)), Detection("point", (28.0, 56.0))]
    out = map_to_original(dets, resized_hw=(56, 28), original_hw=(112, 84))
    assert out[0].coords == (30.0, 20.0, 60.0, 40.0)
    assert out[1].coords == (84.0, 112.0)


def test_draw_marks_boxes_points_and_labels_on_a_copy():
    image = np.zeros((120, 160, 3), np.uint8)
    dets = [Detection("bbox", (20.0, 40.0, 100.0, 110.0), "box"), Detection("point", (140.0, 20.0))]
    drawn = np.asarray(draw_detections(image, dets))
    assert image.max() == 0  # the input is untouched
    assert drawn.shape == image.shape
    assert drawn[75, 20].any() and drawn[40, 60].any()  # left and top edges of the box
    assert not drawn[75, 60].any()  # its inside
    assert drawn[20, 140].any()  # the point
    assert drawn[25:40, 20:40].any()  # the label, above the box
    assert not drawn[5:15, 60:100].any()  # and nothing where nothing was drawn
