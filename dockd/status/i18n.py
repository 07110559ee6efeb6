"""Text of the web status pages, in Chinese (the default) and English.

Every word a page shows comes from :data:`MESSAGES`; the pages receive the catalogue of
their language as JSON and fill in ``{placeholders}`` themselves. The JSON API never
carries display text, only codes (``display``, ``problems[].code``), so a client in any
language can render it. Both catalogues must have the same keys (a test checks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

LANGUAGES: tuple[str, ...] = ("zh", "en")
DEFAULT_LANGUAGE = "zh"

MESSAGES: Mapping[str, Mapping[str, str]] = {
    "zh": {
        "html_lang": "zh-CN",
        "title.kiosk": "执法记录仪采集站",
        "title.fleet": "记录仪设备状况",
        "title.it": "采集站运行状况",
        "nav.kiosk": "端口",
        "nav.fleet": "设备",
        "nav.it": "运维",
        "lang.switch": "English",
        "lang.other": "en",
        "dock": "采集站 {dock}",
        "updated": "更新于 {time}",
        "offline": "与采集站服务的连接中断，正在重试…",
        "port": "端口 {port}",
        "display.empty": "空闲",
        "display.identifying": "正在识别…",
        "display.copying": "正在复制 {percent}%",
        "display.checking": "正在检查",
        "display.done": "完成 — 可以拔出",
        "display.charging": "仅充电（无新文件）",
        "display.incomplete": "采集未完成 — 请重新插入",
        "display.error": "错误",
        "officer": "警员",
        "serial": "设备编号",
        "battery": "电量 {value}%",
        "storage": "存储 剩余 {free} / {total}",
        "clips": "文件 {done}/{total}",
        "delivered": "已上传 {done}/{total}",
        "eta": "预计剩余 {eta}",
        "unknown": "未知",
        "attention": "请联系负责人",
        "problem.not_registered": "记录仪未登记（无警员信息）",
        "problem.gap_no_note": "录像中断但无语音说明 — 请找负责人",
        "problem.gap_review": "录像中断需复核 — 请找负责人",
        "problem.port_error": "采集出错：{detail}",
        "problem.copy_incomplete": "记录仪拔出时还有 {detail} 个文件未复制 — 请重新插入记录仪",
        "problem.finding_error": "文件异常：{detail}",
        "fleet.heading": "记录仪（不适合下一班的排在前面）",
        "fleet.fit": "可用",
        "fleet.unfit": "不适合下一班",
        "fleet.unknown": "未检查",
        "fleet.charging": "充电中",
        "fleet.maybe": "可用？（数据不全）",
        "fleet.thresholds": "标准：电量 ≥ {battery}%，剩余存储 ≥ {free}%，时钟误差 ≤ {clock} 秒",
        "col.status": "状况",
        "col.recorder": "设备编号",
        "col.officer": "警员",
        "col.unit": "单位",
        "col.battery": "电量",
        "col.storage": "剩余存储",
        "col.clock": "时钟误差",
        "col.firmware": "固件",
        "col.last_seen": "最近接入",
        "col.reasons": "原因",
        "col.docking": "接入",
        "col.port": "端口",
        "col.clips": "文件",
        "col.bytes": "大小",
        "col.deadline": "上传期限",
        "col.left": "剩余时间",
        "col.forecast": "预计完成",
        "col.level": "级别",
        "col.target": "存储目标",
        "col.throughput": "吞吐量",
        "col.required": "必需",
        "col.time": "时间",
        "col.kind": "类型",
        "col.subject": "对象",
        "col.message": "内容",
        "reason.battery_low": "电量低 {value}",
        "reason.storage_low": "存储空间不足 {value}",
        "reason.clock_off": "时钟误差 {value}",
        "reason.no_data": "无检测数据",
        "reason.charging": "充电中 {value}",
        "reason.filesystem": "文件系统异常 {value}",
        "reason.other": "{value}",
        "it.backlog": "待上传：{clips} 个文件，{bytes}",
        "it.level": "期限状态：{level}",
        "it.disk": "暂存盘剩余 {free}（{percent}%），总计 {total}",
        "it.disk_low": "暂存盘空间不足！",
        "it.deadlines": "上传期限预测（最早到期在前）",
        "it.targets": "存储目标",
        "it.alerts": "告警",
        "it.no_alerts": "无告警",
        "it.no_backlog": "没有待上传的文件",
        "it.incomplete": "采集未完成（记录仪在复制完成前被拔出）",
        "it.not_copied": "{n}/{total} 个未复制",
        "fleet.incomplete": "上次采集未完成 — 请重新插入",
        "it.clips_by_state": "文件状态：{states}",
        "level.ok": "正常",
        "level.warning": "警告",
        "level.alarm": "告警",
        "yes": "是",
        "no": "否",
        "not_measured": "尚未测量",
    },
    "en": {
        "html_lang": "en",
        "title.kiosk": "Recorder docking station",
        "title.fleet": "Recorder fleet",
        "title.it": "Dock operations",
        "nav.kiosk": "Ports",
        "nav.fleet": "Fleet",
        "nav.it": "IT",
        "lang.switch": "中文",
        "lang.other": "zh",
        "dock": "Dock {dock}",
        "updated": "updated {time}",
        "offline": "Lost connection to the dock service, retrying…",
        "port": "Port {port}",
        "display.empty": "Free",
        "display.identifying": "Identifying…",
        "display.copying": "Copying {percent} %",
        "display.checking": "Checking",
        "display.done": "Done — safe to unplug",
        "display.charging": "Charging only (nothing new)",
        "display.incomplete": "Copy incomplete — plug it back in",
        "display.error": "Error",
        "officer": "Officer",
        "serial": "Serial",
        "battery": "Battery {value} %",
        "storage": "Storage {free} free of {total}",
        "clips": "Clips {done}/{total}",
        "delivered": "Delivered {done}/{total}",
        "eta": "{eta} left",
        "unknown": "unknown",
        "attention": "See your supervisor",
        "problem.not_registered": "Recorder not registered (no officer assigned)",
        "problem.gap_no_note": "Gap without spoken note — see supervisor",
        "problem.gap_review": "Recording gap needs review — see supervisor",
        "problem.port_error": "Copy failed: {detail}",
        "problem.copy_incomplete": "Unplugged with {detail} clip(s) not copied — plug the recorder back in",
        "problem.finding_error": "File problem: {detail}",
        "fleet.heading": "Recorders (not fit for the next shift first)",
        "fleet.fit": "fit",
        "fleet.unfit": "NOT FIT for next shift",
        "fleet.unknown": "not checked",
        "fleet.charging": "charging",
        "fleet.maybe": "fit? (readings missing)",
        "fleet.thresholds": "Fit means: battery ≥ {battery} %, free storage ≥ {free} %, "
                            "clock off by ≤ {clock} s",
        "col.status": "Status",
        "col.recorder": "Recorder",
        "col.officer": "Officer",
        "col.unit": "Unit",
        "col.battery": "Battery",
        "col.storage": "Free storage",
        "col.clock": "Clock offset",
        "col.firmware": "Firmware",
        "col.last_seen": "Last docked",
        "col.reasons": "Reasons",
        "col.docking": "Docking",
        "col.port": "Port",
        "col.clips": "Clips",
        "col.bytes": "Size",
        "col.deadline": "Deadline",
        "col.left": "Time left",
        "col.forecast": "Forecast done",
        "col.level": "Level",
        "col.target": "Target",
        "col.throughput": "Throughput",
        "col.required": "Required",
        "col.time": "Time",
        "col.kind": "Kind",
        "col.subject": "Subject",
        "col.message": "Message",
        "reason.battery_low": "battery low {value}",
        "reason.storage_low": "storage nearly full {value}",
        "reason.clock_off": "clock off by {value}",
        "reason.no_data": "no health data",
        "reason.charging": "charging {value}",
        "reason.filesystem": "filesystem errors {value}",
        "reason.other": "{value}",
        "it.backlog": "Not yet delivered: {clips} clip(s), {bytes}",
        "it.level": "Deadlines: {level}",
        "it.disk": "Staging disk: {free} free ({percent} %) of {total}",
        "it.disk_low": "Staging disk low!",
        "it.deadlines": "Deadline forecast (earliest first)",
        "it.targets": "Targets",
        "it.alerts": "Alerts",
        "it.no_alerts": "No open alerts",
        "it.no_backlog": "Nothing waiting for delivery",
        "it.incomplete": "Incomplete copies (recorder pulled before every clip was copied)",
        "it.not_copied": "{n}/{total} not copied",
        "fleet.incomplete": "last copy incomplete — plug it back in",
        "it.clips_by_state": "Clips by state: {states}",
        "level.ok": "OK",
        "level.warning": "WARNING",
        "level.alarm": "ALARM",
        "yes": "yes",
        "no": "no",
        "not_measured": "not measured yet",
    },
}


def pick_language(requested: str | None, default: str = DEFAULT_LANGUAGE,
                  accept: Iterable[str] = LANGUAGES) -> str:
    """The page language: ``requested`` (``?lang=``) when known, else ``default``, else zh."""
    allowed = tuple(accept)
    if requested:
        code = requested.strip().lower()[:2]
        if code in allowed:
            return code
        log.debug("unknown page language %r, using %s", requested, default)
    return default if default in allowed else DEFAULT_LANGUAGE


def catalog(lang: str) -> dict[str, str]:
    """The whole text table of ``lang`` (what a page embeds)."""
    return dict(MESSAGES[pick_language(lang)])


def translate(key: str, lang: str, **values: object) -> str:
    """One text, with ``{placeholders}`` filled; an unknown key comes back as itself."""
    text = MESSAGES[pick_language(lang)].get(key)
    if text is None:
        log.warning("no text for %r in %s", key, lang)
        return key
    try:
        return text.format(**values) if values else text
    except (KeyError, IndexError):
        return text


def missing_keys() -> dict[str, set[str]]:
    """Keys present in one language but not in another (empty when the catalogues agree)."""
    all_keys = set().union(*(MESSAGES[lang].keys() for lang in LANGUAGES))
    return {lang: all_keys - set(MESSAGES[lang]) for lang in LANGUAGES
            if all_keys - set(MESSAGES[lang])}
