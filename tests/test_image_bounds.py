"""The bound on the work an image causes (``imprinting.data.images.check_image_size``): its
decoded pixels and its aspect ratio, which fixes the size of the short-side resize. Checked
from the header, before decoding, on every path that resizes: ``load_image`` (library, CLI),
the torch pipeline on PIL images, ``eval_crop``, and the lite runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from imprinting import checkpoint
from imprinting.backbones import Preprocess
from imprinting.build import create_model
from imprinting.data.images import (
    MAX_ASPECT_RATIO,
    ImageError,
    ImageSizeError,
    check_image_size,
    load_image,
    resized_size,
)
from imprinting.data.transforms import eval_crop
from imprinting.errors import UserError
from imprinting.lite.preprocess import resize_short_side, to_array, to_batch

REPO = Path(__file__).resolve().parents[1]
PEAK_LIMIT = 1.5 * 2**30  # bytes


def thin_png(path: Path, size: tuple[int, int]) -> Path:
    Image.new("RGB", size).save(path)
    return path


def refused(call, code: str, *words: str) -> str:
    with pytest.raises(ImageSizeError) as info:
        call()
    assert info.value.code == code
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message
    return message


# -- the rule ------------------------------------------------------------------
def test_the_limit_is_50_to_1():
    assert MAX_ASPECT_RATIO == 50


def test_a_20_to_1_panorama_passes_and_its_resize_is_small():
    check_image_size(4000, 200, "pano.jpg", resize_to=256)
    check_image_size(200, 4000, "pano.jpg", resize_to=256)
    # short side 200 -> 256, long side int(256 * 4000 / 200) = 5120: 1.3 M pixels
    assert resized_size(4000, 200, 256) == (5120, 256)
    assert resized_size(200, 4000, 256) == (256, 5120)


def test_1_by_8000_is_refused_naming_the_ratio_and_the_resize():
    # 8000 / 1 = 8,000:1; the resize would make it 256 x int(256 * 8000 / 1) = 256 x 2,048,000
    refused(lambda: check_image_size(1, 8000, "thin.png", resize_to=256), "extreme_aspect_ratio",
            "thin.png", "1x8000", "8,000:1", "50:1", "256x2,048,000")
    refused(lambda: check_image_size(8000, 1, "thin.png", resize_to=256), "extreme_aspect_ratio",
            "8000x1", "8,000:1", "2,048,000x256")
    # without a resize size: the same rule, the message without the resize
    message = refused(lambda: check_image_size(1, 8000, "thin.png"), "extreme_aspect_ratio", "8,000:1")
    assert "resiz" not in message


@pytest.mark.parametrize("short", [1, 7, 100, 257])
def test_the_boundary_is_exactly_50_to_1(short):
    for w, h in ((short, 50 * short), (50 * short, short)):
        check_image_size(w, h, "edge.png", resize_to=256)
    for w, h in ((short, 50 * short + 1), (50 * short + 1, short)):
        refused(lambda w=w, h=h: check_image_size(w, h, "edge.png", resize_to=256), "extreme_aspect_ratio",
                "edge.png", f"{w}x{h}")


def test_resized_pixels_are_bounded_by_the_ratio():
    # at exactly 50:1 the resize is 256 x 12,800 at most, whatever the short side
    for short in (1, 3, 100, 257, 1000):
        w, h = resized_size(short, 50 * short, 256)
        assert w == 256 and h == 12_800


def test_decoded_pixels_over_the_limit_are_refused_first():
    check_image_size(100, 100, "sq.png", max_pixels=10_000)
    refused(lambda: check_image_size(101, 100, "sq.png", max_pixels=10_000), "too_many_pixels",
            "101x100 pixels is more than the limit of 10000")
    # both bounds broken: the pixels are named (the service's 413)
    refused(lambda: check_image_size(1, 20_000, "sq.png", max_pixels=10_000), "too_many_pixels")
    check_image_size(10_000, 10_000, "decoded.png", max_pixels=None)  # an image already in memory


def test_an_empty_image_is_refused():
    refused(lambda: check_image_size(0, 10, "none.png"), "empty_image", "none.png", "0x10")


def test_the_error_is_a_user_error():
    assert issubclass(ImageSizeError, ImageError) and issubclass(ImageError, UserError)


# -- the library and CLI path ----------------------------------------------------
def test_load_image_refuses_thin_images_and_reads_a_panorama(tmp_path):
    refused(lambda: load_image(thin_png(tmp_path / "thin.png", (1, 8000))), "extreme_aspect_ratio",
            str(tmp_path / "thin.png"), "8,000:1")
    pano = load_image(thin_png(tmp_path / "pano.png", (400, 20)))
    assert pano.size == (400, 20)


def test_load_image_decides_before_decoding(tmp_path):
    path = thin_png(tmp_path / "thin.png", (1, 8000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixels truncated: decoding would fail
    refused(lambda: load_image(path), "extreme_aspect_ratio", "8,000:1")


def test_the_pipeline_refuses_thin_files_and_pil_images(tmp_path):
    torch.manual_seed(0)
    model = create_model("conv4", pretrained=False, dim=8, image_size=224)
    path = thin_png(tmp_path / "thin.png", (1, 8000))
    refused(lambda: model.embed_images([path]), "extreme_aspect_ratio", "thin.png")
    refused(lambda: model.embed_images([Image.new("L", (8000, 1))]), "extreme_aspect_ratio", "8000x1")
    refused(lambda: model.embed_images([path], views=2), "extreme_aspect_ratio", "thin.png")
    assert model.embed_images([Image.new("L", (400, 20))]).shape == (1, 8)


def test_eval_crop_refuses_a_thin_pil_image():
    pre = Preprocess(224, 256, (0.5,) * 3, (0.5,) * 3, 3, "bilinear")
    refused(lambda: eval_crop(pre)(Image.new("RGB", (1, 8000))), "extreme_aspect_ratio", "256x2,048,000")
    assert eval_crop(pre)(Image.new("RGB", (400, 20))).size == (224, 224)


# -- the lite runtime --------------------------------------------------------------
RECIPE = Preprocess(224, 256, (0.5,) * 3, (0.5,) * 3, 3, "bilinear").to_dict()


def test_lite_refuses_thin_pil_images_before_resizing():
    refused(lambda: to_array(Image.new("RGB", (1, 8000)), RECIPE), "extreme_aspect_ratio", "256x2,048,000")
    refused(lambda: to_batch([Image.new("RGB", (8000, 1))], RECIPE), "extreme_aspect_ratio", "2,048,000x256")
    refused(lambda: resize_short_side(Image.new("RGB", (1, 60_000)), 256), "extreme_aspect_ratio", "60,000:1")
    assert to_array(Image.new("RGB", (400, 20)), RECIPE).shape == (3, 224, 224)


def test_lite_runtime_refuses_a_thin_file(tmp_path):
    from imprinting.lite.runtime import LiteModel

    path = thin_png(tmp_path / "thin.png", (1, 8000))
    runtime = LiteModel.__new__(LiteModel)  # only its image loading is used: no export needed
    runtime.recipe = RECIPE
    refused(lambda: runtime.preprocess([path]), "extreme_aspect_ratio", "thin.png", "8,000:1")


# -- the command line, in a process of its own --------------------------------------
# A small process that runs the command and writes the command's peak resident memory. The
# test process cannot ask the kernel itself: a child's ru_maxrss starts from its parent's peak
# (Linux carries the old memory's high-water mark across fork and exec), and pytest's is GBs.
LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss * 1024))  # KiB on Linux
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], folder: Path) -> tuple[int, str, str, int]:
    """(exit status, stdout, stderr, peak resident bytes) of ``cmd`` run to the end."""
    peak = folder / "peak.txt"
    done = subprocess.run([sys.executable, "-c", LAUNCHER, str(peak), *cmd], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)
    return done.returncode, done.stdout, done.stderr, int(peak.read_text())


def test_cli_predict_refuses_a_1_by_60000_png_in_one_line(tmp_path):
    torch.manual_seed(0)
    model = create_model("conv4", pretrained=False, dim=8, class_names=["a", "b"], image_size=224)
    checkpoint.save(model, tmp_path / "m.safetensors")
    thin = thin_png(tmp_path / "thin.png", (1, 60_000))
    assert thin.stat().st_size < 1024  # a few hundred bytes
    # the torch engine: the auto engine's one-off build on a cold cache (~2 GB whatever the
    # image) is not what this measures
    code, out, err, peak = run_measured([sys.executable, "-m", "imprinting.cli", "predict", "--engine", "torch",
                                         str(tmp_path / "m.safetensors"), str(thin)], tmp_path)
    print(f"imprint predict peak RSS: {peak / 2**20:.0f} MiB")
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert code != 0, (code, out, err)
    assert len(lines) == 1 and "Traceback" not in err, (out, err)
    for word in ("thin.png", "1x60000", "60,000:1", "aspect ratio"):
        assert word in lines[0], lines[0]
    assert peak < PEAK_LIMIT, f"imprint predict reached {peak / 2**20:.0f} MiB"
