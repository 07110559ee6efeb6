"""The kiosk page in a real headless Chromium, served by a real daemon docking simulated
recorders: the tiles go from empty through the work to "done - safe to unplug", a gap
without a spoken note turns a tile red; 25 ports fit one screen at 1024x600 and 1920x1080;
Chinese pages carry no English and show times in the dock's zone. Screenshots go to a
temporary directory; ``DOCKD_REFRESH_DOCS_IMG=1`` writes them to docs/img/ for the README.

Needs Debian's ``chromium`` (set-up installs ``chromium chromium-driver fonts-wqy-microhei``)
and the Python ``playwright`` package (never ``playwright install``: the browser is Debian's).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockd.config import Config, for_workdir
from dockd.daemon import Daemon
from dockd.devices.simulator import RecorderSpec, plug, simulate_recorder
from dockd.integrity.keys import generate_key
from dockd.status.web import WebHandle, start_web
from dockd.store import State

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
VIEWPORT = {"width": 1024, "height": 600}

# records every state each tile shows (tiles are re-rendered on each poll)
OBSERVE = """() => {
  window.__seen = {};
  const note = () => document.querySelectorAll("section.tile").forEach(t => {
    const s = (window.__seen[t.dataset.port] = window.__seen[t.dataset.port] || []);
    if (s[s.length - 1] !== t.dataset.display) { s.push(t.dataset.display); }
  });
  note();
  new MutationObserver(note).observe(document.getElementById("main"),
                                     {childList: true, subtree: true});
}"""


def _browser_or_fail() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install the Debian packages `chromium "
                    "chromium-driver fonts-wqy-microhei` (scripts/setup.sh test does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package `playwright` is missing (pip install playwright; "
                    "do not run `playwright install`, Debian's chromium is used)")
    return sync_playwright


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[tuple[Config, WebHandle]]:
    cfg = for_workdir(tmp_path / "w")
    cfg = dataclasses.replace(
        cfg, dock=dataclasses.replace(cfg.dock, ports=3),
        web=dataclasses.replace(cfg.web, port=0),
        offload=dataclasses.replace(cfg.offload, settle_seconds=0.3))
    generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
    state = State(cfg.paths.database)
    daemon = Daemon(cfg, state=state, install_signals=False)
    thread = threading.Thread(target=daemon.run, name="test-daemon", daemon=True)
    thread.start()
    assert daemon.ready.wait(30), "daemon did not start"
    web = start_web(cfg, cfg.paths.database, daemon.stop_event, port=0)
    assert web is not None
    try:
        yield cfg, web
    finally:
        daemon.request_stop()
        thread.join(60)
        web.stop()
        state.close()


def _recorders(cfg: Config, where: Path) -> list[tuple[int, Path]]:
    specs = [
        (1, RecorderSpec(serial="A1234567", officer_no="012345", officer_name="张三",
                         battery=92, segments=3, segment_seconds=1.0)),
        (2, RecorderSpec(serial="B7654321", officer_no="023456", officer_name="李四",
                         battery=41, segments=3, segment_seconds=1.0, gaps={2: 95.0})),
    ]
    out = []
    for port, spec in specs:
        sim = simulate_recorder(where / spec.serial, spec, profile=cfg.profiles[0], tz=cfg.tz,
                                tools=cfg.tools)
        out.append((port, sim.root))
    return out


@pytest.fixture
def img_dir(tmp_path: Path) -> Iterator[Path]:
    """Where screenshots go: docs/img/ only when asked (DOCKD_REFRESH_DOCS_IMG=1); the
    documentation's images are never rewritten by an ordinary test run."""
    if os.environ.get("DOCKD_REFRESH_DOCS_IMG") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        yield DOCS_IMG
        return
    before = {p.name: p.stat().st_mtime_ns for p in DOCS_IMG.glob("*")} \
        if DOCS_IMG.exists() else {}
    out = tmp_path / "img"
    out.mkdir()
    yield out
    after = {p.name: p.stat().st_mtime_ns for p in DOCS_IMG.glob("*")} \
        if DOCS_IMG.exists() else {}
    assert after == before, "a test wrote into docs/img/"


def _tile(page: Any, port: str) -> Any:
    return page.locator(f'section.tile[data-port="{port}"]')


