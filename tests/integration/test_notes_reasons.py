"""Reason lexicon and classification (dockd.integrity.reasons): pure, no model needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- sound-alike matching and its guards (issue 14) -------------------------------------

# Ordinary police talk with the near-homophones of interruption and reason words. Each
# sentence also names the recording (录像, 记录仪, 继续, ...) where it can, the hardest case
# for the guards: the sentence is "about the recording", yet gives no reason.
HOMOPHONE_TALK = [
    ("组织", "阻止", "这边组织一下，把车挪到路边，录像继续。"),
    ("组织", "阻止", "这个组织涉嫌非法集资，我们依法进行调查。"),
    ("一场", "异常", "刚才那一场纠纷是怎么回事，你们慢慢说，我们在录像。"),
    ("一场", "异常", "今晚体育馆有一场演唱会，大家提前做好安保准备。"),
    ("店员", "电源", "请店员过来一下，把店里的监控调出来，记录仪在录像。"),
    ("店员", "电源", "店员说这个人刚才在店里偷了两瓶酒，监控都拍到了。"),
    ("鼓掌", "故障", "大家鼓掌欢迎，今天我们来社区做宣传，全程录像。"),
    ("回复", "恢复", "这件事我们会尽快回复你，请留下联系电话。"),
    ("回复", "恢复", "你先回复一下队里的消息，我们接着巡逻。"),
    ("终端", "中断", "用警务终端查一下这个人的身份信息和违章记录。"),
    ("终端", "中断", "警务终端显示这辆车已经报废了，需要扣留，录像留存。"),
    ("拉车", "拉扯", "那个拉车的师傅，麻烦你把三轮车停到边上去，接着说。"),
    ("拉车", "拉扯", "刚才他们拉车的时候把路边的车刮了，双方都在这里。"),
]


@pytest.mark.parametrize(("heard", "word", "text"), HOMOPHONE_TALK)
def test_homophones_in_ordinary_talk_stay_unflagged(heard: str, word: str, text: str) -> None:
    from dockd.integrity import reasons_sound

    # the pair really sounds alike (the guard, not the pinyin, keeps it out) ...
    assert reasons_sound.syllables(heard) == reasons_sound.syllables(word)
    assert heard in text and word not in text
    # ... and the talk gives no reason and says nothing of an interruption
    got = reasons.analyse(text, "zh")
    assert got.reason is None, got
    assert not got.heard_as


@pytest.mark.parametrize(("text", "want", "heard"), [
    # ASR garbles (not words) next to a written interruption word: heard, marked for review
    ("现场有人阻脑执法，录像中断，现在继续录像。", "obstruction", "阻脑≈阻挠"),
    ("刚才设备出现鼓障，录像中断，现在恢复。", "device_fault", "鼓障≈故障"),
])
def test_sound_alike_reason_next_to_an_interruption_word(text: str, want: str,
                                                         heard: str) -> None:
    got = reasons.analyse(text, "zh")
    assert got.reason == want and heard in got.heard_as
    assert got.review and "by sound" in got.review[0]
    assert got.confidence < reasons.analyse(text.replace(*heard.split("≈")), "zh").confidence


def test_sound_alike_without_interruption_or_recording_word_is_ignored() -> None:
    assert reasons.analyse("有人阻脑执法", "zh").reason is None
    assert reasons.analyse("有人阻挠执法，录像中断", "zh").reason == "obstruction"


def test_interruption_heard_by_sound_is_other_for_review() -> None:
    got = reasons.analyse("刚才回复录像了。", "zh")  # 回复录像 is no word: 恢复录像 misheard
    assert got.reason == "other" and got.review and "by sound" in got.review[0]


def test_reason_needs_a_word_about_the_recording() -> None:
    for talk in ("今天天气预报说有雨，巡逻的时候注意安全。", "你这个电动车电瓶是从哪儿买的？",
                 "这辆车发动机故障了，叫拖车吧。", "你不要阻碍交通。"):
        assert reasons.analyse(talk, "zh").reason is None, talk
    assert reasons.analyse("雨太大，停了一会，现在接着录。", "zh").reason == "weather"


def test_other_and_rival_reasons_are_marked_for_review() -> None:
    assert reasons.analyse("录像中断了，现在恢复。", "zh").review == ("no known reason named",)
    got = reasons.analyse("暴雨天气导致设备进水故障，录像中断", "zh")
    assert got.reason in ("weather", "device_fault") and any("other reasons" in r
                                                             for r in got.review)
    assert reasons.analyse("电池没电了，录像中断", "zh").review == ()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(
    ["组织", "一场", "店员", "鼓掌", "回复", "警务终端", "拉车", "你好", "请", "出示", "证件",
     "我们", "派出所", "现场", "大家", "一下", "监控", "师傅", "消息", "，", "。"]),
    min_size=1, max_size=12))
def test_ordinary_talk_of_homophones_never_gets_a_reason(words: list[str]) -> None:
    assert reasons.analyse("".join(words), "zh").reason is None


def test_a_fault_that_was_prevented_is_no_fault() -> None:
    got = reasons.analyse("因突降暴雨，为防止设备进水，录像暂停，现在恢复录像。", "zh")
    assert got.reason == "weather" and "进水" not in got.matched
    assert reasons.analyse("设备进水了，录像中断，现在恢复。", "zh").reason == "device_fault"
