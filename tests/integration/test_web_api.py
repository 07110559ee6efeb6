"""The JSON API against its OpenAPI schema, the token rule, read-only methods, the pages."""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.request

import jsonschema
import pytest
from starlette.testclient import TestClient

from dockd.status.web import create_app, is_loopback, start_web
from dockd.status.web_openapi import PATHS, openapi_spec, response_schema
from tests.integration.test_status_data import Dock, build_dock

LOCAL = ("127.0.0.1", 50000)
REMOTE = ("192.0.2.7", 50000)


@pytest.fixture
def dock(tmp_path) -> Dock:
    return build_dock(tmp_path / "w")


def _client(dock: Dock, client: tuple[str, int] = LOCAL, token: str = "") -> TestClient:
    cfg = dataclasses.replace(dock.cfg, web=dataclasses.replace(dock.cfg.web, token=token))
    return TestClient(create_app(cfg, dock.db), client=client, base_url="http://127.0.0.1")


def test_openapi_document_is_valid_and_served(dock):
    spec = openapi_spec()
    assert spec["openapi"].startswith("3.1")
    for schema in spec["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    with _client(dock) as c:
        r = c.get("/api/openapi.json")
    assert r.status_code == 200 and r.json() == json.loads(json.dumps(spec))
    assert set(spec["paths"]) == set(PATHS)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_api_responses_match_schema(dock, path):
    with _client(dock) as c:
        r = c.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    jsonschema.validate(r.json(), response_schema(path),
                        cls=jsonschema.Draft202012Validator)


def test_schema_catches_a_wrong_response(dock):
    with _client(dock) as c:
        data = c.get("/api/ports").json()
    data["ports"][0]["display"] = "exploded"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, response_schema("/api/ports"),
                            cls=jsonschema.Draft202012Validator)


def test_api_values_follow_the_state(dock):
    with _client(dock) as c:
        ports = {p["port"]: p for p in c.get("/api/ports").json()["ports"]}
        queue = c.get("/api/queue").json()
        status = c.get("/api/status").json()
    assert ports["port-01"]["percent"] == 63 and ports["port-02"]["attention"]
    assert queue["backlog"]["clips"] == 8 and queue["targets"]["primary"]["clips_left"] == 8
    assert {(a["level"], a["kind"]) for a in queue["alerts"]} == {
        ("alarm", "delivery_failed"), ("warning", "deadline")}
    assert queue["disk"]["free"] > 0 and status["alerts_open"] == 2
    assert status["clips_by_state"] == {"copied": 2, "discovered": 3, "signed": 3}


def test_non_loopback_refused_without_token_configured(dock):
    with _client(dock, REMOTE) as c:
        for path in ("/", "/api/ports", "/metrics", "/api/openapi.json"):
            r = c.get(path, headers={"Authorization": "Bearer anything"})
            assert r.status_code == 403, path
    with _client(dock, ("::ffff:127.0.0.1", 1)) as c:
        assert c.get("/api/ports").status_code == 200


def test_non_loopback_needs_the_bearer_token(dock):
    with _client(dock, REMOTE, token="s3cret-token") as c:
        assert c.get("/api/ports").status_code == 401
        assert c.get("/api/ports").headers["www-authenticate"].startswith("Bearer")
        assert c.get("/api/ports", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/ports", headers={"Authorization": "Basic s3cret-token"}
                     ).status_code == 401
        ok = c.get("/api/ports", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.json()["ports"]
    with _client(dock, LOCAL, token="s3cret-token") as c:  # loopback needs no token
        assert c.get("/api/ports").status_code == 200


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("testclient")
    assert not is_loopback(None) and not is_loopback("::ffff:10.0.0.1")


def test_read_only_methods_and_headers(dock):
    with _client(dock) as c:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert c.request(method, "/api/ports").status_code == 405
        r = c.get("/")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert c.get("/static/../web.py").status_code == 404
        assert c.get("/static/nope.js").status_code == 404


def test_pages_default_to_chinese_and_switch_to_english(dock):
    with _client(dock) as c:
        zh = c.get("/")
        en = c.get("/?lang=en")
        fleet = c.get("/fleet?lang=en")
        it = c.get("/it")
        js = c.get("/static/dockd.js")
        css = c.get("/static/dockd.css")
    assert zh.status_code == en.status_code == fleet.status_code == it.status_code == 200
    assert '<html lang="zh-CN">' in zh.text and "执法记录仪采集站" in zh.text
    assert '<html lang="en">' in en.text and "Done — safe to unplug" in en.text
    assert "Recorder fleet" in fleet.text and "采集站运行状况" in it.text
    assert "https://" not in zh.text + js.text + css.text  # no CDN: the dock is offline
    assert js.headers["content-type"].startswith("text/javascript")
    assert "/api/ports" in js.text


def test_missing_database_is_503_not_a_crash(tmp_path, dock):
    cfg = dock.cfg
    with TestClient(create_app(cfg, tmp_path / "none.db"), client=LOCAL,
                    base_url="http://localhost") as c:
        r = c.get("/api/ports")
        assert r.status_code == 503 and "state" in r.json()["error"]
        m = c.get("/metrics")
        assert m.status_code == 200 and "dockd_scrape_ok 0.0" in m.text


def test_start_web_serves_on_a_free_port_and_stops(dock):
    stop = threading.Event()
    handle = start_web(dock.cfg, dock.db, stop, port=0)
    assert handle is not None and handle.port > 0 and handle.host == "127.0.0.1"
    with urllib.request.urlopen(f"{handle.url}/api/status", timeout=10) as r:
        assert json.load(r)["dock"] == dock.cfg.dock.id
    stop.set()
    handle.thread.join(10)
    assert not handle.thread.is_alive()
    handle.stop()
    off = dataclasses.replace(dock.cfg, web=dataclasses.replace(dock.cfg.web, enabled=False))
    assert start_web(off, dock.db) is None


def test_port_in_use_is_an_error_and_leaks_no_socket() -> None:
    """A taken port (another dockd, another test) gives WebError; the socket dockd opened
    is closed, not left to the garbage collector (a ResourceWarning fails the suite)."""
    import gc
    import socket
    import sys

    from dockd.status.web import WebError, _bind

    leaked: list[object] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: leaked.append(u.exc_value)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            with pytest.raises(WebError, match="cannot listen"):
                _bind("127.0.0.1", taken.getsockname()[1])
            gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert leaked == []
