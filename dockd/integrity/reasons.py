"""Classify the reason an officer gives for an interruption (rule R2) from a transcript.

The keywords live in ``dockd/data/reasons.toml`` (one list per reason and language), so an
agency can read and extend them without touching code. Chinese transcripts are normalised
to simplified characters first: Whisper often answers in traditional ones (由於…電量不足).

``classify(text, language)`` returns a :class:`Classification` (a named tuple, so it also
unpacks as ``reason, confidence, matched``):

- ``reason`` is one of :data:`REASONS` (``battery``, ``storage``, ``device_fault``,
  ``weather``, ``obstruction``) when a reason keyword matched;
- ``"other"`` when the text speaks of the interruption (中断/暂停/恢复, interrupted,
  resuming, ...) but names no known reason;
- ``None`` when nothing matched: speech, but no reason given.

``confidence`` is a heuristic in [0, 1] about the keyword evidence only (not the ASR).
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from . import reasons_sound

log = logging.getLogger(__name__)

REASONS: tuple[str, ...] = ("battery", "storage", "device_fault", "weather", "obstruction")
OTHER = "other"
ALL_REASONS: tuple[str, ...] = (*REASONS, OTHER)

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_SPACES = re.compile(r"\s+")


class Classification(NamedTuple):
    reason: str | None
    confidence: float
    matched: tuple[str, ...]


@dataclass(frozen=True)
class Lexicon:
    """Keywords per reason and language, plus the interruption words."""

    reasons: dict[str, dict[str, tuple[str, ...]]]
    """reason -> language -> keywords, in tie-break order."""
    interruption: dict[str, tuple[str, ...]]
    fallback_t2s: dict[str, str]
    context: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """language -> words that show the speech is about the recording (see reasons.toml)."""
    hotwords: dict[str, str] = field(default_factory=dict)
    """language -> hotwords handed to Whisper."""

    @property
    def languages(self) -> frozenset[str]:
        langs = set(self.interruption)
        for per_lang in self.reasons.values():
            langs.update(per_lang)
        return frozenset(langs)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Lexicon:
        """Build from the parsed TOML; every problem is reported at once."""
        problems: list[str] = []

        def words(value: Any, where: str) -> dict[str, tuple[str, ...]]:
            if not isinstance(value, dict):
                problems.append(f"{where}: expected a table of language = [keywords]")
                return {}
            out: dict[str, tuple[str, ...]] = {}
            for lang, kws in value.items():
                if not (isinstance(kws, list) and all(isinstance(k, str) and k for k in kws)):
                    problems.append(f"{where}.{lang}: expected a list of non-empty strings")
                    continue
                out[lang] = tuple(k.lower() for k in kws)
            return out

        reasons_raw = data.get("reasons", {})
        reasons: dict[str, dict[str, tuple[str, ...]]] = {}
        if not isinstance(reasons_raw, dict):
            problems.append("reasons: expected a table")
            reasons_raw = {}
        for name, table in reasons_raw.items():
            if name not in REASONS:
                problems.append(f"reasons.{name}: unknown reason (known: {', '.join(REASONS)})")
                continue
            reasons[name] = words(table, f"reasons.{name}")
        interruption = words(data.get("interruption", {}), "interruption")
        context = words(data.get("context", {}), "context")
        hotwords = data.get("hotwords", {})
        if not (isinstance(hotwords, dict) and all(isinstance(v, str) for v in hotwords.values())):
            problems.append("hotwords: expected a table of language = \"words\"")
            hotwords = {}
        pairs = data.get("fallback_t2s", {}).get("pairs", "")
        if not isinstance(pairs, str) or len(pairs) % 2:
            problems.append("fallback_t2s.pairs: expected a string of (traditional, simplified) pairs")
            pairs = ""
        unknown = set(data) - {"version", "reasons", "interruption", "context", "hotwords",
                               "fallback_t2s"}
        problems.extend(f"{key}: unknown key" for key in sorted(unknown))
        if problems:
            raise ValueError(f"invalid reason lexicon {source}:\n  " + "\n  ".join(problems))
        return cls(reasons=reasons, interruption=interruption,
                   fallback_t2s={pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)},
                   context=context, hotwords={k: " ".join(v.split()) for k, v in hotwords.items()})

    @classmethod
    def load(cls, path: Path | None = None) -> Lexicon:
        """Read ``path``, or the lexicon shipped in ``dockd/data/reasons.toml``."""
        if path is None:
            return default_lexicon()
        with open(path, "rb") as fh:
            return cls.from_dict(tomllib.load(fh), str(path))


@functools.cache
def default_lexicon() -> Lexicon:
    ref = resources.files("dockd").joinpath("data", "reasons.toml")
    with ref.open("rb") as fh:
        return Lexicon.from_dict(tomllib.load(fh), "dockd/data/reasons.toml")


@functools.cache
def _opencc_t2s() -> Any:
    """OpenCC's traditional -> simplified converter, or None when it is not installed."""
    try:  # opencc-python-reimplemented (untyped: imported by name, used as Any)
        opencc = importlib.import_module("opencc")
    except ImportError:
        log.warning("opencc not installed; using the lexicon's small traditional->simplified table")
        return None
    return opencc.OpenCC("t2s")


