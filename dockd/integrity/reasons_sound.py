"""Sound-alike matching of Chinese keywords, for transcripts with ASR homophones (issue 14).

Whisper writes what it hears: 电扯 for 电池, 阻脑 for 阻挠, 回复录像 for 恢复录像. A keyword
matches *by sound* where the transcript holds, in one run of Chinese characters, other
characters with the same toneless pinyin (pypinyin), after the usual "fuzzy pinyin"
merges (zh/z, ch/c, sh/s, n/l, -ng/-n).

Ordinary police talk is full of such near-homophones (组织/阻止, 一场/异常, 店员/电源,
鼓掌/故障, 回复/恢复, 终端/中断, 拉车/拉扯), so a sound-alike span counts only when
:func:`SoundIndex.find` finds it **not** to be an ordinary word: the heard characters, taken
as a whole, are not in the segmentation dictionary shipped with ``jieba`` (350 000 words).
ASR garbles (电扯, 阻脑, 只法记录一, 回复录像) are not words; real words are what the officer
said. Nor may an ordinary word cross the span's edge (领导 in 请事领导 keeps 事领 from
being heard as 失灵): the span must stand as a segment of its own. The caller adds the second guard (reasons.py): a sound-alike reason counts only next to
an exact interruption or recording word.

pypinyin and jieba are imported lazily; without them nothing matches by sound (logged once).
"""

from __future__ import annotations

import functools
import logging
import re
from importlib import resources

log = logging.getLogger(__name__)

_RUN = re.compile(r"[\u3400-\u9fff]+")
_INITIALS = (("zh", "z"), ("ch", "c"), ("sh", "s"))


def _merge(syllable: str) -> str:
    for long, short in _INITIALS:
        if syllable.startswith(long):
            syllable = short + syllable[len(long):]
            break
    if syllable.startswith("n") and len(syllable) > 1:
        syllable = "l" + syllable[1:]
    if syllable.endswith("ng") and len(syllable) > 2:
        syllable = syllable[:-1]
    return syllable


@functools.cache
def _pinyin_module() -> object | None:
    try:
        import pypinyin
    except ImportError:
        log.warning("pypinyin not installed: keywords are matched only as written")
        return None
    return pypinyin


@functools.lru_cache(maxsize=4096)
def syllables(run: str) -> tuple[str, ...]:
    """Merged toneless pinyin of a run of Chinese characters, one syllable per character."""
    pypinyin = _pinyin_module()
    if pypinyin is None:
        return ()
    out = pypinyin.lazy_pinyin(run, style=pypinyin.Style.NORMAL)  # type: ignore[attr-defined]
    if len(out) != len(run):  # not one syllable per character: do not guess
        return ()
    return tuple(_merge(s) for s in out)


@functools.cache
def _dictionary() -> frozenset[str]:
    """jieba's dictionary words of 2-6 characters (loaded once, ~1.5 s), or empty."""
    try:
        ref = resources.files("jieba").joinpath("dict.txt")
        with ref.open("r", encoding="utf-8") as fh:
            words = {w for w in (line.split(" ", 1)[0] for line in fh) if 2 <= len(w) <= 6}
    except (ImportError, ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        log.warning("jieba's dictionary is not available (%s): keywords are matched only "
                    "as written", exc)
        return frozenset()
    return frozenset(words)


def is_word(chars: str) -> bool:
    """True when ``chars`` is an ordinary dictionary word."""
    return chars in _dictionary()


def available() -> bool:
    return _pinyin_module() is not None and bool(_dictionary())


class SoundIndex:
    """The pinyin of one normalised transcript, for many keyword look-ups."""

    def __init__(self, text: str) -> None:
        self.runs = [(m.group(), syllables(m.group())) for m in _RUN.finditer(text)]

    def find(self, keyword: str) -> list[str]:
        """Spans of the transcript that sound like ``keyword`` but are written otherwise and
        are not ordinary words. Empty for keywords of fewer than two syllables."""
        if len(keyword) < 2 or not _RUN.fullmatch(keyword) or not available():
            return []
        want = syllables(keyword)
        if not want:
            return []
        n = len(want)
        found: list[str] = []
        for run, sy in self.runs:
            for i in range(len(sy) - n + 1):
                if sy[i:i + n] == want:
                    span = run[i:i + n]
                    if (span != keyword and span not in found and not is_word(span)
                            and not _straddled(run, i, i + n)):
                        found.append(span)
        return found


def _straddled(run: str, start: int, end: int) -> bool:
    """True when an ordinary word of ``run`` crosses the edge of ``run[start:end]``: the
    heard characters belong to other words (请示领导 heard as 请事领导 holds 领导, so its
    事领 is no 失灵)."""
    for j in range(max(0, start - 3), end):
        for length in (2, 3, 4):
            k = j + length
            if k > len(run) or k <= start:
                continue
            if (j < start or k > end) and is_word(run[j:k]):
                return True
    return False
