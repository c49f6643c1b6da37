"""The `tfprune trim-vocab` subcommand."""
from __future__ import annotations

from .checkpoint import trim_checkpoint
from .plan import TrimOptions

__all__ = ["add_parser", "run", "options_from_args"]


def add_parser(sub) -> None:
    t = sub.add_parser("trim-vocab", help="keep the tokens of the languages served: smaller embeddings, LM head "
                                          "and tokenizer, same outputs for those languages")
    t.add_argument("model", help="local HF directory (safetensors; dense, 2:4 or compressed-tensors), hub id, "
                                 "or builtin:FAMILY")
    t.add_argument("--langs", required=True, help="comma-separated language codes, e.g. de,fr,ru (their scripts "
                                                  "are kept: tfprune.vocab.LANGUAGE_SCRIPTS)")
    t.add_argument("--out", required=True, help="output directory (written atomically; never the input)")
    t.add_argument("--by", default="script",
                   help="script (default: every token of the languages' scripts, exact for any text in them), "
                        "corpus (only the tokens --corpus uses: smaller, not exact for other text) or script,corpus")
    t.add_argument("--corpus", default=None,
                   help="builtin | PATH (.txt of texts, or a parallel corpus .tsv/.jsonl/folder of {lang}.txt): the "
                        "tokens kept --by corpus, and the text the segmentation is checked on (default builtin)")
    t.add_argument("--min-count", type=int, default=1, help="--by corpus: least occurrences a token needs")
    t.add_argument("--shard-size", default="5GB", help="most tensor bytes per output shard")
    t.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def options_from_args(args) -> TrimOptions:
    return TrimOptions(args.langs, by=args.by, corpus=args.corpus, min_count=args.min_count)


def run(args) -> int:
    summary = trim_checkpoint(args.model, args.out, options_from_args(args), shard_size=args.shard_size,
                              overwrite=args.overwrite, progress=not args.quiet)
    print(summary.line())
    print(f"wrote {args.out}")
    return 0
