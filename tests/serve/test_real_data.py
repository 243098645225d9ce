"""Real pictures over HTTP: Flowers-102 classes taught from 5 images each, on an
ImageNet-pretrained EfficientNet-Lite0 (no training), are recognised in their test images."""

from __future__ import annotations

import pytest

import imprinting

CLASSES = 10
SHOTS = 5
TEST_PER_CLASS = 8
IMAGE_SIZE = 128  # small, for a 2-core CPU


@pytest.fixture(scope="module")
def flowers(flowers_data):
    from imprinting.data.flowers import read_flowers102

    train = read_flowers102(flowers_data, "train", download=False)
    test = read_flowers102(flowers_data, "test", download=False)

    def pick(images, label, n):
        return [p for p, y in zip(images.paths, images.labels) if y == label][:n]

    return {
        f"flower {label + 1}": (pick(train, label, SHOTS), pick(test, label, TEST_PER_CLASS))
        for label in range(0, 10 * CLASSES, 10)  # classes 1, 11, 21, ... of the 102
    }


@pytest.fixture(scope="module")
def lite0_model(tmp_path_factory):
    model = imprinting.create_model("efficientnet_lite0", dim=None, image_size=IMAGE_SIZE)
    path = tmp_path_factory.mktemp("lite0") / "lite0.safetensors"
    imprinting.save(model, path)
    return path


def upload(paths):
    return [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


@pytest.mark.real_data
def test_flowers_taught_from_5_images_are_recognised(flowers, lite0_model, tmp_path, start_server):
    server = start_server(lite0_model, tmp_path / "store.sqlite")
    with server.client() as c:
        for name, (train, _) in flowers.items():
            r = c.post(f"/classes/{name}/examples", files=upload(train))
            assert r.status_code == 201 and r.json()["examples"] == SHOTS, r.text

        tests = [(name, p) for name, (_, test) in flowers.items() for p in test]
        predictions = []
        for i in range(0, len(tests), 16):
            r = c.post("/predict", params={"k": 3}, files=upload([p for _, p in tests[i : i + 16]]))
            assert r.status_code == 200, r.text
            predictions += r.json()["predictions"]

    top1 = sum(p["top"][0]["class"] == name for (name, _), p in zip(tests, predictions)) / len(tests)
    chance = 1 / CLASSES
    assert top1 >= 0.6, f"top-1 {top1:.2f} on {len(tests)} test images (chance {chance:.2f})"

    # the served weight is the normalized mean of the 5 embeddings, computed here independently
    model = imprinting.load(lite0_model)
    name, (train, test) = next(iter(flowers.items()))
    e = model.embed_images(train).double()
    template = (e / e.norm(dim=1, keepdim=True)).sum(0)
    template = template / template.norm()
    probe = model.embed_images(test[:1])[0].double()
    served = next(t["cosine"] for t in predictions[0]["top"] if t["class"] == name)
    assert served == pytest.approx(float(probe @ template), abs=1e-4)