def test_kiosk_tiles_follow_a_docking_until_safe_to_unplug(dock, tmp_path, img_dir):
    sync_playwright = _browser_or_fail()
    cfg, web = dock
    trees = _recorders(cfg, tmp_path / "sim")
    IMG = img_dir
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT, locale="zh-CN")
            page.goto(f"{web.url}/?poll=200")
            page.wait_for_selector('section.tile[data-port="port-03"]', timeout=15000)
            assert _tile(page, "port-01").get_attribute("data-display") == "empty"
            assert "空闲" in _tile(page, "port-01").inner_text()
            page.evaluate(OBSERVE)
            for port, root in trees:
                plug(root, cfg.paths.ports_dir, port)
            page.wait_for_selector('section.tile[data-port="port-01"][data-display="done"]',
                                   timeout=90000)
            page.wait_for_selector('section.tile[data-port="port-02"][data-display="done"]'
                                   '[data-attention="1"]', timeout=60000)
            seen = page.evaluate("() => window.__seen")
            p1 = seen["port-01"]
            assert p1[0] == "empty" and p1[-1] == "done", seen
            assert {"identifying", "copying", "checking"} & set(p1), seen
            assert "error" not in p1, seen
            t1 = _tile(page, "port-01").inner_text()
            assert "完成 — 可以拔出" in t1 and "张三" in t1 and "A1234567" in t1
            assert "电量 92%" in t1 and "存储" in t1
            t2 = _tile(page, "port-02").inner_text()
            assert "录像中断但无语音说明" in t2 and "李四" in t2
            # said once: may be unplugged, and the finding needs the supervisor
            assert "可以拔出 — 请找负责人" in t2 and "完成 — 可以拔出" not in t2
            assert "请联系负责人" not in t2 and t2.count("负责人") == 1
            assert "attention" in (_tile(page, "port-02").get_attribute("class") or "")
            page.screenshot(path=str(IMG / "kiosk-zh.png"))

            page.click("#lang")  # the toggle
            page.wait_for_selector("body[data-loaded='1'] section.tile[data-display='done']")
            assert "lang=en" in page.url
            t1 = _tile(page, "port-01").inner_text()
            assert "Done — safe to unplug" in t1 and "Battery 92 %" in t1
            assert "Gap without spoken note" in _tile(page, "port-02").inner_text()
            page.screenshot(path=str(IMG / "kiosk-en.png"))

            page.goto(f"{web.url}/fleet?lang=en")
            page.wait_for_selector("tr[data-serial]")
            rows = page.locator("tr[data-serial]")
            # battery 41 %: not fit yet, charging (within health.charging_minutes): listed first
            assert rows.first.get_attribute("data-serial") == "B7654321"
            assert "charging 41%" in rows.first.inner_text()
            page.screenshot(path=str(IMG / "fleet-en.png"))
            page.goto(f"{web.url}/it?lang=en")
            page.wait_for_selector("body[data-loaded='1'] .cards")
            assert "Staging disk" in page.inner_text("main")
            page.screenshot(path=str(IMG / "it-en.png"))
        finally:
            browser.close()
    for name in ("kiosk-zh.png", "kiosk-en.png"):
        assert 5_000 < (IMG / name).stat().st_size < 400_000


def _dock_of_25(workdir: Path) -> tuple[Config, Path]:
    """The hand-built dock of test_status_data (copying, done with a finding, charging,
    error, empty), repeated over 25 ports, as a Chinese station docks them."""
    from dockd.store import State as _State
    from tests.integration.test_status_data import build_dock

    d = build_dock(workdir)
    cfg = dataclasses.replace(d.cfg, dock=dataclasses.replace(d.cfg.dock, ports=25))
    st = _State(d.db)
    rows = {r["port"]: r for r in st.query("SELECT * FROM ports")}
    for n in range(6, 26):
        src = dict(rows[f"port-{(n - 1) % 5 + 1:02d}"])
        src.pop("port")
        src.pop("updated_at", None)
        st.set_port(f"port-{n:02d}", **src)
    st.set_port("port-06", state="error", error="CopyError: stopped")
    st.close()
    return cfg, d.db


@pytest.mark.parametrize("viewport", [{"width": 1024, "height": 600},
                                      {"width": 1920, "height": 1080}])
def test_kiosk_shows_25_ports_without_scrolling(tmp_path, viewport, img_dir):
    sync_playwright = _browser_or_fail()
    cfg, db = _dock_of_25(tmp_path / "w")
    web = start_web(cfg, db, port=0)
    assert web is not None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport=viewport, locale="zh-CN")
                page.goto(f"{web.url}/?poll=500")
                page.wait_for_selector('section.tile[data-port="port-25"]', timeout=15000)
                page.wait_for_selector("body[data-loaded='1']")
                boxes = page.evaluate("""() => [...document.querySelectorAll('section.tile')]
                  .map(t => { const r = t.getBoundingClientRect(),
                                    b = t.querySelector('.big').getBoundingClientRect();
                    return {port: t.dataset.port, x: r.x, y: r.y, r: r.right, b: r.bottom,
                            bigBottom: b.bottom, bigRight: b.right, text: t.innerText}; })""")
                assert len(boxes) == 25
                w, h = viewport["width"], viewport["height"]
                for bx in boxes:
                    assert bx["x"] >= 0 and bx["y"] >= 0, bx
                    assert bx["r"] <= w and bx["b"] <= h, (viewport, bx)
                    # the tile's state line is not cut off inside the tile
                    assert bx["bigBottom"] <= bx["b"] and bx["bigRight"] <= bx["r"] + 1, bx
                scroll = page.evaluate("() => [document.documentElement.scrollHeight, "
                                       "document.documentElement.scrollWidth]")
                assert scroll[0] <= h and scroll[1] <= w, scroll
                texts = {bx["port"]: bx["text"] for bx in boxes}
                for port, text in texts.items():
                    assert not ("完成 — 可以拔出" in text and "负责人" in text), (port, text)
                # port-02 (and 07, 12, ...): done, a gap without a note, 0/3 uploaded
                assert "可以拔出 — 请找负责人" in texts["port-07"]
                assert "已上传 0/3，采集站继续上传" in texts["port-07"]
                # raw daemon English never reaches the Chinese tile
                assert "采集被中断（采集站服务停止）" in texts["port-06"]
                assert "stopped" not in texts["port-06"]
                import re

                for port, text in texts.items():  # no English words on the Chinese page
                    words = set(re.findall(r"[A-Za-z]{3,}", text)) - {"GiB", "MiB", "KiB"}
                    assert not words, (port, words, text)
                page.screenshot(path=str(img_dir / f"kiosk-25-{w}x{h}.png"))
            finally:
                browser.close()
    finally:
        web.stop()


