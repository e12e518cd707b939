"""Text tokenizers with turn and role tokens (SPEC §3): byte-level by default, a HF ``tokenizers``
JSON file optionally.

Both share one interface (:class:`TurnTokenizer`): content ids come first (bytes 0..255, or the JSON
vocabulary 0..V-1) and six special tokens follow them, in this order:

    PAD, BOS, BOT (begin of turn), EOT (end of turn), ROLE_USER, ROLE_ASSISTANT

A dialogue turn is ``[BOT, ROLE, content..., EOT]``. Saving into a model's config.json goes through
``to_dict()`` / :func:`tokenizer_from_dict` (the JSON tokenizer stores its whole JSON string, so a
saved model needs no extra file).

:func:`train_from_manifest` builds a tokenizers JSON from the dialogue of training manifests
(word-level or BPE, see its docstring); on the command line::

    python -m ssm_mm.data.tokenizer build train/manifest.jsonl --out tok.json [--kind word|bpe]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROLES",
    "SPECIAL_TOKENS",
    "TokenizerConfig",
    "TurnTokenizer",
    "ByteTokenizer",
    "JsonTokenizer",
    "load_tokenizer",
    "tokenizer_from_dict",
    "word_tokenizer_json",
    "TOKENIZER_KINDS",
    "UNK_TOKEN",
    "train_from_manifest",
    "TextStats",
    "text_stats",
]

# Dialogue roles; a role's index here is the ``role`` column of the timed tokens.
ROLES: tuple[str, ...] = ("user", "assistant")
# Special tokens, appended after the content vocabulary in this order.
SPECIAL_TOKENS: tuple[str, ...] = ("PAD", "BOS", "BOT", "EOT", "ROLE_USER", "ROLE_ASSISTANT")


@dataclass
class TokenizerConfig:
    """Which tokenizer the model uses.

    path: a HF ``tokenizers`` JSON file (e.g. ``tokenizer.json``); None = byte-level.
    """

    path: str | None = None


def role_index(role: str) -> int:
    """'user' -> 0, 'assistant' -> 1; ValueError for anything else."""
    try:
        return ROLES.index(role)
    except ValueError:
        raise ValueError(f"unknown role {role!r}: expected one of {list(ROLES)}") from None


class TurnTokenizer:
    """Shared turn/role logic; subclasses provide the content vocabulary (``n_content`` ids).

    Special ids are ``n_content + i`` for ``SPECIAL_TOKENS[i]``.
    """

    n_content: int

    # --- content vocabulary (subclasses) ---
    def encode(self, text: str) -> list[int]:
        """Content ids of ``text`` (no special tokens)."""
        raise NotImplementedError

    def _decode_content(self, ids: list[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    # --- specials ---
    @property
    def vocab_size(self) -> int:
        return self.n_content + len(SPECIAL_TOKENS)

    def special_id(self, name: str) -> int:
        return self.n_content + SPECIAL_TOKENS.index(name)

    @property
    def pad_id(self) -> int:
        return self.n_content + 0

    @property
    def bos_id(self) -> int:
        return self.n_content + 1

    @property
    def bot_id(self) -> int:
        return self.n_content + 2

    @property
    def eot_id(self) -> int:
        return self.n_content + 3

    def role_id(self, role: str) -> int:
        """Token id of a role name ('user' | 'assistant')."""
        return self.n_content + 4 + role_index(role)

    def role_of_id(self, token_id: int) -> str | None:
        """Role name of a role token id, or None when ``token_id`` is not a role token."""
        i = token_id - self.n_content - 4
        return ROLES[i] if 0 <= i < len(ROLES) else None

    def is_special(self, token_id: int) -> bool:
        return self.n_content <= token_id < self.vocab_size

    # --- turns ---
    def encode_turn(self, role: str, text: str) -> list[int]:
        """``[BOT, ROLE, content..., EOT]`` for one dialogue turn."""
        if not isinstance(text, str):
            raise ValueError(f"turn text must be a str, got {type(text).__name__}")
        return [self.bot_id, self.role_id(role), *self.encode(text), self.eot_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: stops at the first EOT, skips the other special tokens, and replaces
        invalid UTF-8 (e.g. a byte sequence cut mid-character) with U+FFFD."""
        content = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
            if i == self.eot_id:
                break
            if i < self.n_content:
                content.append(i)
        return self._decode_content(content)


class ByteTokenizer(TurnTokenizer):
    """UTF-8 bytes as ids 0..255, then the specials (PAD=256 … ROLE_ASSISTANT=261); vocab 262."""

    n_content = 256

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def _decode_content(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"type": "byte"}

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError(
            "a tokenizers JSON file was configured (tokenizer.path) but the optional 'tokenizers' package "
            "is not installed: pip install tokenizers"
        ) from None
    return tokenizers


