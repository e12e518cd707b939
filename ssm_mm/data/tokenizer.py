"""Text tokenizers with turn and role tokens (SPEC §3): byte-level by default, a HF ``tokenizers``
JSON file optionally.

Both share one interface (:class:`TurnTokenizer`): content ids come first (bytes 0..255, or the JSON
vocabulary 0..V-1) and six special tokens follow them, in this order:

    PAD, BOS, BOT (begin of turn), EOT (end of turn), ROLE_USER, ROLE_ASSISTANT

A dialogue turn is ``[BOT, ROLE, content..., EOT]``. Saving into a model's config.json goes through
``to_dict()`` / :func:`tokenizer_from_dict` (the JSON tokenizer stores its whole JSON string, so a
saved model needs no extra file).
"""

from __future__ import annotations

from collections.abc import Iterable
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
    encodes as ``unk``. Decoding joins words with single spaces. For a closed-vocabulary corpus (the
    AVWorld dialogue: :func:`ssm_mm.data.avworld.vocabulary`) this makes every word, and so every
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
