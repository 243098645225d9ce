"""Thin images: a few bytes of PNG whose resize would take gigabytes are refused from their
header, and the server's memory stays small.

A 1 x 8000 PNG is 116 bytes and 8000 pixels, far under ``--max-pixels``; resizing its short
side to the model's 224 would make it 224 x 1,792,000 pixels (400 MB in grayscale), and a
1 x 60,000 one 224 x 13,440,000 (3 GB). The model here is a conv4 at 224 px so that the
unbounded resize would show in the server's peak resident memory (VmHWM).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import imprinting
from imprinting.serve.admission import Admission, Busy
from imprinting.serve.validation import ApiError, open_image, read_images

PEAK_LIMIT = 1.5 * 2**30  # bytes
THIN = {"tall.png": (1, 8000), "wide.png": (8000, 1), "taller.png": (1, 60_000), "wider.png": (60_000, 1)}


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "PNG")
    return buf.getvalue()


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.fixture(scope="module")
def model_224(tmp_path_factory) -> Path:
    """A random conv4 (grayscale) whose images are resized to 224, then cropped to 224."""
    torch.manual_seed(0)
    model = imprinting.create_model("conv4", pretrained=False, class_names=["base_a", "base_b"], image_size=224)
    assert model.preprocess.resize_size == 224
    path = tmp_path_factory.mktemp("thin") / "conv4-224.safetensors"
    imprinting.save(model, path)
    return path


def check_thin_refusal(r, name: str, size: tuple[int, int]) -> None:
    w, h = size
    ratio = f"{max(w, h) // min(w, h):,}:1"  # the long side over the short one, e.g. 8,000:1
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == "extreme_aspect_ratio", body
    for word in (name, f"{w}x{h}", ratio, "aspect ratio", "50:1"):
        assert word in body["detail"], body


def test_thin_pngs_are_refused_without_the_memory_to_resize_them(start_server, model_224, tmp_path, kit,
                                                                 monkeypatch):
    # the torch engine: the auto engine's one-off build on a cold cache (~2 GB whatever the
    # images) is not what this measures
    monkeypatch.setenv("IMPRINTING_ENGINE", "torch")
    server = start_server(model_224, tmp_path / "store.sqlite")
    # the peak from here on: the requests', not the start's (the worker's timed warm-up batch
    # of 32 photos at 224 px reaches ~1.7 GB with the eager engine, whatever the images)
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
    uploads = {name: png(size) for name, size in THIN.items()}
    assert all(len(data) < 1024 for data in uploads.values())  # a few hundred bytes each
    with server.client(timeout=120) as client:
        # one request with all four: refused at the first, naming it
        r = client.post("/predict", files=kit.files(*uploads.items()))
        check_thin_refusal(r, "tall.png", THIN["tall.png"])
        # each alone, to predict and to teach: each refused, naming itself
        for name, data in uploads.items():
            check_thin_refusal(client.post("/predict", files=kit.files((name, data))), name, THIN[name])
            r = client.post("/classes/thin/examples", files=kit.files(("ok.png", kit.image_bytes()), (name, data)))
            check_thin_refusal(r, name, THIN[name])
        assert "thin" not in {c["name"] for c in client.get("/classes").json()["classes"]}
        # a 20:1 panorama is no threat: 224 x 4480 after the resize
        r = client.post("/predict", files=kit.files(("panorama.png", kit.image_bytes(size=(400, 20)))))
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 1
    peak = peak_rss(server.proc.pid)
    print(f"server peak RSS: {peak / 2**20:.0f} MiB")
    assert peak < PEAK_LIMIT, f"the server reached {peak / 2**20:.0f} MiB"


# -- in process: the header rule and the memory ceiling while a request runs ---------------
def test_open_image_maps_the_rule_to_the_service_errors():
    with pytest.raises(ApiError) as info:
        open_image(png((1, 8000)), "tall.png", max_pixels=64_000_000, reduce_to=224)
    assert (info.value.status, info.value.error) == (422, "extreme_aspect_ratio")
    assert "224x1,792,000" in info.value.detail  # 224 x int(224 * 8000 / 1)
    with pytest.raises(ApiError) as info:
        open_image(png((1, 8000)), "tall.png", max_pixels=7999, reduce_to=224)
    assert (info.value.status, info.value.error) == (413, "too_many_pixels")
    assert open_image(png((400, 8)), "banner.png", max_pixels=64_000_000, reduce_to=224).size == (400, 8)  # 50:1


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory is read from Linux /proc")
def test_the_ceilings_reading_of_memory_is_recent_and_read_once_per_interval(monkeypatch):
    """``check_memory`` runs before every image: its reading of the resident memory is the
    process's (as ``resident_bytes`` reads it) and is read again only once it is older than
    ``RESIDENT_MAX_AGE``, with one system call."""
    from imprinting.serve import admission as module

    clock = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    recent = module._RecentResident()
    reads = []
    real = recent._read
    monkeypatch.setattr(recent, "_read", lambda: reads.append(1) or real())
    first = recent()
    assert abs(first - module.resident_bytes()) < 64 * 2**20 and len(reads) == 1
    clock[0] += module.RESIDENT_MAX_AGE / 2
    assert recent() == first and len(reads) == 1  # within the interval: the same reading, no read
    clock[0] += module.RESIDENT_MAX_AGE * 2
    recent()
    recent()
    assert len(reads) == 2  # older than the interval: read once, then reused


def test_the_memory_ceiling_is_checked_before_each_image(kit):
    admission = Admission(memory_limit_mb=1_000_000)  # far above this process
    admission.check_memory("a.png")
    seen = []

    def shrink(img):  # the first image "makes the process grow" past the ceiling
        seen.append(img.size)
        admission.memory_limit = 1
        return img

    uploads = [("a.png", kit.image_bytes(seed=1)), ("b.png", kit.image_bytes(seed=2))]
    with pytest.raises(Busy) as info:
        read_images(uploads, 4, 64_000_000, admission=admission, shrink=shrink)
    assert len(seen) == 1  # b.png was never decoded
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "2"
    assert info.value.detail.startswith("b.png: the server is using"), info.value.detail
    assert "over its ceiling of 0 MiB" in info.value.detail
    with pytest.raises(Busy), admission.admit(1):  # and at admission, as before
        pass
    Admission(memory_limit_mb=None).check_memory("a.png")  # no ceiling: nothing to check
