"""Reading and rewriting a `tokenizers` BPE tokenizer (tokenizer.json) for a kept subset of its token ids.

What is rewritten, with the ids renumbered consistently (new id = rank of the original id among the kept ones,
so the kept ids keep their order): the model's vocab; its merges (a merge stays when both parts and the merged
token stay, in the original order, so the ranks of the kept merges keep their order); the added tokens; the
post-processor's special-token ids; the padding id. The normalizer, pre-tokenizer and decoder are untouched.
The tokenizer files around it: tokenizer_config.json's `added_tokens_decoder` and added_tokens.json (ids) are
remapped; files that would describe the old vocabulary (sentencepiece tokenizer.model, vocab.json,
merges.txt, ...) are left out.

Refused, with the reason (a VocabError): a tokenizer.json whose model is not BPE (Unigram, WordPiece,
WordLevel: their ids and scores need a different argument), BPE with a continuing-subword prefix or an
end-of-word suffix, a post-processor that holds ids tfprune does not know how to remap, and a tokenizer
without tokenizer.json (a sentencepiece or tiktoken `tokenizer.model`, slow vocab files).
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import shutil
from pathlib import Path

from ..errors import VocabError

__all__ = ["BpeTokenizer", "tokenizer_json_of", "write_tokenizer_files", "STALE_TOKENIZER_FILES"]

log = logging.getLogger("tfprune")

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
ADDED_TOKENS_FILE = "added_tokens.json"
# files that describe the original vocabulary in another form: not copied next to a trimmed tokenizer.json
STALE_TOKENIZER_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt",
                         "vocab.txt")
_BYTE_TOKENS = tuple(f"<0x{value:02X}>" for value in range(256))


def _refuse_without_tokenizer_json(folder: Path) -> None:
    """Raise the VocabError that names the tokenizer type of a directory without tokenizer.json."""
    files = {path.name for path in folder.iterdir()} if folder.is_dir() else set()
    if any(name.endswith(".tiktoken") for name in files) or (
            "tokenizer.model" in files and _looks_like_tiktoken(folder / "tokenizer.model")):
        kind = "a tiktoken tokenizer (BPE ranks without merges or a tokenizers pipeline)"
    elif files & {"tokenizer.model", "spiece.model", "sentencepiece.bpe.model"}:
        kind = "a sentencepiece tokenizer.model without tokenizer.json (its model proto is not rewritten)"
    elif "vocab.txt" in files:
        kind = "a WordPiece vocab.txt without tokenizer.json"
    elif {"vocab.json", "merges.txt"} <= files:
        kind = ("slow BPE files vocab.json + merges.txt without tokenizer.json (save the tokenizer with "
                "transformers first to get one)")
    else:
        kind = "no tokenizer files at all"
    raise VocabError(f"{folder}: cannot trim the vocabulary safely: {kind}; tfprune trims `tokenizers` BPE "
                     f"tokenizers given as {TOKENIZER_FILE}")


def _looks_like_tiktoken(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(256)
    first = head.split(b"\n", 1)[0].split(b" ")
    return len(first) == 2 and first[1].isdigit()


def tokenizer_json_of(source) -> tuple[dict, str]:
    """(tokenizer.json as a dict, a name for messages) of a model directory or a transformers tokenizer."""
    if isinstance(source, (str, Path)):
        path = Path(source) / TOKENIZER_FILE
        if not path.is_file():
            _refuse_without_tokenizer_json(Path(source))
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    backend = getattr(source, "backend_tokenizer", None)
    if backend is None:
        raise VocabError(f"cannot trim the vocabulary safely: {type(source).__name__} is not backed by a "
                         "`tokenizers` tokenizer (tfprune trims tokenizers BPE tokenizers)")
    return json.loads(backend.to_str()), type(source).__name__


def _has_byte_level(pre_tokenizer: dict | None) -> bool:
    if not pre_tokenizer:
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(item) for item in pre_tokenizer.get("pretokenizers") or [])


class BpeTokenizer:
    """A BPE tokenizer.json, parsed. tokens[id] = token string ("" for an id that only an added token has);
    merges: (left, right) pairs in rank order; byte_level: GPT-2-style byte-to-character pre-tokenization
    (tokens spell UTF-8 bytes); byte_fallback: `<0xNN>` tokens stand for bytes of unknown characters."""

    def __init__(self, data: dict, source: str = TOKENIZER_FILE):
        model = data.get("model") or {}
        kind = model.get("type")
        if kind != "BPE":
            raise VocabError(f"{source}: cannot trim the vocabulary safely: a {kind} tokenizer (tokenizer.json model "
                             "type); tfprune trims BPE tokenizers, whose segmentation of the kept text it can prove "
                             "unchanged")
        for option in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(option):
                raise VocabError(f"{source}: cannot trim the vocabulary safely: BPE with {option}="
                                 f"{model[option]!r} is not supported")
        self.data, self.source = data, source
        self.byte_level = _has_byte_level(data.get("pre_tokenizer"))
        self.byte_fallback = bool(model.get("byte_fallback"))
        self.vocab: dict[str, int] = model["vocab"]
        raw = model.get("merges") or []
        self._merge_strings = bool(raw) and isinstance(raw[0], str)
        self.merges: list[tuple[str, str]] = [tuple(m.split(" ", 1)) if self._merge_strings else tuple(m)
                                              for m in raw]
        self.added: list[dict] = data.get("added_tokens") or []
        size = max([*self.vocab.values(), *(token["id"] for token in self.added), -1]) + 1
        self.tokens = [""] * size
        for token, index in self.vocab.items():
            self.tokens[index] = token
        self.unk_token = model.get("unk_token")
        _remap_processor(copy.deepcopy(data.get("post_processor")), lambda index: index, source)  # refuse early

    def __len__(self) -> int:
        return len(self.tokens)

    def byte_ids(self) -> list[int]:
        """The ids that spell single bytes: `<0xNN>` with byte fallback, the 256 byte characters of a byte-level
        BPE (any text reaches them; without them it could not be encoded)."""
        if self.byte_level:
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            symbols = bytes_to_unicode().values()
        elif self.byte_fallback:
            symbols = _BYTE_TOKENS
        else:
            return []
        return sorted(self.vocab[symbol] for symbol in symbols if symbol in self.vocab)

    def decode_bytes(self, token: str) -> bytes:
        """The UTF-8 bytes a byte-level token spells ('Ġd' -> b' d')."""
        table = _unicode_to_bytes()
        return bytes(table[char] for char in token)

    def required_ids(self) -> dict[int, str]:
        """{id: why} of the ids the tokenizer itself refers to: added tokens (special or not), the post-processor's
        special tokens, the padding id, the unknown token."""
        required = {}
        for token in self.added:
            required[token["id"]] = "special" if token.get("special") else "added"
        ids = _processor_ids(self.data.get("post_processor"))
        padding = self.data.get("padding") or {}
        if "pad_id" in padding:
            ids.append(padding["pad_id"])
        if self.unk_token is not None and self.unk_token in self.vocab:
            ids.append(self.vocab[self.unk_token])
        for index in ids:
            required.setdefault(index, "special")
        return required

    def rewrite(self, kept: list[int]) -> dict:
        """tokenizer.json (a new dict) for the sorted original ids `kept`: new id i is original id kept[i]."""
        new_id = {old: new for new, old in enumerate(kept)}
        missing = [index for index in self.required_ids() if index not in new_id]
        if missing:
            raise VocabError(f"{self.source}: the tokenizer needs ids {missing[:5]} that the selection drops")
        data = copy.deepcopy({key: value for key, value in self.data.items() if key != "model"})
        model = {key: value for key, value in self.data["model"].items() if key not in ("vocab", "merges")}
        model["vocab"] = {token: new_id[index] for token, index in self.vocab.items() if index in new_id}
        kept_tokens = model["vocab"]
        merges = [(a, b) for a, b in self.merges if a in kept_tokens and b in kept_tokens and a + b in kept_tokens]
        model["merges"] = [f"{a} {b}" for a, b in merges] if self._merge_strings else [list(m) for m in merges]
        data["model"] = model
        data["added_tokens"] = [dict(token, id=new_id[token["id"]]) for token in self.added if token["id"] in new_id]
        data["post_processor"] = _remap_processor(data.get("post_processor"), new_id.__getitem__, self.source)
        if data.get("padding") and "pad_id" in data["padding"]:
            data["padding"]["pad_id"] = new_id[data["padding"]["pad_id"]]
        return data


@functools.lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _processor_ids(processor: dict | None) -> list[int]:
    """The token ids a (checked) post-processor inserts."""
    ids: list[int] = []

    def collect(index: int) -> int:
        ids.append(index)
        return index

    _remap_processor(copy.deepcopy(processor), collect, TOKENIZER_FILE)
    return ids


def _remap_processor(processor: dict | None, new_id, source: str) -> dict | None:
    """The post-processor with every token id passed through new_id (in place); refuses unknown types."""
    if processor is None:
        return None
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for token in processor.get("special_tokens", {}).values():
            token["ids"] = [new_id(index) for index in token["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], new_id(processor[key][1])]
    elif kind == "Sequence":
        for item in processor.get("processors", []):
            _remap_processor(item, new_id, source)
    elif kind != "ByteLevel":
        raise VocabError(f"{source}: cannot trim the vocabulary safely: post-processor {kind} may hold token ids "
                         "tfprune does not know how to remap")
    return processor


def write_tokenizer_files(source: Path, destination: Path, text: str, kept: list[int]) -> list[str]:
    """Write the trimmed tokenizer into `destination`: tokenizer.json = `text`; tokenizer_config.json and
    added_tokens.json from `source` with their ids remapped; the other tokenizer files of `source` that hold
    no ids copied (special_tokens_map.json, chat templates). Returns the stale files left out."""
    new_id = {old: new for new, old in enumerate(kept)}
    (destination / TOKENIZER_FILE).write_text(text, encoding="utf-8")
    config_path = source / TOKENIZER_CONFIG
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        decoder = config.get("added_tokens_decoder")
        if decoder:
            config["added_tokens_decoder"] = {str(new_id[int(index)]): entry for index, entry in decoder.items()
                                              if int(index) in new_id}
        (destination / TOKENIZER_CONFIG).write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                                    encoding="utf-8")
    added_path = source / ADDED_TOKENS_FILE
    if added_path.is_file():
        added = json.loads(added_path.read_text(encoding="utf-8"))
        (destination / ADDED_TOKENS_FILE).write_text(json.dumps(
            {token: new_id[index] for token, index in added.items() if index in new_id}, ensure_ascii=False,
            indent=2) + "\n", encoding="utf-8")
    same = source.resolve() == destination.resolve()
    for name in ("special_tokens_map.json", "chat_template.jinja", "chat_template.json"):
        if not same and (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
    stale = [name for name in STALE_TOKENIZER_FILES if (source / name).is_file()]
    if stale and not same:
        log.info("left out %s: they describe the original vocabulary (tokenizer.json replaces them)",
                 ", ".join(stale))
    return stale
