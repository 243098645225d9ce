"""The API against its own OpenAPI document, by schemathesis (bounded: a few dozen generated
requests per endpoint, in process): no 5xx, every status and body as documented (the
``{"error", "detail"}`` bodies of 404/409/413/422/503 included), and OPTIONS answering the
methods each path really takes."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (pip install -e '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def app(conv4_model, tmp_path_factory, kit):
    from imprinting.serve.app import create_app

    app = create_app(conv4_model, tmp_path_factory.mktemp("schema") / "store.sqlite", max_images=4)
    with TestClient(app) as c:  # one class of the store, so that predictions and GETs have something
        assert c.post("/classes/taught/examples", files=kit.files(("a.png", kit.image_bytes()))).status_code == 201
        yield app  # the service (and its store) stays open while schemathesis calls it


def test_the_api_conforms_to_its_openapi_document(app):
    """Every operation of /openapi.json, 40 generated requests each (derandomized), all of
    schemathesis's response checks."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "GET /health", "GET /ready", "GET /classes", "GET /classes/{name}", "DELETE /classes/{name}",
        "POST /classes/{name}/examples", "POST /predict",
        # the edit routes (issue 15), and with them the id and rename edges of issue 23
        "GET /classes/{name}/examples", "DELETE /classes/{name}/examples/{example_id}",
        "POST /classes/{name}/rename", "POST /calibrate"}
    from schemathesis.checks import positive_data_acceptance

    for op in operations:
        # An upload's bytes are "format: binary" to OpenAPI, which cannot say "an image": random
        # bytes are schema-valid yet rightly refused (422 not_an_image, with a documented body).
        uploads = op.path in ("/predict", "/classes/{name}/examples")
        # An example id's pattern says "digits, no leading zero"; OpenAPI cannot say "at most
        # 2^63-1", so a schema-valid 19-digit id over it is rightly refused (422 invalid_example_id).
        ids = op.path == "/classes/{name}/examples/{example_id}"
        # /calibrate takes false_reject or false_accept, not both: OpenAPI's query parameters
        # cannot say so, and both at once is rightly a 422
        either = op.path == "/calibrate"
        excluded = [positive_data_acceptance] if uploads or ids or either else []

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        @given(case=op.as_strategy())
        def check(case):
            case.call_and_validate(excluded_checks=excluded)

        check()


def test_every_error_status_sent_is_documented_with_its_body(app):
    spec = app.openapi()
    body = spec["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["error", "detail"]
    documented = {(path, method): set(op["responses"]) for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert documented[("/classes/{name}/examples", "post")] >= {"200", "201", "409", "413", "422", "503"}
    assert documented[("/predict", "post")] >= {"200", "409", "413", "422", "503"}
    assert documented[("/classes/{name}", "delete")] >= {"200", "404", "409", "422", "503"}
    assert documented[("/classes/{name}", "get")] >= {"200", "404", "422"}
    assert documented[("/classes/{name}/examples/{example_id}", "delete")] >= {"200", "404", "409", "422", "503"}
    assert documented[("/classes/{name}/rename", "post")] >= {"200", "404", "409", "422", "503"}
    assert documented[("/classes/{name}/examples", "get")] >= {"200", "404", "422", "503"}
    assert documented[("/calibrate", "post")] >= {"200", "409", "422", "503"}
    assert documented[("/predict", "post")] >= {"400"} and documented[("/ready", "get")] >= {"200", "503"}
    predict_422 = spec["paths"]["/predict"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert predict_422 == {"$ref": "#/components/schemas/ErrorBody"}


def test_options_lists_the_methods_of_every_route_of_the_path(app):
    with TestClient(app) as c:
        # (GET and DELETE /classes/{name} take any text, slashes too, so that a bad name gets
        # its own 422: they are routes of /classes/x/examples as well)
        for path, methods in [("/classes/x", "DELETE, GET, OPTIONS"), ("/classes", "GET, OPTIONS"),
                              ("/classes/x/examples", "DELETE, GET, OPTIONS, POST"), ("/predict", "OPTIONS, POST"),
                              ("/health", "GET, OPTIONS"), ("/static/app.js", "GET, HEAD, OPTIONS")]:
            r = c.options(path)
            assert (r.status_code, r.headers["allow"]) == (204, methods), path
            for method in {"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD"} - set(methods.split(", ")):
                r = c.request(method, path)  # what Allow leaves out is really refused, with the same Allow
                assert (r.status_code, r.headers["allow"]) == (405, methods), (method, path)
        r = c.put("/classes/x")
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, OPTIONS"
        assert r.json()["error"] == "method_not_allowed"
        r = c.options("/nothing/here")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