class JsonTokenizer(TurnTokenizer):
    """A HF ``tokenizers`` tokenizer (from its JSON) as the content vocabulary, our specials after it.

    The JSON's own special tokens (e.g. ``[UNK]``) are ordinary content ids to us; its post-processor
    is not applied (``add_special_tokens=False``): turns are delimited by our BOT/EOT.
    """

    def __init__(self, json_str: str):
        tk = _import_tokenizers()
        try:
            self._tk = tk.Tokenizer.from_str(json_str)
        except Exception as e:
            raise ValueError(f"not a valid tokenizers JSON: {e}") from None
        self._json = json_str
        self.n_content = self._tk.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_file(cls, path: str | Path) -> JsonTokenizer:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"tokenizer.path: file not found: {p}")
        return cls(p.read_text(encoding="utf-8"))

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return list(self._tk.encode(text, add_special_tokens=False).ids)

    def _decode_content(self, ids: list[int]) -> str:
        return self._tk.decode(ids, skip_special_tokens=True)

    def to_dict(self) -> dict:
        return {"type": "json", "json": self._json}

    def __getstate__(self):  # picklable for DataLoader workers: rebuild from the JSON
        return {"json": self._json}

    def __setstate__(self, state):
        self.__init__(state["json"])

    def __repr__(self) -> str:
        return f"JsonTokenizer(vocab_size={self.vocab_size})"


def word_tokenizer_json(words: Iterable[str], unk: str = "[UNK]") -> str:
    """A word-level HF ``tokenizers`` JSON over ``words`` (ids in the given order, ``unk`` first).

    Text is lower-cased and split into ``\\w+`` runs and punctuation runs; a word not in the list
    encodes as ``unk``. Decoding joins words with single spaces. For a closed-vocabulary corpus (a built-in
    world's dialogue, e.g. ``ssm_mm.worlds.<name>.vocabulary()``) this makes every word, and so every
    one-word answer, a single token.
    """
    tk = _import_tokenizers()
    vocab: dict[str, int] = {unk: 0}
    for w in words:
        if not isinstance(w, str) or not w or w != w.strip() or w != w.lower():
            raise ValueError(f"word_tokenizer_json: {w!r} is not a lower-case word without spaces")
        vocab.setdefault(w, len(vocab))
    t = tk.Tokenizer(tk.models.WordLevel(vocab, unk_token=unk))
    t.normalizer = tk.normalizers.Lowercase()
    t.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    return t.to_str()


def load_tokenizer(cfg: TokenizerConfig | None = None) -> TurnTokenizer:
    """The tokenizer ``cfg`` describes: byte-level unless ``cfg.path`` names a tokenizers JSON."""
    if cfg is None or cfg.path is None:
        return ByteTokenizer()
    return JsonTokenizer.from_file(cfg.path)


