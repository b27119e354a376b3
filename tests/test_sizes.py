"""Sizes from --resolution and --aspect: the table, the search it comes from, and how a request gets its size."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from skyreels_cli.core.request import Request
from skyreels_cli.core.resolve import resolve
from skyreels_cli.core.sizes import (
    ASPECTS,
    NATIVE,
    SIZES,
    check_aspect,
    fit_size,
    nearest_aspect,
    pick_size,
    ratio,
    table_size,
)
from skyreels_cli.errors import UsageError
from skyreels_cli.models.registry import load_registry

from .conftest import invoke, read_png_frames


def test_table_covers_every_aspect_and_resolution():
    assert set(SIZES) == {(r, a) for r in NATIVE for a in ASPECTS}


@pytest.mark.parametrize("key", sorted(SIZES))
def test_table_sizes_are_valid_and_near_native(key):
    resolution, aspect = key
    height, width = SIZES[key]
    native = NATIVE[resolution][0] * NATIVE[resolution][1]
    assert height % 16 == 0 and width % 16 == 0
    assert abs(height * width / native - 1) < 0.02, "pixel count strays from the checkpoint's"
    assert abs(width / height / ratio(aspect) - 1) < 0.01, "shape strays from the aspect asked for"
    w, h = ASPECTS[aspect]
    assert (width > height) == (w > h) and (width == height) == (w == h), "orientation"


def test_table_is_the_search_at_each_native_pixel_count():
    # The literal table is what fit_size finds; a typo in it (or a change to the rule) shows here.
    for (resolution, aspect), size in SIZES.items():
        h, w = NATIVE[resolution]
        assert fit_size(h * w, ratio(aspect)) == size, (resolution, aspect)


def test_natives_are_the_checkpoints_sizes():
    assert SIZES[("540p", "16:9")] == (544, 960) and SIZES[("720p", "16:9")] == (720, 1280)
    assert SIZES[("540p", "9:16")] == (960, 544) and SIZES[("720p", "1:1")] == (960, 960)


@settings(max_examples=60, deadline=None)
@given(pixels=st.integers(32 * 32, 1280 * 1280), aspect=st.sampled_from(sorted(ASPECTS)))
def test_fit_size_is_valid_for_any_pixel_count(pixels, aspect):
    height, width = fit_size(pixels, ratio(aspect))
    assert height % 16 == 0 and width % 16 == 0 and height >= 16 and width >= 16
    assert width >= height if ratio(aspect) >= 1 else width <= height, "never turned the wrong way"
    assert fit_size(pixels, 1 / ratio(aspect)) == (width, height), "portrait is landscape turned"
    # never further from the pixel count than one 16-pixel row or column allows, plus the ratio's rounding
    assert abs(math.log(height * width / pixels)) < 0.25 + 32 / math.sqrt(pixels)


@pytest.mark.parametrize("text,key", [("16:9", "16:9"), (" 9x16 ", "9:16"), ("4/3", "4:3"), ("1:1", "1:1")])
def test_aspect_spellings(text, key):
    assert check_aspect(text) == key


def test_bad_aspect_lists_the_choices():
    with pytest.raises(UsageError) as err:
        check_aspect("21:9")
    assert str(err.value) == "aspect='21:9' is not one of 16:9, 9:16, 1:1, 4:3, 3:4"


@pytest.mark.parametrize("size,aspect", [((1920, 1080), "16:9"), ((1080, 1920), "9:16"), ((500, 500), "1:1"),
                                         ((4000, 3000), "4:3"), ((3000, 4000), "3:4"), ((80, 48), "16:9")])
def test_nearest_aspect(size, aspect):
    assert nearest_aspect(*size) == aspect


NATIVE_540 = (544, 960)


def test_pick_size_rules():
    def pick(height=None, width=None, aspect=None, resolution=None, source=None, native=NATIVE_540):
        return pick_size(height, width, aspect=aspect, resolution=resolution, native=native, source=source)

    assert pick() == (None, None), "nothing asked: the model's defaults, as before"
    assert pick(height=480) == (480, None)
    assert pick(aspect="1:1") == (720, 720)
    assert pick(aspect="9:16") == (960, 544)
    assert pick(resolution="720p") == (720, 1280), "the model's aspect at 720P"
    assert pick(resolution="720P", aspect="3:4") == (1104, 832)
    assert pick(aspect="16:9", height=720) == (720, 1280), "a side given wins; the other follows the aspect"
    assert pick(aspect="9:16", width=720) == (1280, 720)
    assert pick(source=(1000, 1000)) == (720, 720), "a square image gives square video"
    assert pick(source=(300, 600)) == (960, 544), "a portrait image: the model's size turned"
    assert pick(source=(300, 600), aspect="1:1") == (720, 720), "--aspect wins over the image"
    assert pick(source=(300, 600), height=64, width=64) == (64, 64)
    assert pick(aspect="4:3", native=(48, 80)) == (48, 64), "a tiny model: its own pixel count"
    assert pick(aspect="16:9", native=(48, 80)) == (48, 80), "its own aspect: its own size"
    with pytest.raises(UsageError, match="aspect with both height and width"):
        pick(aspect="1:1", height=64, width=64)
    with pytest.raises(UsageError, match="resolution sets both sides"):
        pick(resolution="540p", height=544)
    with pytest.raises(UsageError, match="resolution='1080p' is not one of 540p, 720p"):
        pick(resolution="1080p")


def test_table_size_of_an_unlisted_native_keeps_its_pixel_count():
    height, width = table_size("1:1", None, (480, 832))
    assert height == width and abs(height * width / (480 * 832) - 1) < 0.05


def _spec(alias):
    return load_registry().models[alias]


def test_resolved_request_records_only_height_and_width():
    r = resolve(Request(prompt="a cat", aspect="1:1", resolution="720p"), _spec("df-1.3b-540p"))
    assert (r.height, r.width, r.aspect, r.resolution) == (960, 960, None, None)
    again = resolve(Request.from_dict(r.to_dict()), _spec("df-1.3b-540p"))
    assert again == r, "replaying the resolved request gives the same size"


def test_start_image_sets_the_aspect(tmp_path):
    square = tmp_path / "square.png"
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(square)
    tall = tmp_path / "tall.png"
    Image.fromarray(np.zeros((90, 50, 3), np.uint8)).save(tall)
    spec = _spec("i2v-1.3b-540p")
    assert (resolve(Request(image=str(square)), spec).height, resolve(Request(image=str(square)), spec).width) \
        == (720, 720)
    r = resolve(Request(image=str(tall)), spec)
    assert (r.height, r.width) == (960, 544)
    r = resolve(Request(image=str(tall), aspect="16:9"), spec)
    assert (r.height, r.width) == (544, 960)


@pytest.mark.parametrize("args,words", [
    (["--aspect", "5:4"], ["--aspect '5:4' is not one of 16:9, 9:16, 1:1, 4:3, 3:4"]),
    (["--aspect", "1:1", "--height", "64", "--width", "64"], ["--aspect with both --height and --width"]),
    (["--resolution", "720p", "--width", "64"], ["--resolution sets both sides"]),
])
def test_bad_sizes_are_one_line_and_exit_2(hub_models, tmp_path, args, words):
    result = invoke("t2v", "a cat", "-m", "tiny", "--device", "cpu", "-o", tmp_path / "x.mp4", *args)
    message = result.output.strip()
    assert result.exit_code == 2 and message.startswith("error: ") and "\n" not in message, message
    for word in words:
        assert word in message
    assert not list(tmp_path.iterdir()), "something was written"


def test_aspect_makes_portrait_frames(hub_models, tmp_path):
    out = tmp_path / "tall"
    result = invoke("t2v", "a tower", "-m", "tiny", "--device", "cpu", "--aspect", "9:16", "--frames", 5,
                    "--steps", 2, "--seed", 1, "-o", f"{out}/", "-q")
    assert result.exit_code == 0, result.output
    frames = read_png_frames(out)
    assert frames.shape[1:3] == (80, 48)  # the tiny model's 48x80, turned
    request = json.loads((out / "settings.json").read_text())["request"]
    assert (request["height"], request["width"], request["aspect"]) == (80, 48, None)
