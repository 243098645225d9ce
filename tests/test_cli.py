"""The `imprint` command: create, add-class, predict, info, and every bad input."""

import json

from helpers import make_image, run_cli as run
from imprinting import checkpoint


def test_help_explains_every_command():
    out = run("--help").output
    for cmd in ("create", "add-class", "predict", "info", "transfer"):
        assert cmd in out
        assert run(cmd, "--help").exit_code == 0


def test_create_from_folder_then_info(tiny_model):
    info = json.loads(run("info", tiny_model, "--json").output)
    assert [c["name"] for c in info["classes"]] == ["blue", "green", "red"]
    assert all(c["kind"] == "imprinted" and c["examples"] == 4 for c in info["classes"])
    assert info["backbone"] == "conv4" and info["embedding_dim"] == 16


def test_add_class_from_files_and_folders_then_append(tiny_model, tmp_path):
    files = [make_image(tmp_path / "y" / f"{i}.png", (220, 220, 20), seed=i) for i in range(3)]
    r = run("add-class", tiny_model, "--name", "yellow", files[0], files[1])
    assert r.exit_code == 0 and "yellow: 2 examples" in r.output
    r = run("add-class", tiny_model, "--name", "yellow", "--append", tmp_path / "y")
    assert r.exit_code == 0 and "yellow: 5 examples" in r.output
    model = checkpoint.load(tiny_model)
    assert model.class_names[-1] == "yellow" and int(model.classes.counts[-1]) == 5


def test_predict_prints_top_k_table_and_json(tiny_model, tiny_folder):
    r = run("predict", tiny_model, tiny_folder / "red" / "0.png", "-k", "2")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].endswith("0.png") and lines[1].lstrip().startswith("1.") and len(lines) == 3
    r = run("predict", tiny_model, tiny_folder / "red", "--json")
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert len(rows) == 4 and all(len(row["classes"]) == 3 for row in rows)
    assert all(abs(sum(row["probabilities"]) - 1) < 1e-4 for row in rows)


def _assert_clean_failure(result, model_path, before, *words):
    assert result.exit_code != 0
    message = result.output.strip()
    assert message.startswith("Error:") and len(message.splitlines()) == 1, message
    for w in words:
        assert w in message, message
    assert model_path.read_bytes() == before


def test_bad_inputs_are_one_line_errors_and_leave_the_model_unchanged(tiny_model, tmp_path):
    before = tiny_model.read_bytes()
    good = make_image(tmp_path / "ok.png")
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    truncated = tmp_path / "cut.jpg"
    make_image(tmp_path / "full.jpg", size=(200, 200))
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")

    cases = [
        (("add-class", tiny_model, "--name", "x", good, not_image), ("notes.jpg", "not a readable image")),
        (("add-class", tiny_model, "--name", "x", truncated), ("cut.jpg",)),
        (("add-class", tiny_model, "--name", "x", zero), ("zero.png",)),
        (("add-class", tiny_model, "--name", "x", empty_dir), ("empty", "no image files")),
        (("add-class", tiny_model, "--name", "x", tmp_path / "nope.png"), ("nope.png", "no such file")),
        (("add-class", tiny_model, "--name", "red", good), ("'red' already exists",)),
        (("add-class", tiny_model, "--name", " ", good), ("empty",)),
        (("predict", tiny_model, not_image), ("notes.jpg",)),
    ]
    for args, words in cases:
        _assert_clean_failure(run(*args), tiny_model, before, *words)


def test_unknown_or_corrupt_model_file(tmp_path):
    good = make_image(tmp_path / "ok.png")
    r = run("predict", tmp_path / "missing.safetensors", good)
    assert r.exit_code != 0 and "no such model file" in r.output
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    for args in (("info", junk), ("add-class", junk, "--name", "a", good)):
        _assert_clean_failure(run(*args), junk, b"\x00" * 64, "junk.safetensors")


