"""``/docs`` (Swagger UI) and ``/redoc`` work offline: every script, style sheet and icon they
reference is served by this server, none comes from another host."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlparse

import pytest


@pytest.fixture(scope="module")
def client(shared_server):
    with shared_server.client() as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_reference_no_external_url_and_their_assets_are_served(client, page):
    r = client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", r.text)
    refs += re.findall(r"""\burl\s*:\s*["']([^"']+)["']""", r.text)  # SwaggerUIBundle({url: ...})
    refs += re.findall(r"""spec-url\s*=\s*["']([^"']+)["']""", r.text)
    assert refs, r.text
    assert not re.search(r"https?://(?!127\.0\.0\.1)", r.text), "the page names another host"
    for ref in refs:
        url = urljoin(str(r.url), ref)
        assert urlparse(url).netloc == urlparse(str(r.url)).netloc, ref
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 0, ref
    scripts = [ref for ref in refs if ref.endswith(".js")]
    assert scripts and all(len(client.get(urljoin(str(r.url), s)).content) > 100_000 for s in scripts)


def test_the_openapi_document_is_what_docs_load(client):
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/classes/{name}/examples/{example_id}" in spec["paths"]
