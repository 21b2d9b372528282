"""The exhibit's lines and languages: `phrases:` (id → text, or a map of translations), `languages:`, and the
checks that any text to be spoken passes, here and on the staff page (`phrase_problem`, `text_problem`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kiosk.config.fields import _INVALID, _cannot_encode, _kind, _show, _str, unencodable_at

MAX_TEXT_CHARS = 20_000
PHRASE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # used with fullmatch: `$` would let "welcome\n" through


#: A language code: ISO 639-1 or -2 letters, optionally a region or script ("pt-br", "zh-hant"), lowercase.
_LANGUAGE_CODE = {
    "pattern": re.compile(r"[a-z]{2,3}(-[a-z0-9]{2,8})?"),
    "pattern_help": "a language code such as en, de or pt-br",
}
#: Each language's name in itself: what the language button says and staff see.
LANGUAGE_NAMES = {
    "ar": "العربية", "cs": "Čeština", "da": "Dansk", "de": "Deutsch", "el": "Ελληνικά", "en": "English",
    "es": "Español", "fi": "Suomi", "fr": "Français", "he": "עברית", "hu": "Magyar", "it": "Italiano",
    "ja": "日本語", "ko": "한국어", "nb": "Norsk", "nl": "Nederlands", "pl": "Polski", "pt": "Português",
    "ru": "Русский", "sv": "Svenska", "tr": "Türkçe", "uk": "Українська", "zh": "中文",
}  # fmt: skip

#: Languages written right to left, by a language code's first part.
RIGHT_TO_LEFT = frozenset({"ar", "dv", "fa", "he", "ps", "ur", "yi"})


def right_to_left(code: str | None) -> bool:
    """Whether text in the language `code` ("he", "ar-eg") is written right to left."""
    return bool(code) and code.split("-")[0] in RIGHT_TO_LEFT


@dataclass(frozen=True)
class LanguageConfig:
    """A language the exhibit offers (`languages:`, the first is the default), with its own voices if wanted."""

    code: str = field(default="", metadata={"required": True, **_LANGUAGE_CODE})
    name: str = ""  # said by the language button and shown to staff; default: the language's own name
    voice: str | None = None  # the OpenAI voice for this language (default: openai.voice)
    instructions: str | None = None  # OpenAI instructions for this language (default: openai.instructions)
    piper_voice: str | None = None  # a local Piper voice for it (.onnx path); without one it needs the network

    @property
    def spoken_name(self) -> str:
        return self.name or LANGUAGE_NAMES.get(self.code) or LANGUAGE_NAMES.get(self.code[:2]) or self.code


def _phrases(raw: Any, where: str, problems: list[str]) -> Any:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping of id: text, not {_kind(raw)}")
        return _INVALID
    phrases = {}
    for pid, text in raw.items():  # a key YAML reads as a number or true/false is taken as its text
        problem = phrase_problem(_str(pid), text)
        if not problem and _str(pid) in phrases:
            problem = "id is given twice (once quoted, once not)"
        if problem:
            problems.append(f"{where}.{_show(pid)}: {problem}")
        else:
            phrases[_str(pid)] = text.strip()
    return phrases


def _split_translations(data: dict, problems: list[str]) -> dict:
    """`phrases:` with maps of language → text split into the default language's texts (`phrases`) and the rest
    (`translations`); every map must hold the default language, and only offered languages."""
    if "translations" in data:
        problems.append("translations: unknown key (give a line's translations as a map under phrases:)")
        return {k: v for k, v in data.items() if k != "translations"}
    phrases = data.get("phrases")
    if not isinstance(phrases, dict) or not any(isinstance(v, dict) for v in phrases.values()):
        return data
    offered = _offered_languages(data.get("languages"))
    plain, translations = {}, {}
    for pid, texts in phrases.items():
        if not isinstance(texts, dict):
            plain[pid] = texts
            continue
        where = f"phrases.{_show(pid)}"
        if not offered:
            problems.append(f"{where}: a map of translations needs languages: (the first is the default)")
            continue
        unknown = [code for code in texts if code not in offered]
        for code in unknown:
            offer = ", ".join(offered)
            problems.append(f"{where}.{_show(code)}: not an offered language (languages: {offer})")
        if offered[0] not in texts:
            problems.append(f"{where}: needs the line in {offered[0]}, the default language")
            continue
        plain[pid] = texts[offered[0]]
        others = {}
        for code, text in texts.items():
            if code in unknown or code == offered[0]:
                continue
            problem = phrase_problem(_str(pid), text)
            if problem:
                problems.append(f"{where}.{_show(code)}: {problem}")
            else:
                others[code] = text.strip()
        translations[_str(pid)] = others
    return {**data, "phrases": plain, "translations": translations}


def _offered_languages(raw: Any) -> list[str]:
    """The language codes `languages:` offers, as far as they can be read (validation reports the rest)."""
    if not isinstance(raw, list):
        return []
    codes = [item.get("code") if isinstance(item, dict) else item for item in raw]
    return [c for c in codes if isinstance(c, str) and _LANGUAGE_CODE["pattern"].fullmatch(c)]


def phrase_problem(pid: str, text: Any) -> str | None:
    """Why an exhibit line is unacceptable, or None; shared by the config file and the staff page."""
    if not PHRASE_ID.fullmatch(pid):
        return "id must be 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
    if not isinstance(text, str):
        return f"text must be a string, not {_kind(text)}"
    return text_problem(text)


_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but tab, newline, carriage return


def text_problem(text: str) -> str | None:
    """Why a text cannot be spoken, or None."""
    if not text.strip():
        return "text is empty"
    if len(text) > MAX_TEXT_CHARS:
        return f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
    at = unencodable_at(text)
    if at is not None:
        return f"text {_cannot_encode(at)}"
    control = _CONTROL_CHARACTER.search(text)  # a NUL or a bell cannot be spoken; engines fail on them
    if control:
        return f"text contains a control character (U+{ord(control.group()):04X} at position {control.start()})"
    return None