def test_create_refuses_to_overwrite_and_unknown_backbone(tmp_path, tiny_model):
    before = tiny_model.read_bytes()
    _assert_clean_failure(run("create", tiny_model, "--backbone", "conv4", "--random-init"), tiny_model, before, "exists")
    r = run("create", tmp_path / "n.safetensors", "--backbone", "vgg99")
    assert r.exit_code != 0 and "unknown backbone 'vgg99'" in r.output
    assert not (tmp_path / "n.safetensors").exists()


def test_pretrained_model_learns_flowers_from_five_images(shared_data, tmp_path):
    """Three Flowers-102 classes imprinted from 5 training images each are recognised in test images."""
    from imprinting.data.flowers import read_flowers102

    train = read_flowers102(shared_data, "train", download=False)
    test = read_flowers102(shared_data, "test", download=False)
    path = tmp_path / "flowers.safetensors"
    assert run("create", path, "--image-size", "160").exit_code == 0
    classes = [0, 40, 80]
    for c in classes:
        files = [p for p, y in zip(train.paths, train.labels) if y == c][:5]
        assert run("add-class", path, "--name", f"flower {c}", *files).exit_code == 0
    queries = [(p, c) for c in classes for p in [p for p, y in zip(test.paths, test.labels) if y == c][:4]]
    r = run("predict", path, *[p for p, _ in queries], "--json")
    got = [json.loads(line)["classes"][0] for line in r.output.splitlines()]
    correct = sum(g == f"flower {c}" for g, (_, c) in zip(got, queries))
    assert correct >= 10, got  # chance is 4 of 12


def test_train_a_base_model_on_a_folder_then_imprint(tmp_path, tiny_folder):
    out = tmp_path / "base.safetensors"
    ckpt = tmp_path / "state.pt"
    r = run("train", tiny_folder, out, "--backbone", "conv4", "--random-init", "--dim", "8", "--epochs", "3",
            "--lr", "1e-2", "--batch-size", "4", "--augment", "2", "--checkpoint", ckpt)
    assert r.exit_code == 0, r.output
    model = checkpoint.load(out)
    assert model.class_names == ["blue", "green", "red"] and model.classes.counts.tolist() == [0, 0, 0]  # trained
    assert ckpt.exists()
    files = [make_image(tmp_path / "y" / f"{i}.png", (220, 220, 20), seed=i) for i in range(2)]
    assert run("add-class", out, "--name", "yellow", *files).exit_code == 0
    r = run("add-class", out, "--name", "red", "--append", files[0])
    assert r.exit_code != 0 and "base class" in r.output  # trained classes take no examples
    r = run("train", tiny_folder, tmp_path / "e2e.safetensors", "--backbone", "conv4", "--random-init",
            "--mode", "end-to-end", "--epochs", "1", "--batch-size", "4")
    assert r.exit_code == 0, r.output


def test_train_with_the_whitened_head_then_predict(tmp_path, tiny_folder):
    out = tmp_path / "whitened.safetensors"
    r = run("train", tiny_folder, out, "--backbone", "conv4", "--random-init", "--dim", "8", "--epochs", "2",
            "--batch-size", "4", "--augment", "0", "--head", "whitened")
    assert r.exit_code == 0, r.output
    assert "head whitened" in r.output
    model = checkpoint.load(out)
    assert model.classes.head is not None and model.spec.power == 0.5
    assert all(c > 0 for c in model.classes.counts.tolist())  # the classes are their training means now
    r = run("predict", out, tiny_folder / "red", "--json")
    assert r.exit_code == 0, r.output


def test_reproduce_and_transfer_take_the_engine_options(tmp_path):
    from imprinting import engines

    try:
        for cmd in (["transfer"], ["reproduce", "tables"], ["reproduce", "beyond"]):
            engines.set_default(engine=None, precision=None)
            r = run(*cmd, "--engine", "torch", "--precision", "float32", "--data-root", tmp_path / "none")
            assert r.exit_code != 0 and "Error" in r.output  # no data there, but the options were taken
            assert (engines.default_engine(), engines.default_precision()) == ("torch", "float32"), cmd
        assert run("reproduce", "tables", "--engine", "tpu").exit_code == 2
    finally:
        engines.set_default(engine=None, precision=None)