def to_simplified(text: str, lexicon: Lexicon | None = None) -> str:
    """Traditional -> simplified Chinese (OpenCC when installed, else the lexicon's table)."""
    if not _CJK.search(text):
        return text
    converter = _opencc_t2s()
    if converter is not None:
        return str(converter.convert(text))
    table = (lexicon or default_lexicon()).fallback_t2s
    return "".join(table.get(ch, ch) for ch in text)


def normalise(text: str, lexicon: Lexicon | None = None) -> str:
    """NFKC, lower case, simplified characters; spaces dropped between CJK characters."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = to_simplified(text, lexicon)
    return re.sub(r"(?<=[^\x00-\x7f])\s+|\s+(?=[^\x00-\x7f])", "", text).strip()


@functools.lru_cache(maxsize=1024)
def _word_pattern(keyword: str) -> re.Pattern[str]:
    stem = keyword.endswith("*")
    body = re.escape(keyword.rstrip("*")).replace(r"\ ", r"\s+")
    return re.compile(r"\b" + body + (r"\w*" if stem else r"\b"))


def _matches(text: str, keywords: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for kw in keywords:
        if _CJK.search(kw) or not kw.isascii():
            hit = kw in text
        elif _CJK.search(text):
            hit = kw in text  # latin letters inside Chinese text ("sd卡"): no word boundaries
        else:
            hit = _word_pattern(kw).search(text) is not None
        if hit:
            found.append(kw)
    return found


_PREVENTION = ("防", "避免", "以免", "怕", "担心")
"""Words before a reason keyword that say it did *not* happen (为防止设备进水: rain, not a
fault); such an occurrence does not count."""


def _happened(text: str, keyword: str) -> bool:
    """False when every occurrence of the Chinese ``keyword`` follows a prevention word."""
    pos = text.find(keyword)
    while pos >= 0:
        before = text[max(0, pos - 6):pos]
        if not any(cue in before for cue in _PREVENTION):
            return True
        pos = text.find(keyword, pos + 1)
    return False


def _reason_matches(text: str, keywords: tuple[str, ...]) -> list[str]:
    return [kw for kw in _matches(text, keywords) if not _CJK.search(kw) or _happened(text, kw)]


def _languages(lexicon: Lexicon, language: str | None) -> list[str]:
    base = (language or "").lower().replace("_", "-").split("-")[0]
    if base in lexicon.languages:
        return [base]
    return sorted(lexicon.languages)  # unknown language: try every lexicon


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyse` found in a transcript, with its evidence."""

    reason: str | None
    confidence: float
    matched: tuple[str, ...]
    """Keywords found as written: the reason's, then interruption and recording words."""
    heard_as: tuple[str, ...] = ()
    """Sound-alike evidence behind the reason, as ``heard≈keyword`` (电扯≈电池)."""
    review: tuple[str, ...] = ()
    """Why a supervisor should check this classification; empty when it stands alone."""

    def classification(self) -> Classification:
        return Classification(self.reason, self.confidence,
                              self.matched + tuple(h.split("≈", 1)[1] for h in self.heard_as))


EXACT, BY_SOUND = 1.0, 0.6
"""Weight of a keyword found as written, and of one found only by sound."""


def _sound_hits(index: reasons_sound.SoundIndex, keywords: tuple[str, ...],
                min_syllables: int) -> list[str]:
    return [f"{span}≈{kw}" for kw in keywords if len(kw) >= min_syllables
            and _CJK.search(kw) for span in index.find(kw)]