def test_chinese_it_and_fleet_pages_have_no_english_and_zoned_times(tmp_path, img_dir):
    sync_playwright = _browser_or_fail()
    cfg, db = _dock_of_25(tmp_path / "w")
    web = start_web(cfg, db, port=0)
    assert web is not None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900},
                                        locale="en-US", timezone_id="America/New_York")
                page.goto(f"{web.url}/it?lang=zh&poll=500")
                page.wait_for_selector("body[data-loaded='1'] .cards")
                main = page.inner_text("main")
                assert "文件状态：" in main
                for english in ("delivered", "discovered", "signed", "copied", "deadline",
                                "forecast", "waiting", "failed permanently"):
                    assert english not in main.replace("delivery_failed", ""), english
                assert "上传期限" in main
                # times in the dock's zone (Asia/Shanghai, UTC+8) with the zone named, not in
                # the browser's (New York) and not raw ISO
                assert "GMT+8" in main and "GMT-5" not in main
                assert not __import__("re").search(r"\d{4}-\d\d-\d\dT\d\d:", main)
                assert "GMT+8" in page.inner_text("#clock")
                page.screenshot(path=str(img_dir / "it-zh.png"))
                page.goto(f"{web.url}/fleet?lang=zh&poll=500")
                page.wait_for_selector("tr[data-serial]")
                fleet = page.inner_text("main")
                assert "GMT+8" in fleet
                for english in ("unknown", "charging", "NTP-synchronised", "corrected"):
                    assert english not in fleet, english
            finally:
                browser.close()
    finally:
        web.stop()


def test_kiosk_says_plug_it_back_in_after_an_unplug_mid_copy(dock, tmp_path):
    """Issue #12 defect 1: a recorder pulled mid-copy leaves "copy incomplete — plug it back
    in" on its tile, also after the partial docking is signed and delivered, until the
    recorder is back; then the tile follows the new docking to "done"."""
    from dockd.devices.simulator import unplug

    sync_playwright = _browser_or_fail()
    cfg, web = dock
    spec = RecorderSpec(serial="C1111111", officer_no="034567", officer_name="王五",
                        segments=8, segment_seconds=1.0, target_size=96 * 1024 * 1024)
    incoming = cfg.paths.ports_dir / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    root = simulate_recorder(incoming / "c", spec, profile=cfg.profiles[0], tz=cfg.tz,
                             tools=cfg.tools).root

    def db(sql: str) -> list[dict[str, Any]]:
        with State(cfg.paths.database) as s:
            return s.query(sql)

    def wait_db(pred: Any, what: str, timeout: float = 90) -> None:
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT, locale="zh-CN")
            page.goto(f"{web.url}/?poll=200")
            page.wait_for_selector('section.tile[data-port="port-01"]', timeout=15000)
            plug(root, cfg.paths.ports_dir, 1)
            wait_db(lambda: 0 < len(db("SELECT 1 FROM clips WHERE state != 'discovered'")) < 8,
                    "some clips copied")
            kept = tmp_path / "pulled"
            unplug(cfg.paths.ports_dir, 1, keep_to=incoming / "pulled")
            page.wait_for_selector('section.tile[data-port="port-01"][data-display="incomplete"]',
                                   timeout=30000)
            # signing and delivering the part that was copied does not turn it green
            wait_db(lambda: db("SELECT 1 FROM dockings WHERE state = 'delivered'"),
                    "partial docking delivered")
            page.wait_for_timeout(600)  # a few polls
            tile = _tile(page, "port-01")
            assert tile.get_attribute("data-display") == "incomplete"
            text = tile.inner_text()
            assert "采集未完成 — 请重新插入" in text and "王五" in text, text
            assert "请重新插入记录仪" in text and "完成 — 可以拔出" not in text, text
            page.screenshot(path=str(tmp_path / "kiosk-incomplete.png"))
            plug(incoming / "pulled", cfg.paths.ports_dir, 1)
            page.wait_for_selector('section.tile[data-port="port-01"][data-display="done"]',
                                   timeout=90000)
            assert "请重新插入" not in _tile(page, "port-01").inner_text()
            assert not kept.exists()
        finally:
            browser.close()
