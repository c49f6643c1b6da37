"""Parallel corpora: the built-in one, user files (TSV, JSONL, a folder of {lang}.txt), FLORES-200."""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import CalibrationError
from ..textfiles import read_jsonl, read_lines, text_field

__all__ = ["LANGUAGE_NAMES", "FLORES_CODES", "ParallelCorpus", "builtin_corpus", "load_corpus", "load_texts",
           "load_flores"]

log = logging.getLogger("tfprune")

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
    """Read a parallel corpus (UTF-8), strictly: a record that breaks the alignment is an error naming the file
    and line, never silently dropped or shifted.

    - `*.tsv`: a header row of distinct language codes, then one aligned sentence per column per row; an empty
      cell is an error, a blank line is skipped (counted in the log).
    - `*.jsonl`: one object per line mapping language code -> sentence (strings), the same languages in every
      record.
    - a folder of `{lang}.txt` files, one sentence per line, aligned by line number: a line blank in every file
      is skipped (counted); blank in some files only is an error.
    """
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration corpus {path} does not exist")
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".tsv":
        return _load_tsv(path)
    if path.suffix == ".jsonl":
        return _load_jsonl(path)
    raise CalibrationError(f"{path}: unsupported corpus format (use .tsv, .jsonl or a folder of {{lang}}.txt)")


def load_texts(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 .txt file, used as calibration texts as they are (blank lines skipped,
    counted in the log)."""
    lines = read_lines(Path(path), CalibrationError)
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise CalibrationError(f"{path} holds no text")
    if len(texts) < len(lines):
        log.info("%s: %d blank lines skipped", path, len(lines) - len(texts))
    return texts


def _load_folder(path: Path) -> ParallelCorpus:
    files = sorted(path.glob("*.txt"))
    if not files:
        raise CalibrationError(f"no {{lang}}.txt files in {path}")
    lines = {f.stem: read_lines(f, CalibrationError) for f in files}
    counts = {lang: len(rows) for lang, rows in lines.items()}
    if len(set(counts.values())) != 1:
        raise CalibrationError(f"{path}: the {{lang}}.txt files are aligned by line but have different line "
                               f"counts {counts}")
    kept: dict[str, list[str]] = {lang: [] for lang in lines}
    skipped = 0
    for number, row in enumerate(zip(*lines.values()), start=1):
        blank = [not text.strip() for text in row]
        if all(blank):
            skipped += 1
            continue
        if any(blank):
            empty = next(lang for lang, is_blank in zip(lines, blank) if is_blank)
            full = next(lang for lang, is_blank in zip(lines, blank) if not is_blank)
            raise CalibrationError(f"{path / (empty + '.txt')}:{number}: blank, while {full}.txt:{number} has "
                                   "text: the files are aligned by line, fill in or remove the line in every file")
        for lang, text in zip(lines, row):
            kept[lang].append(text.strip())
    if skipped:
        log.info("%s: %d lines blank in every file skipped", path, skipped)
    return ParallelCorpus(kept)


def _load_tsv(path: Path) -> ParallelCorpus:
    rows = list(csv.reader(read_lines(path, CalibrationError), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise CalibrationError(f"{path}: a TSV corpus needs a header of language codes and at least one row")
    header = [cell.strip() for cell in rows[0]]
    if any(not code for code in header):
        raise CalibrationError(f"{path}:1: an empty language code in the header")
    repeated = sorted({code for code in header if header.count(code) > 1})
    if repeated:
        raise CalibrationError(f"{path}:1: language {repeated[0]!r} is a column twice")
    sentences: dict[str, list[str]] = {code: [] for code in header}
    skipped = 0
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            skipped += 1
            continue
        if len(row) != len(header):
            raise CalibrationError(f"{path}:{number}: {len(row)} columns, the header has {len(header)}")
        for code, cell in zip(header, row):
            if not cell.strip():
                raise CalibrationError(f"{path}:{number}: the {code!r} cell is empty")
            sentences[code].append(cell.strip())
    if skipped:
        log.info("%s: %d blank lines skipped", path, skipped)
    if not next(iter(sentences.values())):
        raise CalibrationError(f"{path}: a TSV corpus needs a header of language codes and at least one row")
    return ParallelCorpus(sentences)


def _load_jsonl(path: Path) -> ParallelCorpus:
    records = read_jsonl(path, CalibrationError)
    if not records:
        raise CalibrationError(f"{path} holds no sentences")
    langs = list(records[0][1])
    sentences: dict[str, list[str]] = {lang: [] for lang in langs}
    for where, record in records:
        if set(record) != set(langs):
            raise CalibrationError(f"{where}: languages {sorted(record)}, the first record has {sorted(langs)}")
        for lang in langs:
            sentences[lang].append(text_field(record, lang, where, CalibrationError))
    return ParallelCorpus(sentences)


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