def tokenizer_from_dict(d: dict) -> TurnTokenizer:
    """Inverse of ``to_dict()`` (what a model's config.json stores)."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "json":
        if not isinstance(d.get("json"), str):
            raise ValueError("tokenizer dict of type 'json' needs the tokenizer JSON string under 'json'")
        return JsonTokenizer(d["json"])
    raise ValueError(f"tokenizer dict: unknown type {kind!r} (expected 'byte' or 'json')")


# ----------------------------------------------------------------------------------------------
# Training a tokenizer from a manifest's dialogue
# ----------------------------------------------------------------------------------------------

TOKENIZER_KINDS: tuple[str, ...] = ("word", "bpe")
# The word-level unknown token. In byte-level space "Ġ" is a space, so an unseen word decodes as
# " [UNK]" in place of " word" and the text around it keeps its spacing. No text encodes to this
# string by itself (the pre-tokenizer splits "[", "UNK" and "]"), so it never collides with a word.
UNK_TOKEN = "\u0120[UNK]"
DEFAULT_BPE_VOCAB = 2048
_BYTE_ALPHABET = 256  # the byte-level alphabet a BPE vocabulary starts from


def _byte_level_tokenizer(model):
    """A tokenizers pipeline around ``model`` whose decode inverts encode exactly.

    Every text gets one leading space (``Prepend``), so a word carries its space wherever it stands
    and the answer "red" is the same token as the "red" inside a question; the GPT-2 byte-level
    pre-tokenizer then splits words (with their leading space), number runs, punctuation runs and
    whitespace runs, over the 256 byte symbols (any UTF-8 text, no normalisation: case and accents are
    kept). Decoding maps the symbols back to bytes and strips the one space encode added.
    """
    tk = _import_tokenizers()
    t = tk.Tokenizer(model)
    t.normalizer = tk.normalizers.Prepend(" ")
    t.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    t.decoder = tk.decoders.Sequence([tk.decoders.ByteLevel(), tk.decoders.Strip(" ", 1, 0)])
    return t


def _manifest_turns(manifest_paths: Sequence[str | Path]) -> list[tuple[str, str]]:
    """``(role, text)`` of every dialogue turn of the manifests, in file and turn order.

    Media are not probed: the tokenizer needs only the text, so it can be built before (or without)
    the media being in place. A bad manifest raises its :class:`~ssm_mm.data.manifest.ManifestError`.
    """
    from ssm_mm.data.manifest import read_manifest

    return [
        (turn.role, turn.text)
        for path in manifest_paths
        for spec in read_manifest(path, check_media=False).streams
        for turn in spec.dialogue
    ]


def _check_int(name: str, value, lowest: int, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{name} must be an integer >= {lowest} ({why}), got {value!r}")


def train_from_manifest(
    manifest_paths: str | Path | Sequence[str | Path],
    kind: str = "word",
    vocab_size: int | None = None,
    min_frequency: int = 1,
    out: str | Path | None = None,
) -> JsonTokenizer:
    """Build a tokenizer from the dialogue text (questions and answers) of training manifests.

    Both kinds share one byte-level pipeline (:func:`_byte_level_tokenizer`): no normalisation, and
    decode(encode(text)) == text for every text made of known tokens.

    * ``"word"``: a ``WordLevel`` model, one token per word as the GPT-2 pre-tokenizer splits it (a
      word with its leading space, a number, a run of punctuation or of whitespace). Vocabulary:
      ``UNK_TOKEN`` (id 0), then every word seen at least ``min_frequency`` times, most frequent first
      (ties in code-point order), at most ``vocab_size`` entries in all (None: no cap). Every answer
      and question of the manifest is then one token per word and decodes back exactly. An unseen
      word becomes one ``UNK_TOKEN`` and decodes as "[UNK]" in its place; ``min_frequency=2`` turns
      the manifest's one-off words into ``UNK_TOKEN`` too, so that the model learns an embedding for
      it before meeting unseen words.
    * ``"bpe"``: a byte-level ``BPE`` model (``BpeTrainer``) over the 256 byte symbols plus merges of
      pairs seen at least ``min_frequency`` times, ``vocab_size`` entries in all (default
      ``DEFAULT_BPE_VOCAB``; training stops earlier when no pair is left to merge). No unknown
      token: an unseen word is spelt from smaller pieces, down to bytes, so every text round-trips,
      and frequent words become single tokens when ``vocab_size`` is large enough.

    The same manifests and arguments give a byte-identical JSON. Our turn and role tokens are not in
    it: :class:`TurnTokenizer` appends them after the JSON's vocabulary.

    Args:
        manifest_paths: one manifest or several (their dialogue is pooled); only training manifests,
            so that validation text stays unseen.
        kind: ``"word"`` or ``"bpe"``.
        vocab_size: the JSON vocabulary's size cap (the model's vocabulary is 6 larger).
        min_frequency: word kind: occurrences a word needs; BPE: occurrences a pair needs to merge.
        out: when given, the JSON is written there (folders created).

    Returns:
        the :class:`JsonTokenizer`; ``to_dict()`` carries the JSON, so a model saves it with itself.

    Raises:
        ValueError: an unknown kind, a bad ``vocab_size`` / ``min_frequency``, no manifest, or no
            dialogue text (a :class:`~ssm_mm.data.manifest.ManifestError` for a bad manifest file).
    """
    paths = [manifest_paths] if isinstance(manifest_paths, (str, Path)) else list(manifest_paths)
    if not paths:
        raise ValueError("train_from_manifest: no manifest given")
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind {kind!r}: expected one of {list(TOKENIZER_KINDS)}")
    if vocab_size is not None:
        if kind == "word":
            _check_int("vocab_size", vocab_size, 2, "the unknown token and at least one word")
        else:
            _check_int(
                "vocab_size", vocab_size, _BYTE_ALPHABET + 1, "256 byte symbols and at least one merge"
            )
    _check_int("min_frequency", min_frequency, 1, "occurrences")
    texts = [text for _, text in _manifest_turns(paths)]
    if not texts:
        names = ", ".join(str(p) for p in paths)
        raise ValueError(
            f"{names}: no dialogue text to build a tokenizer from (every stream's 'dialogue' is empty)"
        )

    tk = _import_tokenizers()
    if kind == "word":
        t = _byte_level_tokenizer(tk.models.WordLevel({UNK_TOKEN: 0}, unk_token=UNK_TOKEN))
        # Counted here rather than by WordLevelTrainer so the id order (count, then code point) is
        # ours to state; the words are exactly the pieces encode() will look up.
        counts = Counter(
            piece
            for text in texts
            for piece, _ in t.pre_tokenizer.pre_tokenize_str(t.normalizer.normalize_str(text))
        )
        words = sorted((w for w, n in counts.items() if n >= min_frequency), key=lambda w: (-counts[w], w))
        if not words:
            raise ValueError(
                f"min_frequency={min_frequency}: no word of the dialogue occurs that often "
                f"(the most frequent occurs {max(counts.values())} times)"
            )
        if vocab_size is not None:
            words = words[: vocab_size - 1]
        vocab = {UNK_TOKEN: 0, **{w: i for i, w in enumerate(words, start=1)}}
        t.model = tk.models.WordLevel(vocab, unk_token=UNK_TOKEN)
    else:
        t = _byte_level_tokenizer(tk.models.BPE())
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size or DEFAULT_BPE_VOCAB,
            min_frequency=min_frequency,
            show_progress=False,
            special_tokens=[],
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),  # every byte: no unknown token
        )
        t.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # The file's exact text is what the model stores, so a model built from this tokenizer and one
    # built from tokenizer.path = out save identical config.json files.
    json_str = t.to_str() + "\n"
    if out is not None:
        _write_atomic(Path(out), json_str)
    return JsonTokenizer(json_str)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (folders created) whole or not at all; OSError names ``path``."""
    if path.parent.exists() and not path.parent.is_dir():
        raise OSError(f"{path}: cannot write the tokenizer JSON ({path.parent} is not a folder)")
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # a half-written temporary file, if any
            tmp.unlink()
        raise OSError(f"{path}: cannot write the tokenizer JSON ({e.strerror or e})") from None


