"""Reason lexicon and classification (dockd.integrity.reasons): pure, no model needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dockd.integrity import reasons
from dockd.integrity.reasons import REASONS, Classification, Lexicon, classify, normalise

# What Whisper base actually answered for the fixture notes (traditional characters and
# mis-heard words included), then clean texts.
WHISPER_ANSWERS = [
    ("由於直髮記錄一電量不足,錄像中斷,現在更換電池後恢復錄像。", "zh", "battery"),
    ("因存儲空間不足,記錄中斷,限以清理空間繼續落向。", "zh", "storage"),
    ("剛才設備出現故障,步向中斷,現在重新開始記錄", "zh", "device_fault"),
    ("由于暴雨天气恶劣,路向中断,现在恢复记录。", "zh", "weather"),
    ("現場有人阻撓指法,錄像被迫中斷,現在繼續錄像。", "zh", "obstruction"),
    ("現在開始對現場進行檢查請出示營業執政", "zh", None),
    ("Recording interrupted, because the battery was low. Resuming recording how.", "en",
     "battery"),
]


@pytest.mark.parametrize(("text", "lang", "want"), WHISPER_ANSWERS)
def test_whisper_answers(text: str, lang: str, want: str | None) -> None:
    got = classify(text, lang)
    assert got.reason == want
    if want:
        assert 0.5 <= got.confidence <= 1.0 and got.matched
    else:
        assert got == Classification(None, 0.0, ())


@pytest.mark.parametrize(("text", "lang", "want"), [
    ("录像中断了，现在恢复。", "zh", "other"),
    ("SD 卡 满了，换卡后继续", "zh", "storage"),
    ("記憶體已滿，現在繼續錄", "zh", "storage"),
    ("颱風太大，錄像中斷", "zh", "weather"),
    ("执法仪死机了", "zh", "device_fault"),
    ("对方抢夺执法记录仪", "zh", "obstruction"),
    ("The SD card was full, resuming now.", "en", "storage"),
    ("The camera froze and I had to reboot it", "en", "device_fault"),
    ("Heavy rain, recording paused.", "en", "weather"),
    ("A man grabbed the camera.", "en", "obstruction"),
    ("Recording was interrupted. Resuming.", "en", "other"),
    ("Please show me your licence.", "en", None),
    ("He walked around the block in charge of the dog.", "en", None),
    ("", "zh", None),
    ("   ", "en", None),
])
def test_examples(text: str, lang: str, want: str | None) -> None:
    assert classify(text, lang).reason == want


def test_unpacks_as_a_tuple() -> None:
    reason, confidence, matched = classify("电池没电了，录像中断", "zh")
    assert reason == "battery" and confidence == 1.0
    assert matched == ("电池", "没电", "中断", "录像中断", "录像")


def test_unknown_language_tries_every_lexicon() -> None:
    assert classify("battery low, recording again", None).reason == "battery"
    assert classify("电量不足，录像中断", "zh-CN").reason == "battery"
    assert classify("电量不足，录像中断", "fr").reason == "battery"


def test_most_keywords_win_and_confidence_drops_when_reasons_compete() -> None:
    got = classify("暴雨天气导致设备进水故障", "zh")
    assert got.reason == "device_fault"  # 进水 + 故障 against 暴雨 + 天气: tie-break order
    assert got.confidence < 0.6


def test_normalise() -> None:
    assert normalise("錄像 中斷，現在 恢復") == "录像中断,现在恢复"
    assert normalise("Ｂａｔｔｅｒｙ  Low") == "battery  low"


def test_fallback_table_without_opencc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reasons, "_opencc_t2s", lambda: None)
    assert reasons.to_simplified("電量不足，錄像中斷") == "电量不足，录像中断"
    for text, lang, want in WHISPER_ANSWERS:
        assert classify(text, lang).reason == want


def test_shipped_lexicon_covers_every_reason_in_both_languages() -> None:
    lex = Lexicon.load()
    assert tuple(lex.reasons) == REASONS
    for per_lang in lex.reasons.values():
        assert set(per_lang) == {"zh", "en"} and all(per_lang.values())
    # Every Chinese keyword survives normalisation unchanged (it is simplified already).
    for per_lang in [*lex.reasons.values(), lex.interruption]:
        for kw in per_lang["zh"]:
            assert normalise(kw) == kw


def test_custom_lexicon_file(tmp_path: Path) -> None:
    f = tmp_path / "lex.toml"
    f.write_text('[reasons.battery]\nzh = ["没电"]\n[interruption]\nzh = ["中断"]\n'
                 '[hotwords]\nzh = "没电  中断"\n', encoding="utf-8")
    lex = Lexicon.load(f)
    assert classify("电量不足，中断", "zh", lex).reason == "other"
    assert classify("没电了，中断", "zh", lex).reason == "battery"
    assert classify("没电了", "zh", lex).reason is None  # no word about the recording
    assert reasons.hotwords("zh", lex) == "没电 中断" and reasons.hotwords("en", lex) is None


def test_bad_lexicon_reports_every_problem() -> None:
    with pytest.raises(ValueError) as exc:
        Lexicon.from_dict({"reasons": {"aliens": {"zh": ["x"]}, "battery": {"zh": "电池"}},
                           "extra": 1})
    msg = str(exc.value)
    assert "reasons.aliens" in msg and "reasons.battery.zh" in msg and "extra" in msg


def test_core_imports_without_faster_whisper_numpy_or_opencc() -> None:
    code = (
        "import sys\n"
        "for m in ('faster_whisper', 'numpy', 'opencc', 'ctranslate2', 'onnxruntime'):\n"
        "    sys.modules[m] = None\n"
        "from dockd.integrity import continuity, notes, reasons\n"
        "assert reasons.classify('電量不足，錄像中斷', 'zh').reason == 'battery'\n"
        "r = notes.NoteAnalyzer().analyze('/nonexistent.mp4')\n"
        "assert r.verdict == 'error', r\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
