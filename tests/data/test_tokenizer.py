"""Byte-level tokenizer with turn/role tokens, and the optional tokenizers-JSON plug-in."""

from __future__ import annotations

import json
import pickle

import pytest
from omegaconf import OmegaConf

from ssm_mm.data.tokenizer import (
    SPECIAL_TOKENS,
    ByteTokenizer,
    TokenizerConfig,
    load_tokenizer,
    tokenizer_from_dict,
)

TEXTS = ["how many times did the bell ring?", "3", "", "héllo wörld — 日本語 🎵🔔", "tab\tnew\nline"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode_turn("assistant", text)) == text


def test_byte_specials_and_turn_layout():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 + len(SPECIAL_TOKENS) == 262
    specials = [tok.pad_id, tok.bos_id, tok.bot_id, tok.eot_id, tok.role_id("user"), tok.role_id("assistant")]
    assert specials == list(range(256, 262)) and all(tok.is_special(i) for i in specials)
    assert [tok.special_id(n) for n in SPECIAL_TOKENS] == specials
    assert tok.encode_turn("user", "hi") == [tok.bot_id, tok.role_id("user"), 104, 105, tok.eot_id]
    assert tok.encode_turn("assistant", "") == [tok.bot_id, tok.role_id("assistant"), tok.eot_id]
    assert tok.role_of_id(tok.role_id("assistant")) == "assistant" and tok.role_of_id(65) is None


def test_decode_stops_at_eot_skips_specials_and_replaces_bad_utf8():
    tok = ByteTokenizer()
    ids = [tok.bot_id, tok.role_id("user"), *tok.encode("ab"), tok.pad_id, *tok.encode("c"), tok.eot_id, 100]
    assert tok.decode(ids) == "abc"
    cut = tok.encode("é")[:1] + tok.encode("x")  # a 2-byte character cut after its first byte
    assert tok.decode(cut) == "\ufffdx"


def test_byte_errors():
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([262])
    with pytest.raises(ValueError, match="unknown role"):
        tok.encode_turn("system", "x")
    with pytest.raises(ValueError, match="must be a str"):
        tok.encode(b"bytes")


def test_config_and_dict_round_trip():
    tok = load_tokenizer(TokenizerConfig())
    assert isinstance(tok, ByteTokenizer)
    d = json.loads(json.dumps(tok.to_dict()))  # what a config.json stores
    assert isinstance(tokenizer_from_dict(d), ByteTokenizer)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TokenizerConfig), {"path": "x.json"}))
    assert isinstance(cfg, TokenizerConfig) and cfg.path == "x.json"
    with pytest.raises(ValueError, match="unknown type"):
        tokenizer_from_dict({"type": "sentencepiece"})


@pytest.fixture(scope="module")
def bpe_json(tmp_path_factory) -> str:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(["how many times did the bell ring", "tell me when the drum plays"] * 20, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(tk.to_str())
    return str(path)


@pytest.mark.parametrize("text", TEXTS)
def test_json_tokenizer_round_trip(bpe_json, text):
    tok = load_tokenizer(TokenizerConfig(path=bpe_json))
    ids = tok.encode(text)
    assert all(0 <= i < tok.n_content for i in ids)
    assert tok.decode(tok.encode_turn("user", text)) == text


def test_json_tokenizer_specials_follow_its_vocabulary(bpe_json):
    tok = load_tokenizer(TokenizerConfig(path=bpe_json))
    v = tok.n_content
    assert v > 256 and tok.vocab_size == v + 6 and (tok.pad_id, tok.eot_id) == (v, v + 3)
    assert len(tok.encode("the bell")) < len("the bell")  # merges were learned
    turn = tok.encode_turn("assistant", "drum")
    assert turn[:2] == [tok.bot_id, tok.role_id("assistant")] and turn[-1] == tok.eot_id
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.encode("tell me") == tok.encode("tell me") and again.vocab_size == tok.vocab_size
    assert pickle.loads(pickle.dumps(tok)).encode("ring") == tok.encode("ring")


def test_json_tokenizer_errors(tmp_path):
    pytest.importorskip("tokenizers")
    with pytest.raises(ValueError, match="file not found"):
        load_tokenizer(TokenizerConfig(path=str(tmp_path / "missing.json")))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizers JSON"):
        load_tokenizer(TokenizerConfig(path=str(bad)))
