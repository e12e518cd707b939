"""Byte-level tokenizer with turn/role tokens, and the optional tokenizers-JSON plug-in."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from ssm_mm.data.tokenizer import (
    SPECIAL_TOKENS,
    UNK_TOKEN,
    ByteTokenizer,
    JsonTokenizer,
    TokenizerConfig,
    load_tokenizer,
    text_stats,
    tokenizer_from_dict,
    train_from_manifest,
)
from ssm_mm.data.tokenizer import main as tokenizer_main

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


# ---------------------------------------------------------------------------------- train_from_manifest

# Questions and answers of a small own-data manifest: case, punctuation, digits, accents, emoji, a tab
# and a double space, a leading space; every turn must come back exactly from either kind.
DIALOGUE = [
    ("how many times did the bell ring?", "3"),
    ("What colour was the circle, when the drum last played?", "dark red"),
    ("Where is Paris?", "in France, near the Seine."),
    ("wie heißt der Fluss?", "die Seine 🌊"),
    ("tab\tthen  two spaces", " ok"),
    ("how many times did the drum play?", "12"),
]


def write_dialogue_manifest(path, dialogue=DIALOGUE, streams=3):
    """A manifest whose streams all carry ``dialogue`` (media are never opened by the builder)."""
    lines = []
    for i in range(streams):
        turns = []
        for j, (q, a) in enumerate(dialogue):
            turns += [
                {"t": j + 1.0, "role": "user", "text": q},
                {"t": j + 1.0, "role": "assistant", "text": a},
            ]
        lines.append({"id": f"s{i}", "video": "media/s.mp4", "duration": 30.0, "dialogue": turns})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def manifest(tmp_path):
    pytest.importorskip("tokenizers")
    return write_dialogue_manifest(tmp_path / "train.jsonl")


TURN_TEXTS = [text for pair in DIALOGUE for text in pair]


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_trained_tokenizer_round_trips_every_turn(manifest, kind):
    tok = train_from_manifest(manifest, kind=kind)
    for text in TURN_TEXTS:
        ids = tok.encode(text)
        assert all(0 <= i < tok.n_content for i in ids)
        assert tok.decode(ids) == text
        assert tok.decode(tok.encode_turn("assistant", text)) == text
    if kind == "word":
        unk = tok.encode("[UNK]")  # only ever what an unknown word maps to
        assert tok._tk.token_to_id(UNK_TOKEN) == 0 and all(0 not in tok.encode(t) for t in TURN_TEXTS)
        assert unk != [0]
        # One token per word: "dark red" is two, "3" one, and the answer word is the question's word.
        assert len(tok.encode("dark red")) == 2 and len(tok.encode("3")) == 1
        assert tok.encode("the drum") == tok.encode("the") + tok.encode("drum")


def test_word_vocabulary_order_frequency_and_cap(tmp_path):
    pytest.importorskip("tokenizers")
    m = write_dialogue_manifest(tmp_path / "m.jsonl", [("a b b c c c", "c")], streams=1)
    vocab = train_from_manifest(m, kind="word")._tk.get_vocab()
    assert vocab == {UNK_TOKEN: 0, "\u0120c": 1, "\u0120b": 2, "\u0120a": 3}  # count, then code point
    # min_frequency 2 leaves "a" out: it becomes the unknown token, and the model learns that token.
    tok = train_from_manifest(m, kind="word", min_frequency=2)
    assert tok.n_content == 3 and tok.encode("a b") == [0, 2] and tok.decode([0, 2]) == "[UNK] b"
    capped = train_from_manifest(m, kind="word", vocab_size=2)
    assert capped.n_content == 2 and capped.encode("c b") == [1, 0]


def test_unseen_words_degrade_gracefully(manifest):
    word = train_from_manifest(manifest, kind="word")
    # One unknown token per unseen word, shown in its place with the spacing and known words kept;
    # case is kept, so "paris" is not "Paris".
    ids = word.encode("where is Berlin, the drum?")
    assert ids.count(0) == 2 and len(ids) == 7  # where is Berlin , the drum ?
    assert word.decode(ids) == "[UNK] is [UNK], the drum?"
    assert word.decode(word.encode("Paris")) == "Paris" and word.encode("paris") == [0]
    # BPE has no unknown token: unseen text is spelt from smaller pieces, down to bytes.
    bpe = train_from_manifest(manifest, kind="bpe")
    for text in ["where is Berlin, the drum?", "日本語 ✓ Ωmega", "x" * 40]:
        assert bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode("Berlin")) > 1 and len(bpe.encode("Paris")) < len("Paris")


def test_trained_tokenizer_shortens_answers(manifest):
    answers = [a for _, a in DIALOGUE]
    byte = text_stats(ByteTokenizer(), answers)
    for kind in ("word", "bpe"):
        s = text_stats(train_from_manifest(manifest, kind=kind), answers)
        assert s.n == len(answers) and s.exact == len(answers)
        assert s.mean_tokens < byte.mean_tokens
    word = text_stats(train_from_manifest(manifest, kind="word"), answers)
    assert word.mean_tokens == pytest.approx(sum(map(len, word_splits(answers))) / len(answers))


def word_splits(texts):
    """The words of ``texts`` as the word-level tokenizer counts them (GPT-2 pre-tokenizer pieces)."""
    from tokenizers.pre_tokenizers import ByteLevel

    pre = ByteLevel(add_prefix_space=False, use_regex=True)
    return [[w for w, _ in pre.pre_tokenize_str(" " + t)] for t in texts]


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_trained_tokenizer_is_deterministic(manifest, tmp_path, kind):
    a = tmp_path / "a" / "tok.json"
    b = tmp_path / "b.json"
    train_from_manifest(manifest, kind=kind, out=a)
    train_from_manifest([manifest], kind=kind, out=b)
    assert a.read_bytes() == b.read_bytes() and not list(tmp_path.glob("**/*.tmp"))
    # The file is a tokenizers JSON that tokenizer.path loads; it encodes like the returned tokenizer.
    loaded = load_tokenizer(TokenizerConfig(path=str(a)))
    assert loaded.to_dict() == train_from_manifest(manifest, kind=kind).to_dict()
    # Pooling manifests pools their dialogue.
    other = write_dialogue_manifest(tmp_path / "other.jsonl", [("zebra crossing?", "yes")], streams=1)
    pooled = train_from_manifest([manifest, other], kind="word")
    assert 0 not in pooled.encode("zebra crossing? the bell")


def test_bpe_vocab_size_is_the_cap(manifest):
    tok = train_from_manifest(manifest, kind="bpe", vocab_size=300)
    assert tok.n_content == 300 and tok.vocab_size == 306
    assert train_from_manifest(manifest, kind="bpe").n_content < 2048  # stops when no pair is left


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "sentencepiece"}, "expected one of"),
        ({"vocab_size": 1}, "vocab_size must be an integer >= 2"),
        ({"kind": "bpe", "vocab_size": 256}, "vocab_size must be an integer >= 257"),
        ({"vocab_size": 10.5}, "vocab_size must be an integer"),
        ({"vocab_size": True}, "vocab_size must be an integer"),
        ({"min_frequency": 0}, "min_frequency must be an integer >= 1"),
        ({"min_frequency": 10**6}, "no word of the dialogue occurs that often"),
    ],
)
def test_train_from_manifest_rejects_bad_arguments(manifest, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_from_manifest(manifest, **kwargs)


def test_train_from_manifest_rejects_bad_manifests(tmp_path):
    pytest.importorskip("tokenizers")
    from ssm_mm.data.manifest import ManifestError

    with pytest.raises(ValueError, match="no manifest given"):
        train_from_manifest([])
    with pytest.raises(ManifestError, match="manifest file not found"):
        train_from_manifest(tmp_path / "missing.jsonl")
    silent = write_dialogue_manifest(tmp_path / "silent.jsonl", [], streams=2)
    with pytest.raises(ValueError, match=r"silent\.jsonl: no dialogue text"):
        train_from_manifest(silent)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "s0", "video": "v.mp4", "duration": 5, "dialogue": [{"t": 1, "role": "bot"}]}\n')
    with pytest.raises(ManifestError, match=r"bad\.jsonl:1"):
        train_from_manifest(bad)


def test_cli_builds_and_reports(manifest, tmp_path):
    out = tmp_path / "tok" / "words.json"
    run = subprocess.run(
        [sys.executable, "-m", "ssm_mm.data.tokenizer", "build", str(manifest), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    tok = train_from_manifest(manifest)
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out}: word-level tokenizer, {tok.n_content} tokens")
    assert (
        f"model vocabulary {tok.vocab_size}" in lines[0] and f"from {2 * len(DIALOGUE) * 3} turns" in lines[0]
    )
    answers = [a for _, a in DIALOGUE] * 3
    ours, byte = text_stats(tok, answers), text_stats(ByteTokenizer(), answers)
    assert lines[1] == (
        f"answers ({len(answers)}): {ours.mean_tokens:.2f} tokens on average "
        f"(byte-level default: {byte.mean_tokens:.2f}); {len(answers)} of {len(answers)} decode back exactly"
    )
    assert lines[2].startswith(f"questions ({len(answers)}): ")
    # Another process (other hash seeds) writes the same bytes as this one.
    here = tmp_path / "here.json"
    train_from_manifest(manifest, out=here)
    assert out.read_bytes() == here.read_bytes()


def test_cli_bpe_options(manifest, tmp_path, capsys):
    out = tmp_path / "bpe.json"
    assert (
        tokenizer_main(["build", str(manifest), "--out", str(out), "--kind", "bpe", "--vocab-size", "300"])
        == 0
    )
    assert "BPE tokenizer, 300 tokens (model vocabulary 306" in capsys.readouterr().out
    assert JsonTokenizer.from_file(out).n_content == 300


@pytest.mark.parametrize(
    "args, match",
    [
        (["build", "{missing}", "--out", "{out}"], "manifest file not found"),
        (["build", "{silent}", "--out", "{out}"], "no dialogue text"),
        (
            ["build", "{manifest}", "--out", "{out}", "--vocab-size", "many"],
            "--vocab-size: invalid int value",
        ),
        (
            ["build", "{manifest}", "--out", "{out}", "--vocab-size", "0"],
            "vocab_size must be an integer >= 2",
        ),
        (["build", "{manifest}", "--out", "{out}", "--kind", "bpe", "--vocab-size", "100"], ">= 257"),
        (["build", "{manifest}", "--out", "{out}", "--kind", "chars"], "--kind: invalid choice"),
        (["build", "{manifest}"], "required: --out"),
        ([], "required: command"),
        (["build", "{manifest}", "--out", "{manifest}/tok.json"], "tok.json: cannot write"),  # not a folder
    ],
)
def test_cli_bad_input_exits_2_with_one_line(manifest, tmp_path, capsys, args, match):
    silent = write_dialogue_manifest(tmp_path / "silent.jsonl", [], streams=1)
    paths = {
        "missing": tmp_path / "nope.jsonl",
        "silent": silent,
        "manifest": manifest,
        "out": tmp_path / "t.json",
    }
    argv = [a.format(**paths) for a in args]
    try:
        rc = tokenizer_main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "t.json").exists()


def test_model_saves_and_loads_the_trained_tokenizer(manifest, tmp_path):
    from support import tiny_model_config

    from ssm_mm.models.multimodal import MultimodalSSM

    tok = train_from_manifest(manifest, kind="word")
    model = MultimodalSSM(tiny_model_config(), tokenizer=tok)
    assert model.heads["lm"].weight.shape[0] == tok.vocab_size == tok.n_content + len(SPECIAL_TOKENS)
    loaded = MultimodalSSM.from_pretrained(model.save_pretrained(tmp_path / "model"))
    again = loaded.tokenizer
    assert isinstance(again, JsonTokenizer) and again.to_dict() == tok.to_dict()
    assert (
        again.vocab_size == tok.vocab_size
        and loaded.heads["lm"].weight.shape == model.heads["lm"].weight.shape
    )
    for text in TURN_TEXTS:
        assert again.encode_turn("user", text) == tok.encode_turn("user", text)
    for name, p in model.state_dict().items():
        assert loaded.state_dict()[name].equal(p), name