@dataclass(frozen=True)
class TextStats:
    """How a tokenizer encodes a list of texts: ``n`` texts, ``mean_tokens`` content tokens per text,
    ``exact`` of them decode back to the same text."""

    n: int
    mean_tokens: float
    exact: int


def text_stats(tok: TurnTokenizer, texts: Sequence[str]) -> TextStats:
    """:class:`TextStats` of ``tok`` over ``texts`` (mean 0.0 for no text)."""
    encoded = [tok.encode(t) for t in texts]
    exact = sum(tok.decode(ids) == t for ids, t in zip(encoded, texts))
    mean = sum(map(len, encoded)) / len(encoded) if encoded else 0.0
    return TextStats(n=len(texts), mean_tokens=mean, exact=exact)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (the project's "bad input")
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _report_line(what: str, tok: TurnTokenizer, texts: Sequence[str]) -> str:
    if not texts:
        return f"{what}: none in the dialogue"
    s, b = text_stats(tok, texts), text_stats(ByteTokenizer(), texts)
    return (
        f"{what} ({s.n}): {s.mean_tokens:.2f} tokens on average (byte-level default: {b.mean_tokens:.2f}); "
        f"{s.exact} of {s.n} decode back exactly"
    )


def main(argv: list[str] | None = None) -> int:
    """``build MANIFEST... --out JSON [--kind] [--vocab-size] [--min-frequency]``: 0 done, 2 bad input."""
    p = _Parser(
        prog="python -m ssm_mm.data.tokenizer",
        description="Build a tokenizer (tokenizers JSON, for tokenizer.path) from manifests' dialogue.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    b = sub.add_parser(
        "build", help="train a word-level or BPE tokenizer on the training manifests' dialogue"
    )
    b.add_argument(
        "manifests", nargs="+", type=Path, metavar="MANIFEST", help="training manifest(s) (.jsonl)"
    )
    b.add_argument("--out", type=Path, required=True, help="where to write the tokenizers JSON")
    b.add_argument("--kind", choices=TOKENIZER_KINDS, default="word", help="word-level (default) or BPE")
    b.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help=f"vocabulary cap (word: no cap by default; bpe: {DEFAULT_BPE_VOCAB} by default, > 256)",
    )
    b.add_argument(
        "--min-frequency",
        type=int,
        default=1,
        help="occurrences a word (word) or a pair (bpe) needs (default 1)",
    )
    a = p.parse_args(argv)
    try:
        tok = train_from_manifest(
            a.manifests, kind=a.kind, vocab_size=a.vocab_size, min_frequency=a.min_frequency, out=a.out
        )
        turns = _manifest_turns(a.manifests)
    except (ValueError, OSError, ImportError) as e:  # ManifestError is a ValueError
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    kind = "word-level" if a.kind == "word" else "BPE"
    print(
        f"wrote {a.out}: {kind} tokenizer, {tok.n_content} tokens "
        f"(model vocabulary {tok.vocab_size} with the {len(SPECIAL_TOKENS)} turn/role tokens), "
        f"from {len(turns)} turns in {len(a.manifests)} manifest(s)"
    )
    for role, what in (("assistant", "answers"), ("user", "questions")):
        print(_report_line(what, tok, [text for r, text in turns if r == role]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