def analyse(text: str, language: str | None = "zh",
            lexicon: Lexicon | None = None) -> Analysis:
    """Find the interruption reason in ``text`` (a transcript in ``language``).

    A reason keyword counts only when the speech is about the recording: an
    [interruption] or [context] word of the lexicon is there too (ordinary talk on site
    mentions rain, batteries and faults as well). Chinese keywords that are not written
    in the transcript may be *heard* there by sound (:mod:`.reasons_sound`): a reason
    heard so needs an interruption or recording word written as such, weighs less than
    a written one, and is always marked for review.
    """
    lexicon = lexicon or default_lexicon()
    norm = normalise(text, lexicon)
    if not norm:
        return Analysis(None, 0.0, ())
    langs = _languages(lexicon, language)

    def exact(table: dict[str, tuple[str, ...]]) -> list[str]:
        return [kw for lang in langs for kw in _matches(norm, table.get(lang, ()))]

    said_interruption = exact(lexicon.interruption)
    said_context = exact(lexicon.context)
    index = reasons_sound.SoundIndex(norm) if "zh" in langs and _CJK.search(norm) else None
    heard_interruption: list[str] = []
    heard_context: list[str] = []
    if index is not None and not said_interruption:
        heard_interruption = _sound_hits(index, lexicon.interruption.get("zh", ()), 3)
    if index is not None and not (said_interruption or said_context or heard_interruption):
        heard_context = _sound_hits(index, lexicon.context.get("zh", ()), 3)
    heard_context = heard_interruption + heard_context
    if not (said_interruption or said_context or heard_context):
        return Analysis(None, 0.0, ())  # not about the recording: talk on site

    scores: dict[str, float] = {}
    written: dict[str, list[str]] = {}
    heard: dict[str, list[str]] = {}
    for reason, per_lang in lexicon.reasons.items():
        written[reason] = [kw for lang in langs
                           for kw in _reason_matches(norm, per_lang.get(lang, ()))]
        heard[reason] = []
        if index is not None and (said_interruption or said_context):
            heard[reason] = _sound_hits(index, per_lang.get("zh", ()), 2)
        score = EXACT * len(written[reason]) + BY_SOUND * len(heard[reason])
        if score:
            scores[reason] = score
    context_words = tuple(said_interruption) + tuple(said_context)
    if not scores:
        if said_interruption:
            return Analysis(OTHER, 0.5, tuple(said_interruption),
                            review=("no known reason named",))
        if heard_interruption:
            return Analysis(OTHER, 0.3, tuple(said_context), tuple(heard_interruption),
                            ("the interruption was only heard by sound: "
                             + ", ".join(heard_interruption),))
        return Analysis(None, 0.0, ())
    order = list(lexicon.reasons)
    best = max(scores, key=lambda r: (scores[r], -order.index(r)))
    share = scores[best] / sum(scores.values())
    strength = min(1.0, 0.45 + 0.15 * scores[best] + (0.25 if said_interruption else 0.0))
    confidence = round(strength * share, 3)
    review: list[str] = []
    if not written[best]:
        review.append("reason heard only by sound: " + ", ".join(heard[best]))
    if not (said_interruption or said_context):
        review.append("the recording was only heard by sound: " + ", ".join(heard_context))
    else:
        heard_context = []  # written words suffice; the sound-alikes add nothing
    rivals = sorted(r for r in scores if r != best and scores[r] >= 0.5 * scores[best])
    if rivals:
        review.append(f"other reasons named too: {', '.join(rivals)}")
    if len(scores) > 1:
        log.debug("several reasons matched %s; chose %s", sorted(scores), best)
    return Analysis(best, confidence, tuple(written[best]) + context_words,
                    tuple(heard[best]) + tuple(heard_context), tuple(review))


def classify(text: str, language: str | None = "zh",
             lexicon: Lexicon | None = None) -> Classification:
    """The reason in ``text`` as ``(reason, confidence, matched)``; see :func:`analyse`."""
    return analyse(text, language, lexicon).classification()


def hotwords(language: str | None, lexicon: Lexicon | None = None) -> str | None:
    """The lexicon's hotwords for Whisper in ``language``, or None."""
    lexicon = lexicon or default_lexicon()
    base = (language or "").lower().replace("_", "-").split("-")[0]
    return lexicon.hotwords.get(base) or None
