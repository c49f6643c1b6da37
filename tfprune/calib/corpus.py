"""Parallel corpora: the built-in one, user files (TSV, JSONL, a folder of {lang}.txt), FLORES-200."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import CalibrationError

__all__ = ["LANGUAGE_NAMES", "FLORES_CODES", "ParallelCorpus", "builtin_corpus", "load_corpus", "load_flores"]

# Full English names, as the paper's prompt template uses them.
LANGUAGE_NAMES = {
    "en": "English", "ar": "Arabic", "bg": "Bulgarian", "de": "German", "el": "Greek", "es": "Spanish",
    "fr": "French", "hi": "Hindi", "ja": "Japanese", "ru": "Russian", "sw": "Swahili", "th": "Thai",
    "tr": "Turkish", "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese", "it": "Italian", "pt": "Portuguese",
    "ko": "Korean", "id": "Indonesian", "fi": "Finnish", "et": "Estonian", "ta": "Tamil", "te": "Telugu",
    "bn": "Bengali", "fa": "Persian", "he": "Hebrew", "pl": "Polish", "nl": "Dutch", "uk": "Ukrainian",
    "ca": "Catalan", "eu": "Basque", "yo": "Yoruba", "ht": "Haitian Creole", "qu": "Quechua",
}
# FLORES-200 codes (openlanguagedata/flores_plus configs).
FLORES_CODES = {
    "en": "eng_Latn", "ar": "arb_Arab", "bg": "bul_Cyrl", "de": "deu_Latn", "el": "ell_Grek", "es": "spa_Latn",
    "fr": "fra_Latn", "hi": "hin_Deva", "ja": "jpn_Jpan", "ru": "rus_Cyrl", "sw": "swh_Latn", "th": "tha_Thai",
    "tr": "tur_Latn", "ur": "urd_Arab", "vi": "vie_Latn", "zh": "cmn_Hans", "it": "ita_Latn", "pt": "por_Latn",
    "ko": "kor_Hang", "id": "ind_Latn", "fi": "fin_Latn", "et": "est_Latn", "ta": "tam_Taml", "te": "tel_Telu",
    "bn": "ben_Beng", "fa": "pes_Arab", "he": "heb_Hebr", "pl": "pol_Latn", "nl": "nld_Latn", "uk": "ukr_Cyrl",
    "ca": "cat_Latn", "eu": "eus_Latn", "yo": "yor_Latn", "ht": "hat_Latn", "qu": "quy_Latn",
}


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


@dataclass
class ParallelCorpus:
    """Sentence-aligned text: sentences[lang][i] translates sentences[other][i] for every language."""

    sentences: dict[str, list[str]]

    def __post_init__(self):
        if not self.sentences:
            raise CalibrationError("the parallel corpus is empty: no language columns")
        lengths = {lang: len(rows) for lang, rows in self.sentences.items()}
        if len(set(lengths.values())) != 1:
            raise CalibrationError(f"the parallel corpus is not aligned: sentences per language {lengths}")
        if not next(iter(lengths.values())):
            raise CalibrationError("the parallel corpus is empty: no sentences")

    @property
    def languages(self) -> list[str]:
        return list(self.sentences)

    def __len__(self) -> int:
        return len(next(iter(self.sentences.values())))

    def select(self, langs) -> "ParallelCorpus":
        missing = [lang for lang in langs if lang not in self.sentences]
        if missing:
            raise CalibrationError(f"languages {missing} are not in the corpus (it has {self.languages})")
        return ParallelCorpus({lang: self.sentences[lang] for lang in langs})


def builtin_corpus() -> ParallelCorpus:
    """The corpus shipped with tfprune: English plus 15 languages in 6 scripts (tfprune/calib/data)."""
    folder = resources.files("tfprune.calib") / "data" / "parallel"
    return load_corpus(Path(str(folder)))


def load_corpus(path: str | Path) -> ParallelCorpus:
    """Read a parallel corpus.

    - `*.tsv`: a header row of language codes, then one aligned sentence per column per row.
    - `*.jsonl`: one object per line mapping language code -> sentence.
    - a folder of `{lang}.txt` files, one sentence per line, aligned by line number.
    """
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration corpus {path} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise CalibrationError(f"no {{lang}}.txt files in {path}")
        return ParallelCorpus({f.stem: _lines(f) for f in files})
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        if len(rows) < 2:
            raise CalibrationError(f"{path}: a TSV corpus needs a header of language codes and at least one row")
        header, body = rows[0], rows[1:]
        for number, row in enumerate(body, start=2):
            if len(row) != len(header):
                raise CalibrationError(f"{path}:{number}: {len(row)} columns, the header has {len(header)}")
        return ParallelCorpus({lang: [row[i].strip() for row in body] for i, lang in enumerate(header)})
    if path.suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise CalibrationError(f"{path}:{number}: not JSON ({error})") from None
        if not records:
            raise CalibrationError(f"{path} holds no sentences")
        langs = list(records[0])
        for number, record in enumerate(records, start=1):
            if list(record) != langs:
                raise CalibrationError(f"{path}: record {number} has languages {list(record)}, expected {langs}")
        return ParallelCorpus({lang: [str(r[lang]).strip() for r in records] for lang in langs})
    raise CalibrationError(f"{path}: unsupported corpus format (use .tsv, .jsonl or a folder of {{lang}}.txt)")


def load_flores(langs, split: str = "dev", dataset: str = "openlanguagedata/flores_plus") -> ParallelCorpus:
    """FLORES-200 through `datasets` (needs `pip install datasets` and the hub; gated: log in first)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise CalibrationError("--calib flores needs the `datasets` package: pip install 'tfprune[flores]'") from None
    langs = ["en"] + [lang for lang in langs if lang != "en"]
    unknown = [lang for lang in langs if lang not in FLORES_CODES]
    if unknown:
        raise CalibrationError(f"no FLORES-200 code known for {unknown}")
    sentences = {}
    for lang in langs:
        try:
            rows = load_dataset(dataset, FLORES_CODES[lang], split=split)
        except Exception as error:  # the hub raises many types: offline, gated, renamed
            raise CalibrationError(f"cannot load FLORES-200 {FLORES_CODES[lang]} from {dataset}: {error}") from error
        sentences[lang] = [str(text) for text in rows["text"]]
    return ParallelCorpus(sentences)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
