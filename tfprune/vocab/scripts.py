"""Which characters a set of languages is written in: language code -> Unicode scripts, and the character set
they allow, decided per character by its Unicode Script_Extensions property (the `regex` module's
``\\p{scx=...}``, the same Unicode data as the Unicode standard's Scripts.txt / ScriptExtensions.txt).

A character is allowed when one of its Script_Extensions is a kept script, or when it belongs to no particular
script (Script_Extensions = Common or Inherited: ASCII digits, punctuation, whitespace, symbols, emoji,
generic combining marks). Common characters that only some scripts use have narrower Script_Extensions (the
ideographic full stop 。 is {Bopomofo, Hangul, Han, Hiragana, Katakana, Yi}, the Arabic comma is {Arabic,
...}) and are kept only with those scripts.
"""
from __future__ import annotations

import functools

import regex

from ..errors import VocabError

__all__ = ["LANGUAGE_SCRIPTS", "scripts_for", "parse_langs", "CharacterSet"]

_LATIN = ("af ay az bs ca cs cy da de en eo es et eu fi fil fo fr ga gd gl ha haw hr ht hu id ig is it jv la lb lt "
          "lv mg mi ms mt nb nl nn no oc pl pt qu ro rm sk sl sm sn so sq st su sv sw tk tl tn tr uz vi wo xh yo zu")
_CYRILLIC = "ba be bg ce cv kk ky mk mn os ru tg tt uk"
_ARABIC = "ar ckb fa ps sd ug ur"
# language code (ISO 639-1, else 639-3) -> the scripts its text is written in (regex / Unicode script names)
LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    **{code: ("Latin",) for code in _LATIN.split()},
    **{code: ("Cyrillic",) for code in _CYRILLIC.split()},
    **{code: ("Arabic",) for code in _ARABIC.split()},
    "sr": ("Cyrillic", "Latin"),
    "el": ("Greek",),
    "he": ("Hebrew",), "yi": ("Hebrew",),
    "hi": ("Devanagari",), "mr": ("Devanagari",), "ne": ("Devanagari",), "sa": ("Devanagari",),
    "bn": ("Bengali",), "as": ("Bengali",),
    "pa": ("Gurmukhi",), "gu": ("Gujarati",), "or": ("Oriya",), "ta": ("Tamil",), "te": ("Telugu",),
    "kn": ("Kannada",), "ml": ("Malayalam",), "si": ("Sinhala",),
    "th": ("Thai",), "lo": ("Lao",), "km": ("Khmer",), "my": ("Myanmar",),
    "ka": ("Georgian",), "hy": ("Armenian",), "am": ("Ethiopic",), "ti": ("Ethiopic",),
    "bo": ("Tibetan",), "dv": ("Thaana",),
    "zh": ("Han",),
    "ja": ("Han", "Hiragana", "Katakana"),
    "ko": ("Hangul", "Han"),
}
_GENERAL = r"\p{scx=Common}\p{scx=Inherited}"
_SURROGATES = range(0xD800, 0xE000)


def parse_langs(spec: str | list[str] | tuple[str, ...], option: str = "--langs") -> tuple[str, ...]:
    """'de,fr, ru' or a sequence -> ('de', 'fr', 'ru'): lower-cased, de-duplicated, each checked against
    LANGUAGE_SCRIPTS (an unknown code is a VocabError naming it and the option)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    langs = tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    if not langs:
        raise VocabError(f"{option}: no language given; pass comma-separated codes such as de,fr,ru")
    unknown = [lang for lang in langs if lang not in LANGUAGE_SCRIPTS]
    if unknown:
        raise VocabError(f"{option}: unknown language code{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; known: {' '.join(sorted(LANGUAGE_SCRIPTS))}")
    return langs


def scripts_for(langs) -> tuple[str, ...]:
    """The scripts of the languages, in first-seen order: scripts_for(('ja', 'de')) = (Han, Hiragana,
    Katakana, Latin)."""
    return tuple(dict.fromkeys(script for lang in parse_langs(langs) for script in LANGUAGE_SCRIPTS[lang]))


class CharacterSet:
    """The characters text in `scripts` may contain: those with a kept script in their Script_Extensions, and
    the general ones (Script_Extensions Common or Inherited)."""

    def __init__(self, scripts: tuple[str, ...]):
        if not scripts:
            raise VocabError("no script to keep")
        self.scripts = tuple(scripts)
        kept = "".join(rf"\p{{scx={script}}}" for script in self.scripts)
        self._text = regex.compile(rf"[{kept}{_GENERAL}]*")
        self._script_char = regex.compile(rf"[{kept}]")
        self._script_chars = {script: regex.compile(rf"\p{{sc={script}}}") for script in self.scripts}

    def allows(self, text: str) -> bool:
        """Whether every character of `text` is in the set."""
        return self._text.fullmatch(text) is not None

    def has_script_char(self, text: str) -> bool:
        """Whether `text` holds a character of a kept script (not only general ones)."""
        return self._script_char.search(text) is not None

    def in_script(self, text: str, script: str) -> bool:
        """Whether `text` holds a character whose Script is `script` (one of self.scripts): a letter of that
        script, not a sign it shares with others (。 is Common with Han, Hangul, ... in its extensions)."""
        return self._script_chars[script].search(text) is not None

    @functools.cached_property
    def codepoints(self) -> list[int]:
        """Every allowed code point, ascending (all 1.1M code points tested once: ~1 s; byte-level only)."""
        return [cp for cp in range(0x110000) if cp not in _SURROGATES and self._text.fullmatch(chr(cp))]

    @functools.cached_property
    def _fragments(self) -> tuple[set[bytes], set[bytes]]:
        """(proper prefixes of the UTF-8 encodings of allowed characters, their substrings that start after
        the first byte): what a byte-level token may hold at its end, and at its start or alone."""
        prefixes, inner = set(), set()
        for cp in self.codepoints:
            encoded = chr(cp).encode("utf-8")
            for end in range(1, len(encoded)):
                prefixes.add(encoded[:end])
            for begin in range(1, len(encoded)):
                for end in range(begin + 1, len(encoded) + 1):
                    inner.add(encoded[begin:end])
        return prefixes, inner

    def bytes_reachable(self, data: bytes) -> tuple[bool, str]:
        """(whether `data` is a substring of the UTF-8 encoding of some text in the set, its complete
        characters as text). data = [the end of a character] + complete characters + [the start of one]."""
        prefixes, inner = self._fragments
        head = 0
        while head < len(data) and head < 3 and 0x80 <= data[head] < 0xC0:
            head += 1
        if head == len(data):
            return data in inner, ""
        if head and data[:head] not in inner:
            return False, ""
        tail = _incomplete_tail(data, head)
        if tail < len(data) and data[tail:] not in prefixes:
            return False, ""
        try:
            text = data[head:tail].decode("utf-8")
        except UnicodeDecodeError:
            return False, ""
        return self.allows(text), text


def _incomplete_tail(data: bytes, start: int) -> int:
    """Where the trailing incomplete UTF-8 sequence of data[start:] begins (len(data) when there is none)."""
    for back in range(1, min(4, len(data) - start) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # a lead byte: the sequence it starts needs this many bytes
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if need > back else len(data)
    return len(data)
