"""Input images and videos are read as a person sees them."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from skyreels_cli.cli import app
from skyreels_cli.media.images import load_image
from skyreels_cli.media.videos import probe_video

from .conftest import ALIASES


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((32, 64, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # the camera was turned: show rotated by 90 degrees
    img.save(tmp_path / "turned.jpg", exif=exif)
    assert load_image(tmp_path / "turned.jpg").size == (32, 64)


def test_sixteen_bit_grey_keeps_its_gradient(tmp_path):
    grey = (np.arange(32 * 64).reshape(32, 64) * 30).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    rgb = np.asarray(load_image(tmp_path / "deep.png"))
    assert rgb.shape == (32, 64, 3) and rgb.min() == 0 and 200 < rgb.max() < 256
    assert abs(int(rgb[16, 32, 0]) - round(grey[16, 32] / 65535 * 255)) <= 1  # PIL's convert() gives 255


def test_palette_image_converts_exactly(tmp_path):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8)).convert("P")
    picture.save(tmp_path / "palette.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "palette.png")), np.asarray(picture.convert("RGB")))


def test_a_continued_video_keeps_its_frame_rate(hub_models, tmp_path):
    run = ["-m", ALIASES["df"], "--device", "cpu", "--height", "64", "--width", "64", "--steps", "2", "-q"]
    source = tmp_path / "source.mp4"
    assert CliRunner().invoke(app, ["t2v", "a fox", *run, "--frames", "21", "--fps", "12.5", "-o", str(source)]).exit_code == 0
    assert probe_video(source)["fps"] == 12.5
    out = tmp_path / "longer.mp4"
    result = CliRunner().invoke(app, ["extend", "a fox", *run, "--video", str(source), "--frames", "8",
                                      "--base-frames", "17", "-o", str(out)])
    assert result.exit_code == 0, result.output
    info = probe_video(out)
    assert info["fps"] == 12.5 and info["frames"] == 29
