"""The command line's words in English and Chinese (``dockd --lang zh|en``; by default the
locale's language: ``LC_ALL``/``LC_MESSAGES``/``LANG`` starting with ``zh`` gives Chinese).

Only what people read goes through :func:`tr`; JSON output, logs and manifests stay in
English codes. Both catalogues carry the same keys (a test checks). The language is chosen
once per process by :func:`set_language` (the CLI's ``main``); library callers that never
choose get English.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

LANGUAGES = ("en", "zh")

TEXT: Mapping[str, Mapping[str, str]] = {
    "en": {
        "ingest.summary": "docking {docking}: {done}/{total} clip(s) delivered and verified to "
                          "{targets}",
        "ingest.known": ", {n} already delivered earlier",
        "ingest.problem": "  problem: {problem}",
        "ingest.findings": "scan findings ({n}):",
        "ingest.manifest": "manifest {sha}",
        "progress.start": "copying {n} clip(s), {size}",
        "progress.already": " ({n} already copied)",
        "progress.clip": "[{i}/{total}] copied {name}: {size} in {secs} s ({rate}/s); {overall}",
        "progress.partial": "  {name}: {percent}% of {size}; {overall}",
        "progress.overall": "overall {done}/{total} at {rate}/s, ETA {eta}",
        "progress.all": "all {n} clip(s)",
        "check.problems": "{where}: {n} problem(s):",
        "check.ok": "{where}: OK (dock {dock}, {targets} target(s), {profiles} profile(s))",
        "refuse": "dockd: {where}: {n} problem(s), not starting:",
        "error": "dockd: error: {error}",
        "status.ports": "dock {dock} - ports",
        "status.backlog": "backlog: {clips} clip(s), {size} not yet delivered",
        "status.backlog_empty": "backlog: empty - everything docked is delivered and verified",
        "status.errors": "delivery errors",
        "col.port": "port", "col.recorder": "recorder", "col.officer": "officer",
        "col.state": "state", "col.clips": "clips", "col.bytes": "bytes", "col.rate": "rate",
        "col.eta": "ETA", "col.delivered": "delivered", "col.note": "note",
        "col.copied": "copied", "col.docking": "docking", "col.states": "states",
        "col.deadline": "deadline", "col.left": "left", "col.clip": "clip",
        "col.target": "target", "col.attempts": "attempts", "col.error": "error",
        "port.empty": "empty", "port.identifying": "identifying", "port.copying": "copying",
        "port.checking": "checking", "port.done": "done - safe to unplug", "port.error": "ERROR",
        "clock.not_checked": "dock clock: not checked",
        "clock.synced": "dock clock: NTP-synchronised ({detail})",
        "clock.not_synced": "dock clock: NOT NTP-synchronised ({detail}): recorder clock "
                            "offsets may be wrong",
        "clock.unknown": "dock clock: NTP state unknown ({detail})",
        "devices.none": "no recorder docked yet",
        "devices.no_such": "no recorder {serial}",
        "devices.title": "recorders: {n}, not fit for the next shift: {unfit} ({zone})",
        "devices.zone": "times in {zone}",
        "col.fit": "fit", "col.officer_unit": "officer / unit", "col.batt": "batt.",
        "col.storage": "storage", "col.clock": "clock", "col.last_docked": "last docked",
        "col.pending": "pend.",
        "queue.targets": "targets",
        "queue.title": "delivery queue (earliest deadline first) - {level}",
        "col.required": "required", "col.throughput": "throughput",
        "col.clips_left": "clips left", "col.bytes_left": "bytes left",
        "col.forecast": "forecast", "col.status": "status",
        "yes": "yes", "no": "no", "not_measured": "not measured yet", "unknown": "unknown",
        "level.ok": "ok", "level.warning": "warning", "level.alarm": "alarm",
        "report.title": "docking {docking}: recorder {serial} ({officer}), {port}, docked "
                        "{docked}, clock {clock}",
        "report.not_analysed": "{title}: timeline not analysed yet ({state})",
        "report.from": "from ({zone})", "report.to": "to", "report.length": "length",
        "report.what": "what", "report.note": "spoken note / reason",
        "report.recording": "S{i} recording ({n} seg.)", "report.gap": "GAP",
        "report.new_session": "new session",
        "report.no_note_needed": "place/time changed: no note needed",
        "report.review": "  -> supervisor review",
        "report.need_review": "  {n} gap(s) need the supervisor's review",
        "report.finding": "  finding: {kind}: {message}",
        "report.none": "no dockings",
        "verdict.note": "spoken note", "verdict.no_reason": "speech but no reason given",
        "verdict.speech_unclassified": "speech found, reason unknown (no ASR model)",
        "verdict.no_note": "NO NOTE", "verdict.error": "could not check",
        "verdict.not_checked": "not checked (notes disabled)",
    },
    "zh": {
        "ingest.summary": "接入 {docking}：{done}/{total} 个文件已上传并校验（{targets}）",
        "ingest.known": "，{n} 个此前已上传",
        "ingest.problem": "  问题：{problem}",
        "ingest.findings": "扫描发现（{n} 项）：",
        "ingest.manifest": "清单 {sha}",
        "progress.start": "正在复制 {n} 个文件，共 {size}",
        "progress.already": "（{n} 个已复制）",
        "progress.clip": "[{i}/{total}] 已复制 {name}：{size}，用时 {secs} 秒（{rate}/s）；{overall}",
        "progress.partial": "  {name}：{percent}%，共 {size}；{overall}",
        "progress.overall": "总计 {done}/{total}，速度 {rate}/s，预计剩余 {eta}",
        "progress.all": "全部 {n} 个文件",
        "check.problems": "{where}：{n} 个问题：",
        "check.ok": "{where}：正确（采集站 {dock}，{targets} 个存储目标，{profiles} 个设备配置）",
        "refuse": "dockd：{where}：{n} 个问题，不启动：",
        "error": "dockd：错误：{error}",
        "status.ports": "采集站 {dock} — 端口",
        "status.backlog": "待上传：{clips} 个文件，{size}",
        "status.backlog_empty": "待上传：无 — 所有接入的文件均已上传并校验",
        "status.errors": "上传错误",
        "col.port": "端口", "col.recorder": "设备编号", "col.officer": "警员",
        "col.state": "状态", "col.clips": "文件", "col.bytes": "大小", "col.rate": "速度",
        "col.eta": "预计剩余", "col.delivered": "已上传", "col.note": "说明",
        "col.copied": "已复制", "col.docking": "接入", "col.states": "文件状态",
        "col.deadline": "上传期限", "col.left": "剩余时间", "col.clip": "文件",
        "col.target": "存储目标", "col.attempts": "尝试次数", "col.error": "错误",
        "port.empty": "空闲", "port.identifying": "正在识别", "port.copying": "正在复制",
        "port.checking": "正在检查", "port.done": "完成 — 可以拔出", "port.error": "错误",
        "clock.not_checked": "采集站时钟：未检查",
        "clock.synced": "采集站时钟：已经 NTP 同步（{detail}）",
        "clock.not_synced": "采集站时钟：未经 NTP 同步（{detail}）：测得的记录仪时钟误差可能不准",
        "clock.unknown": "采集站时钟：NTP 同步状态未知（{detail}）",
        "devices.none": "尚无记录仪接入",
        "devices.no_such": "没有记录仪 {serial}",
        "devices.title": "记录仪：{n} 台，不适合下一班：{unfit} 台（{zone}）",
        "devices.zone": "时间为 {zone}",
        "col.fit": "可用", "col.officer_unit": "警员 / 单位", "col.batt": "电量",
        "col.storage": "存储", "col.clock": "时钟", "col.last_docked": "最近接入",
        "col.pending": "待传",
        "queue.targets": "存储目标",
        "queue.title": "上传队列（最早到期在前）— {level}",
        "col.required": "必需", "col.throughput": "吞吐量",
        "col.clips_left": "剩余文件", "col.bytes_left": "剩余大小",
        "col.forecast": "预计完成", "col.status": "状况",
        "yes": "是", "no": "否", "not_measured": "尚未测量", "unknown": "未知",
        "level.ok": "正常", "level.warning": "警告", "level.alarm": "告警",
        "report.title": "接入 {docking}：记录仪 {serial}（{officer}），{port}，接入时间 "
                        "{docked}，时钟误差 {clock}",
        "report.not_analysed": "{title}：时间线尚未分析（{state}）",
        "report.from": "开始（{zone}）", "report.to": "结束", "report.length": "时长",
        "report.what": "内容", "report.note": "语音说明 / 原因",
        "report.recording": "S{i} 录像（{n} 段）", "report.gap": "中断",
        "report.new_session": "新的执法活动",
        "report.no_note_needed": "地点/时间已变：无需说明",
        "report.review": "  -> 需负责人复核",
        "report.need_review": "  {n} 处中断需负责人复核",
        "report.finding": "  发现：{kind}：{message}",
        "report.none": "没有接入记录",
        "verdict.note": "有语音说明", "verdict.no_reason": "有语音但未说明原因",
        "verdict.speech_unclassified": "有语音，原因未识别（无语音识别模型）",
        "verdict.no_note": "无语音说明", "verdict.error": "无法检查",
        "verdict.not_checked": "未检查（语音检查已关闭）",
    },
}

_current = ["en"]


def language_from_locale(env: Mapping[str, str] | None = None) -> str:
    """``zh`` when the locale says Chinese, else ``en`` (POSIX order: LC_ALL, LC_MESSAGES,
    LANG; LANGUAGE's first entry wins when set)."""
    env = os.environ if env is None else env
    for key in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = (env.get(key) or "").split(":")[0].strip().lower()
        if value and value not in ("c", "posix"):
            return "zh" if value.startswith("zh") else "en"
    return "en"


def set_language(lang: str) -> str:
    _current[0] = lang if lang in LANGUAGES else "en"
    return _current[0]


def language() -> str:
    return _current[0]


def tr(key: str, **values: object) -> str:
    """The text of ``key`` in the chosen language, ``{placeholders}`` filled."""
    text = TEXT[_current[0]].get(key) or TEXT["en"].get(key, key)
    return text.format(**values) if values else text
