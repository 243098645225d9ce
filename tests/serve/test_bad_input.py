"""Every bad input gets a 4xx with a JSON body naming the problem, never a 500, and changes nothing."""

from __future__ import annotations

import http.client
import json

import httpx
import pytest


@pytest.fixture(scope="module")
def client(shared_server, kit):
    with shared_server.client(kit.TOKEN) as c:
        yield c


def check_error(r: httpx.Response, status: int, error: str, *words: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == error, body
    for w in words:
        assert w in body["detail"], body
    return body


def classes(shared_server) -> dict:
    return {c["name"]: c["examples"] for c in shared_server.client().get("/classes").json()["classes"]}


def truncated_jpeg(kit) -> bytes:
    data = kit.image_bytes(size=(160, 120), fmt="JPEG", seed=5)
    return data[: len(data) * 6 // 10]


@pytest.mark.parametrize(
    "make, status, error, words",
    [
        (lambda kit: b"this is text, not a picture\n" * 10, 422, "not_an_image", ["cat.jpg", "not an image"]),
        (truncated_jpeg, 422, "unreadable_image", ["cat.jpg", "truncated"]),
        (lambda kit: b"", 422, "empty_image", ["cat.jpg", "empty"]),
        (lambda kit: kit.png_bomb(20000, 20000), 413, "too_many_pixels", ["cat.jpg", "400000000 pixels", "limit"]),
        (lambda kit: kit.png_bomb(9000, 9000), 413, "too_many_pixels", ["cat.jpg", "9000x9000", "limit of 64000000"]),
        (lambda kit: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 422, "not_an_image", ["cat.jpg"]),
    ],
    ids=["not-an-image", "truncated-jpeg", "zero-bytes", "20000x20000-pixels", "9000x9000-pixels", "postscript"],
)
def test_bad_images_are_refused_and_change_nothing(client, shared_server, kit, make, status, error, words):
    before = classes(shared_server)
    good = kit.image_bytes(seed=1)
    # a bad image among good ones: the whole upload is refused, the class is not created
    r = client.post("/classes/bad upload/examples", files=kit.files(("ok.png", good), ("cat.jpg", make(kit))))
    check_error(r, status, error, *words)
    r = client.post("/predict", files=kit.files(("cat.jpg", make(kit))))
    check_error(r, status, error, *words)
    assert classes(shared_server) == before


def test_content_decides_not_the_file_name(client, kit):
    r = client.post("/classes/named oddly/examples", files=kit.files(("notes.txt", kit.image_bytes(seed=2))))
    assert r.status_code == 201 and r.json()["examples"] == 1
    check_error(client.post("/predict", files=kit.files(("photo.jpg", b"GIF89a but not really"))), 422, "not_an_image")


@pytest.mark.parametrize(
    "path, words",
    [
        ("/classes//examples", ["empty"]),
        ("/classes/..%2F..%2Fetc%2Fpasswd/examples", ["../../etc/passwd", "not allowed"]),
        ("/classes/a%2Fb/examples", ["a/b"]),
        ("/classes/a/b/examples", ["a/b"]),
        ("/classes/../examples", [".."]),
        ("/classes/.hidden/examples", [".hidden"]),
        ("/classes/back%5Cslash/examples", ["not allowed"]),
        ("/classes/new%0Aline/examples", ["not allowed"]),
        ("/classes/%00nul/examples", ["not allowed"]),
        ("/classes/trailing%20/examples", ["not allowed"]),
        ("/classes/" + "x" * 101 + "/examples", ["101 characters"]),
    ],
)
def test_bad_class_names(shared_server, kit, path, words):
    """Sent with http.client, which sends the path exactly as written (no '..' clean-up)."""
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + kit.image_bytes() + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", shared_server.port, timeout=30)
    conn.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                      "Authorization": f"Bearer {kit.TOKEN}"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    assert resp.status == 422 and data["error"] == "invalid_class_name", data
    for w in words:
        assert w in data["detail"], data


def test_names_that_are_fine(client, kit):
    for name in ("Cooper's Hawk (juvenile)", "001.Black_footed_Albatross", "école été", "a", "x" * 100):
        r = client.post(f"/classes/{name}/examples", files=kit.files(("a.png", kit.image_bytes(seed=3))))
        assert r.status_code == 201, (name, r.text)
        assert r.json()["name"] == name
        assert client.delete(f"/classes/{name}").status_code == 200


def test_deleting_base_model_file_and_unknown_classes(client):
    check_error(client.delete("/classes/base_a"), 409, "protected_class", "base class")
    check_error(client.delete("/classes/file_class"), 409, "protected_class", "model file")
    check_error(client.delete("/classes/no such class"), 404, "unknown_class", "no such class")
    check_error(client.get("/classes/no such class"), 404, "unknown_class")


def test_classes_of_the_model_file_take_no_examples(client, kit):
    for name in ("base_a", "file_class"):
        r = client.post(f"/classes/{name}/examples", files=kit.files(("a.png", kit.image_bytes())))
        check_error(r, 409, "read_only_class", name)


def test_token_is_required_for_every_write(shared_server, kit):
    img = kit.files(("a.png", kit.image_bytes()))
    with shared_server.client() as anon, shared_server.client("wrong") as wrong:
        r = anon.post("/classes/tokenless/examples", files=img)
        assert check_error(r, 401, "unauthorized", "token") and r.headers["www-authenticate"] == "Bearer"
        check_error(wrong.post("/classes/tokenless/examples", files=img), 401, "unauthorized", "wrong token")
        check_error(anon.delete("/classes/base_a"), 401, "unauthorized")
        check_error(wrong.delete("/classes/base_a"), 401, "unauthorized")
        r = anon.post("/classes/tokenless/examples", files=img, headers={"Authorization": f"Basic {kit.TOKEN}"})
        check_error(r, 401, "unauthorized")
        # reads need no token
        assert anon.get("/classes").status_code == 200
        assert anon.post("/predict", files=img).status_code == 200
    assert "tokenless" not in classes(shared_server)


def test_limits_on_images_and_request_size(client, shared_server, kit):
    five = kit.files(*[(f"{i}.png", kit.image_bytes(seed=i)) for i in range(5)])
    check_error(client.post("/classes/too many/examples", files=five), 413, "too_many_images", "5 images", "limit is 4")
    check_error(client.post("/predict", files=five), 413, "too_many_images")
    big = kit.files(("big.bmp", b"BM" + b"\0" * (3 * 1024 * 1024)))  # 3 MiB > the 2 MiB limit
    check_error(client.post("/classes/too big/examples", files=big), 413, "request_too_large", "limit")

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 65536
    r = client.post("/classes/too big/examples", content=chunks(),
                    headers={"Content-Type": "multipart/form-data; boundary=x"})
    check_error(r, 413, "request_too_large")
    assert "too many" not in classes(shared_server) and "too big" not in classes(shared_server)


def test_malformed_requests(client, kit):
    check_error(client.post("/classes/nofiles/examples"), 422, "invalid_request", "files")
    check_error(client.post("/classes/nofiles/examples", json={"files": []}), 422, "invalid_request", "files")
    check_error(client.post("/classes/nofiles/examples", data={"other": "x"}), 422, "invalid_request", "files")
    img = kit.files(("a.png", kit.image_bytes()))
    check_error(client.post("/predict", params={"k": 0}, files=img), 422, "invalid_request", "k")
    check_error(client.post("/predict", params={"k": "many"}, files=img), 422, "invalid_request", "k")
    check_error(client.post("/predict", params={"unknown_threshold": 2}, files=img), 422, "invalid_request", "unknown_threshold")
    r = client.post("/predict", content=b"--x\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=x"})
    check_error(r, 422, "invalid_request", "files: Field required")  # the garbage has no 'files' part
    check_error(client.get("/nowhere"), 404, "not_found")
    check_error(client.put("/classes/x/examples", files=img), 405, "method_not_allowed")


def test_page_and_docs_are_served(shared_server):
    with shared_server.client() as c:
        page = c.get("/")
        assert page.status_code == 200 and "<title>" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/docs").status_code == 200
        spec = c.get("/openapi.json").json()
        assert {"/health", "/classes", "/classes/{name}/examples", "/classes/{name}", "/predict"} <= set(spec["paths"])


def test_predict_with_no_classes_and_wrong_stores(tmp_path, kit):
    """In process (no server needed): an empty model, a store of another model, a store in use,
    a damaged store, a model with an unnormalized (linear) classifier."""
    import imprinting
    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from imprinting.cli import main
    from imprinting.serve.app import create_app
    from imprinting.serve.store import StoreError

    empty = tmp_path / "empty.safetensors"
    imprinting.save(imprinting.create_model("conv4", pretrained=False), empty)
    app = create_app(empty, tmp_path / "store.sqlite")
    with TestClient(app) as c:
        check_error(c.post("/predict", files=kit.files(("a.png", kit.image_bytes()))), 409, "no_classes", "no classes")
        with pytest.raises(StoreError, match="in use by another"):
            create_app(empty, tmp_path / "store.sqlite")
    other = tmp_path / "other.safetensors"
    imprinting.save(imprinting.create_model("conv4", pretrained=False), other)  # other random weights
    with pytest.raises(StoreError, match="another model"):
        create_app(other, tmp_path / "store.sqlite")
    result = CliRunner().invoke(main, ["serve", str(other), "--store", str(tmp_path / "store.sqlite")])
    assert result.exit_code == 1 and "another model" in result.output and "Traceback" not in result.output
    linear = tmp_path / "linear.safetensors"
    imprinting.save(imprinting.create_model("conv4", pretrained=False, classifier="linear", num_classes=1), linear)
    result = CliRunner().invoke(main, ["serve", str(linear), "--store", str(tmp_path / "linear.sqlite")])
    assert result.exit_code == 1 and "needs a cosine classifier" in result.output
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    result = CliRunner().invoke(main, ["serve", str(empty), "--store", str(tmp_path / "junk.sqlite")])
    assert result.exit_code == 1 and "not a usable class store" in result.output


def test_a_failed_commit_changes_nothing(tmp_path, conv4_model, kit, monkeypatch):
    """In process: when the store cannot write (disk full, I/O error), the answer is a 503 and
    the classes in memory are as they were."""
    from fastapi.testclient import TestClient

    from imprinting.serve.app import create_app
    from imprinting.serve.integrity import StoreError

    app = create_app(conv4_model, tmp_path / "store.sqlite")
    probe = kit.files(("p.png", kit.image_bytes(seed=8)))
    with TestClient(app) as c:
        assert c.post("/classes/kept/examples", files=kit.files(("a.png", kit.image_bytes(seed=1)))).status_code == 201
        before_classes = c.get("/classes").json()
        before = c.post("/predict", params={"k": 10}, files=probe).json()

        def fail(*args, **kwargs):  # what the store makes of SQLite's error (tests/serve/test_store_contract.py)
            raise StoreError(f"{tmp_path / 'store.sqlite'}: the disk refused the upload (disk I/O error)")

        monkeypatch.setattr(app.state.service.store, "add_examples", fail)
        for name in ("kept", "new one"):
            r = c.post(f"/classes/{name}/examples", files=kit.files(("b.png", kit.image_bytes(seed=2))))
            check_error(r, 503, "store_error", "not saved", "disk I/O error")
        assert c.get("/classes").json() == before_classes
        assert c.post("/predict", params={"k": 10}, files=probe).json()["predictions"] == before["predictions"]


def test_an_unexpected_error_is_a_json_500_that_names_a_logged_reference_not_its_text(tmp_path, conv4_model, kit,
                                                                                        monkeypatch, caplog):
    """A bug's exception text (a path, a query, data) is the server's business: the client
    gets the usual JSON body with a reference, and the log has the exception under it."""
    from fastapi.testclient import TestClient

    from imprinting.serve.app import create_app

    app = create_app(conv4_model, tmp_path / "store.sqlite")

    def broken():
        raise RuntimeError("secret /srv/private/path")

    monkeypatch.setattr(app.state.service, "classes", broken)
    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level("ERROR", logger="imprinting.serve"):
        r = c.get("/classes")
    body = r.json()
    assert r.status_code == 500 and body["error"] == "internal_error"
    assert "secret" not in r.text and "RuntimeError" not in r.text
    reference = body["detail"].split("reference ")[1].split(":")[0]
    logged = [rec for rec in caplog.records if reference in rec.getMessage()]
    assert logged and "secret /srv/private/path" in str(logged[0].exc_info[1])
