"""MultimodalSSM: frontends + modality and temporal embeddings + hybrid backbone + heads (SPEC §6).

One early-fusion model over the interleaved timed tokens of :mod:`ssm_mm.data.interleave`:

    x_i = frontend_{kind_i}(token_i) + modality_emb[kind_i] + temporal_emb(t_i, gap_i, gap_same_i)
    h   = HybridBackbone(x, dt = gap, state)
    heads: one per objective (:mod:`ssm_mm.objectives`), ``heads[name]``: "lm" (next text token at
           every position), "event" and "speak" (at a tick's summary position: its label, and
           "speak now" for proactive responses), and the optional training-only objectives' heads
           (video, count, order, recall, attribute, or a user's own).

Time enters twice: the temporal embedding (bounded features of the gaps and of t, see
:mod:`ssm_mm.layers.temporal`) and the SSM decay, which advances by ``gap`` real seconds (SPEC §6).
Gaps are computed in float64 from absolute times, so a clock shifted by hours changes nothing but
the periodic features. The recurrent state (:class:`ssm_mm.state.ModelState`) carries the backbone
state and the times of the last token (overall and per modality), so chunked == full forward exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ssm_mm.config import ModelConfig, TemporalConfig
from ssm_mm.data.featurize import FeaturizerConfig
from ssm_mm.data.interleave import AUDIO, TEXT, VIDEO
from ssm_mm.data.tokenizer import TurnTokenizer, load_tokenizer, tokenizer_from_dict
from ssm_mm.layers.frontends import AudioFrontend, TextFrontend, VideoFrontend
from ssm_mm.layers.temporal import TemporalEmbedding
from ssm_mm.models.backbone import HybridBackbone
from ssm_mm.objectives import HeadSpec, Objective, Readout, build_objectives
from ssm_mm.objectives.base import config_from_dict
from ssm_mm.state import ModelState

# 2: objectives (their configs under "objectives", heads as heads.<name>.*); 1: the heads' settings in
# "model" and parameters <name>_head.* (read through upgrade_format_1)
FORMAT_VERSION = 2
N_KINDS = 3


WEIGHTS_FILE = "model.safetensors"
_HASH_BLOCK = 1 << 20  # bytes read at a time while hashing a weights file


class WeightsError(ValueError):
    """A model folder's weights file is damaged: it does not match its recorded checksum, or it is not
    a readable safetensors file. The message names the file."""


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks (memory stays bounded for any file size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def weights_record(path: str | Path) -> dict:
    """What ``config.json`` records about a weights file: ``{"file", "bytes", "sha256"}``."""
    p = Path(path)
    return {"file": WEIGHTS_FILE, "bytes": p.stat().st_size, "sha256": file_sha256(p)}


def _check_weights_record(path: Path, record) -> None:
    """Verify ``path`` against a ``config.json`` ``weights`` record (None: nothing recorded)."""
    if record is None:
        return
    where = path.parent / "config.json"
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise WeightsError(f"{where}: 'weights' must be a dict with a 'sha256' hex digest, got {record!r}")
    want = record["sha256"].lower()
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise WeightsError(f"{where}: weights.sha256 is not a sha256 hex digest: {record['sha256']!r}")
    size = path.stat().st_size
    if isinstance(record.get("bytes"), int) and size != record["bytes"]:
        raise WeightsError(
            f"{path}: {size} bytes but config.json records {record['bytes']} (truncated or replaced); the "
            f"checksum cannot match"
        )
    got = file_sha256(path)
    if got != want:
        raise WeightsError(
            f"{path}: sha256 checksum {got[:16]}... does not match config.json's {want[:16]}... (the file is "
            f"damaged or belongs to another model)"
        )


def _load_weights(path: Path, record, map_location) -> dict[str, Tensor]:
    """A model folder's tensors, verified against its ``config.json`` record when there is one."""
    from safetensors import SafetensorError

    _check_weights_record(path, record)
    try:
        return load_file(str(path), device=str(map_location))
    except SafetensorError as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


def record_weights_checksum(directory: str | Path) -> dict:
    """Converter for folders saved before checksums were recorded: add the ``weights`` record (size,
    sha256) of ``model.safetensors`` to ``config.json``, leaving the weights untouched. The folder
    must load first (so a damaged file is not vouched for); a folder that already has a record is
    verified and left as it is. Returns the record. Usage::

        python -c "from ssm_mm.models.multimodal import record_weights_checksum as r; r('path/to/model')"
    """
    d = Path(directory)
    MultimodalSSM.from_pretrained(d)  # loads (and verifies an existing record), or raises
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("weights") is not None:
        return cfg["weights"]
    cfg["weights"] = weights_record(d / WEIGHTS_FILE)
    tmp = d / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    tmp.replace(d / "config.json")
    return cfg["weights"]


@dataclass
class ModelOutput:
    hidden: Tensor  # (B, L, d_model) final hidden states
    state: ModelState


# format 1: the settings of the optional heads in "model", and each head's parameter prefix
_V1_HEAD_KEYS = (
    "video_target",
    "count_head",
    "order_head",
    "recall_head",
    "recall_attribute",
    "recall_attributes",
    "recall_values",
)
_V1_HEADS = ("lm", "event", "speak", "video", "count", "order", "recall", "attribute")
_V1_PREFIXES = {f"{name}_head.": f"heads.{name}." for name in _V1_HEADS}


def upgrade_format_1(cfg: dict) -> dict:
    """A format-1 ``config.json`` dict (heads configured in ``model``: video_target, count_head,
    order_head, recall_head, recall_attribute(s), recall_values) as format 2 (``objectives``)."""
    cfg = dict(cfg)
    m = dict(cfg["model"])
    old = {k: m.pop(k) for k in _V1_HEAD_KEYS if k in m}
    objectives: dict[str, dict] = {"lm": {}, "event": {}, "speak": {}}
    if old.get("video_target"):
        objectives["video"] = {"size": old["video_target"]}
    if old.get("count_head"):
        objectives["count"] = {"max": old["count_head"]}
    if old.get("order_head") and len(cfg["labels"]) > 1:  # format 1 had no order head without events
        objectives["order"] = {}
    if old.get("recall_head"):
        objectives["recall"] = {"size": old["recall_head"]}
    names = ([old["recall_attribute"]] if old.get("recall_attribute") else []) + list(
        old.get("recall_attributes", [])
    )
    if names:
        objectives["attribute"] = {"names": names, "values": list(old.get("recall_values", []))}
    return {**cfg, "format_version": 2, "model": m, "objectives": objectives}


def upgrade_weight_names(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Format-1 parameter names (``count_head.weight``) as format 2 (``heads.count.weight``)."""
    out = {}
    for k, v in tensors.items():
        prefix = next((p for p in _V1_PREFIXES if k.startswith(p)), None)
        out[_V1_PREFIXES[prefix] + k[len(prefix) :] if prefix else k] = v
    return out


def bucket_length(n: int, per_octave: int = 8) -> int:
    """``n`` rounded up to the next of ``per_octave`` evenly spaced lengths per octave (``per_octave`` a
    power of two): the next multiple of ``2**floor(log2 n) / per_octave``, so at most ``1 / per_octave``
    of ``n`` is added. Lengths below ``2 * per_octave`` are kept."""
    if per_octave < 1 or per_octave & (per_octave - 1):
        raise ValueError(f"bucket_length: per_octave must be a power of two, got {per_octave}")
    step = 1 << max(0, n.bit_length() - per_octave.bit_length())
    return -(-n // step) * step


def prepare_compile() -> None:
    """Make the model's einops calls cheap and stable to trace (called before compiling it).

    - ``einops.rearrange`` goes into the graph as one call (``allow_in_graph``, what einops itself did
      for torch < 2.8): Dynamo would otherwise trace einops' pattern parsing in Python at every call
      site, ~5x the model's trace time (tiny model: 35 s -> 7 s);
    - einops registers its torch backend in a global dict at its first call, and Dynamo guards on
      that dict: a first trace before any eager einops call would be recompiled at the second call.
    """
    from einops import rearrange

    torch._dynamo.allow_in_graph(rearrange)
    rearrange(torch.zeros(1), "n -> n")


class CompiledForward:
    """``model.forward_batch`` under ``torch.compile``, for training steps (``train.compile=true``).

    The forward traces as one graph with no breaks (no host syncs, no data-dependent shapes: see
    ``tests/models/test_compiled_forward.py``). What varies from batch to batch is handled so that it
    does not recompile every step:

    - the sequence length L is padded (invalid TEXT tokens repeating each row's last time, the
      padding a collated batch already has) to :func:`bucket_length` and compiled static per bucket:
      the scan's chunk count and the attention's block count are then Python constants; ≤ 8 buckets
      per octave, ≤ 12.5% padding, and outputs are cut back to L (padding never touches the state,
      so the carried state is the unpadded one up to rounding);
    - the numbers of frames and audio tokens (F, A) are marked dynamic from the first call.

    The carried state (fixed shapes for SSM layers and windowed attention) is an ordinary input. The
    losses stay eager (:class:`ssm_mm.training.trainer.TrainStep`): they select supervised positions
    with boolean masks (data-dependent shapes) and count items on the host.
    """

    def __init__(self, model: MultimodalSSM, per_octave: int = 8, **compile_options):
        prepare_compile()
        self.model = model
        self.per_octave = per_octave
        # the bound method, not model.compile(): validation and streaming keep the eager model
        self.fn = torch.compile(model.forward, **compile_options)

    def __call__(self, batch, state: ModelState | None = None) -> ModelOutput:
        b, n = batch.kind.shape
        kind, t, src, valid = batch.kind, batch.t, batch.src, batch.valid
        pad = bucket_length(n, self.per_octave) - n
        if pad:
            kind = torch.cat([kind, kind.new_full((b, pad), TEXT)], 1)
            t = torch.cat([t, t[:, -1:].expand(b, pad)], 1)  # Δt = 0 over the padding
            src = torch.cat([src, src.new_full((b, pad), self.model.tokenizer.pad_id)], 1)
            valid = torch.cat([valid, valid.new_zeros(b, pad)], 1)
        for x in (kind, t, src, valid):
            torch._dynamo.mark_static(x, 1)
        for x in (batch.video, batch.audio):
            if x is not None:
                torch._dynamo.maybe_mark_dynamic(x, 0)
        out = self.fn(kind, t, src, valid, batch.video, batch.audio, state)
        return ModelOutput(out.hidden[:, :n], out.state) if pad else out


def _model_config_from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    temporal = TemporalConfig(**d.pop("temporal", {}))
    names = {f.name for f in fields(ModelConfig)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"config.json: unknown model config keys {sorted(unknown)}")
    return ModelConfig(**d, temporal=temporal)


class MultimodalSSM(nn.Module):
    """The natively multimodal, time-aware hybrid model.

    Args:
        cfg: model sizes and switches (``model.*``).
        features: the featurizer settings the model was trained with (saved with it).
        labels: event-label vocabulary; index 0 is ``background``.
        tokenizer: the text tokenizer (default: byte-level).
        objectives: what the model is trained for: a config section (``cfg.objectives``, or
            ``{name: config}``; default: the always-on lm, event and speak). One head per objective,
            ``heads[name]``, in registration order (:mod:`ssm_mm.objectives`).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        features: FeaturizerConfig | None = None,
        labels: list[str] | None = None,
        tokenizer: TurnTokenizer | None = None,
        objectives=None,
    ):
        super().__init__()
        self.cfg = cfg
        self.features = features or FeaturizerConfig()
        self.labels = list(labels) if labels else ["background"]
        if self.labels[0] != "background":
            raise ValueError(f"labels[0] must be 'background', got {self.labels[:3]}")
        self.tokenizer = tokenizer or load_tokenizer()
        d = cfg.d_model
        fc = self.features
        grid = fc.frame_size // cfg.patch_size
        if grid * grid != fc.patches_per_frame:
            raise ValueError(
                f"features.patches_per_frame={fc.patches_per_frame} but frame_size {fc.frame_size} / "
                f"model.patch_size {cfg.patch_size} gives {grid}x{grid} patches"
            )
        mel_frames = round(fc.audio_token_seconds * fc.sample_rate / fc.hop)
        self.audio_dim = mel_frames * fc.n_mels
        self.video_in = VideoFrontend(fc.frame_size, cfg.patch_size, d)
        self.audio_in = AudioFrontend(self.audio_dim, d)
        self.text_in = TextFrontend(self.tokenizer.vocab_size, d)
        self.kind_emb = nn.Embedding(N_KINDS, d)
        nn.init.normal_(self.kind_emb.weight, std=0.02)
        self.time_emb = TemporalEmbedding(cfg.temporal, d)
        self.backbone = HybridBackbone(cfg)
        self.objectives: dict[str, Objective] = build_objectives(objectives, self.labels)
        spec = HeadSpec(d, self.tokenizer.vocab_size, cfg.patch_size, fc.frame_size)
        self.heads = nn.ModuleDict({name: obj.build_head(spec) for name, obj in self.objectives.items()})
        if cfg.tie_embeddings:
            self.heads["lm"].weight = self.text_in.embed.weight

    # ------------------------------------------------------------------------------- state

    def init_state(self, batch: int, device=None) -> ModelState:
        dtype = next(self.parameters()).dtype
        return ModelState(
            backbone=self.backbone.init_state(batch, device, dtype),
            last_t=torch.full((batch,), float("-inf"), dtype=torch.float64, device=device),
            last_kind_t=torch.full((batch, N_KINDS), float("-inf"), dtype=torch.float64, device=device),
        )

    # ------------------------------------------------------------------------------- forward

    def _gaps(self, kind: Tensor, t: Tensor, valid: Tensor, state: ModelState):
        """Elapsed seconds since the previous token and since the previous same-modality token.

        kind, t, valid: (B, L). Returns gap, gap_same (B, L) float64 (+inf where there is no previous
        token) and the updated (last_t, last_kind_t). Padding (``valid`` False) never updates them.
        """
        neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=t.device)
        t_valid = torch.where(valid, t, neg_inf)  # (B, L)
        # previous valid token's time: running max (times are non-decreasing) shifted by one
        run = torch.cummax(torch.cat([state.last_t.unsqueeze(1), t_valid], 1), dim=1).values  # (B, L+1)
        gap = t - run[:, :-1]
        gap_same = torch.empty_like(t)
        last_kind = state.last_kind_t.clone()
        for k in range(N_KINDS):
            tk = torch.where(valid & (kind == k), t, neg_inf)
            runk = torch.cummax(torch.cat([state.last_kind_t[:, k : k + 1], tk], 1), dim=1).values
            gap_same = torch.where(kind == k, t - runk[:, :-1], gap_same)
            last_kind[:, k] = runk[:, -1]
        return gap, gap_same, run[:, -1], last_kind

    def embed(self, kind: Tensor, src: Tensor, video: Tensor | None, audio: Tensor | None) -> Tensor:
        """Token embeddings (B, L, d) from the flat per-modality inputs.

        kind, src: (B, L); video: (F, 3, S, S) frames whose patch p of frame f is ``src = f·P + p``;
        audio: (A, D) audio tokens (``src`` = row); text: ``src`` = token id.

        Every position is looked up with fixed shapes (a text lookup of all positions, one gather from
        the stacked media embeddings, a select by kind) rather than boolean-mask indexing: no
        data-dependent shape and no host sync, so ``torch.compile`` traces it whole. A frontend runs
        when its features are present (F or A > 0: a shape, not a value).
        """
        dtype = self.kind_emb.weight.dtype
        has_v = video is not None and video.shape[0] > 0
        has_a = audio is not None and audio.shape[0] > 0
        if not torch.compiler.is_compiling():  # a check of values (host sync): eager only
            for k, has, name in ((VIDEO, has_v, "video"), (AUDIO, has_a, "audio")):
                if not has and bool((kind == k).any()):
                    raise ValueError(f"embed: the sequence has {name} tokens but no {name} features")
        is_t = kind == TEXT
        x = self.text_in(torch.where(is_t, src, 0)).to(dtype)  # media positions read row 0, replaced below
        media = []  # (F·P + A, d): patch embeddings, then audio-token embeddings
        if has_v:
            media.append(self.video_in(video).flatten(0, 1).to(dtype))
        if has_a:
            media.append(self.audio_in(audio).to(dtype))
        if media:
            n_patches = media[0].shape[0] if has_v else 0
            # media row of each media token; text positions read row 0 (discarded by the select)
            row = torch.where(kind == AUDIO, src + n_patches, torch.where(kind == VIDEO, src, 0))
            table = torch.cat(media) if len(media) > 1 else media[0]
            x = torch.where((~is_t).unsqueeze(-1), table[row], x)
        return x + self.kind_emb(kind)

    def forward(
        self,
        kind: Tensor,
        t: Tensor,
        src: Tensor,
        valid: Tensor | None = None,
        video: Tensor | None = None,
        audio: Tensor | None = None,
        state: ModelState | None = None,
    ) -> ModelOutput:
        """Run the model over (a window of) an interleaved sequence, continuing ``state``.

        kind, src: (B, L) int64; t: (B, L) float64 seconds (non-decreasing along valid tokens);
        valid: (B, L) bool (right padding); video (F, 3, S, S) / audio (A, D) flat features.
        """
        b, l = kind.shape
        if valid is None:
            valid = torch.ones(b, l, dtype=torch.bool, device=kind.device)
        if state is None:
            state = self.init_state(b, kind.device)
        t = t.to(torch.float64)
        gap, gap_same, last_t, last_kind_t = self._gaps(kind, t, valid, state)
        x = self.embed(kind, src, video, audio) + self.time_emb(t, gap, gap_same)
        # SSM decay step: real seconds since the previous token; the first token of a stream has no
        # predecessor (its state is empty, so any finite value is exact) -> 0.
        dt = torch.where(torch.isinf(gap), torch.zeros_like(gap), gap).to(x.dtype)
        positions = None
        if self.cfg.rope_positions == "time":
            positions = t * self.cfg.rope_time_scale
        hidden, bb = self.backbone(x, dt, state.backbone, valid, positions)
        return ModelOutput(hidden, ModelState(bb, last_t, last_kind_t))

    def forward_batch(self, batch, state: ModelState | None = None) -> ModelOutput:
        """``forward`` on a :class:`ssm_mm.data.dataset.Batch`."""
        return self(batch.kind, batch.t, batch.src, batch.valid, batch.video, batch.audio, state)

    def compiled_forward(self, **compile_options) -> CompiledForward:
        """A :class:`CompiledForward`: ``forward_batch`` under ``torch.compile`` (training steps)."""
        return CompiledForward(self, **compile_options)

    # --------------------------------------------------------------------------------- heads

    def tick_hidden(self, hidden: Tensor, summary_pos: Tensor) -> Tensor:
        """(B, K, d) hidden states at each tick's summary position (B, K)."""
        idx = summary_pos.clamp_min(0).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, idx)

    def readout(self, out: ModelOutput, batch) -> Readout:
        """What the objectives read from a forward pass over ``batch``: the hidden states and, once for
        all tick-level heads, the hidden state at each valid tick's summary position (T, d)."""
        ticks = self.tick_hidden(out.hidden, batch.summary_pos)[batch.tick_valid]
        return Readout(out.hidden, ticks)

    def supervised_counts(self, batch) -> dict[str, float]:
        """The number of supervised items of each objective's loss for a Batch (for "lm", the sum of
        the supervised positions' weights: the LM loss is their weighted mean)."""
        return {name: obj.count(batch) for name, obj in self.objectives.items()}

    def loss_sums(self, out: ModelOutput, batch) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Per-objective loss *sums* and numbers of supervised items for a Batch, in objective order
        (:meth:`ssm_mm.objectives.Objective.loss`). Sums (not means) so that data-parallel ranks can
        normalise by the global count; an objective with nothing to supervise gives an exact zero
        that still depends on its head (every parameter takes part in every step, as DDP requires)."""
        r = self.readout(out, batch)
        sums, counts = {}, {}
        for name, obj in self.objectives.items():
            sums[name], counts[name] = obj.loss(self.heads[name], r, batch)
        return sums, counts

    def losses(self, out: ModelOutput, batch) -> dict[str, Tensor]:
        """Per-head mean losses for a Batch (see :meth:`loss_sums`)."""
        sums, counts = self.loss_sums(out, batch)
        return {k: v / max(1, counts[k]) for k, v in sums.items()}

    # ------------------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(
        self, state: ModelState, t: float | Tensor, max_tokens: int = 16, role: str = "assistant"
    ) -> tuple[list[list[int]], ModelState, list[Tensor]]:
        """Greedy answer generation at time ``t``, carrying the state.

        Feeds the forced prefix ``[BOT, ROLE]`` then greedily appends tokens (all at time ``t``)
        until EOT or ``max_tokens`` content tokens; a turn cut by the cap is closed with EOT so the
        state always ends after a complete turn, as in training. Returns, per row, the generated
        content ids, the new state, and the LM logits of every step (for parity checks).
        """
        b = state.last_t.shape[0]
        dev = state.last_t.device
        tok = self.tokenizer
        t = torch.as_tensor(t, dtype=torch.float64, device=dev).expand(b).reshape(b, 1)
        prefix = torch.tensor([tok.bot_id, tok.role_id(role)], device=dev).expand(b, 2)
        kind = torch.full((b, 2), TEXT, device=dev)
        out = self(kind, t.expand(b, 2), prefix, state=state)
        state = out.state
        lm = self.heads["lm"]
        logits = lm(out.hidden[:, -1])  # (B, V)
        steps = [logits]
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        ids: list[list[int]] = [[] for _ in range(b)]
        kind1 = torch.full((b, 1), TEXT, device=dev)
        for _ in range(max_tokens):
            nxt = logits.argmax(-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, tok.pad_id), nxt)
            for i in range(b):
                if not done[i] and int(nxt[i]) != tok.eot_id:
                    ids[i].append(int(nxt[i]))
            feed = torch.where(done, torch.full_like(nxt, tok.pad_id), nxt)
            out = self(kind1, t, feed.unsqueeze(1), valid=~done.unsqueeze(1), state=state)
            state = out.state
            done = done | (nxt == tok.eot_id)
            if bool(done.all()):
                break
            logits = lm(out.hidden[:, -1])
            steps.append(logits)
        if not bool(done.all()):  # close turns cut by the length cap
            eot = torch.full((b, 1), tok.eot_id, device=dev)
            state = self(kind1, t, eot, valid=~done.unsqueeze(1), state=state).state
        return ids, state, steps

    # ----------------------------------------------------------------------------- streaming

    def stream(self, state: dict | None = None, modalities=None, **opts):
        """Open a :class:`ssm_mm.streaming.session.StreamingSession` on this model (SPEC §7).

        ``modalities``: the stream's media, ``("video", "audio")`` by default (a resumed session keeps
        its snapshot's); ``state``: a ``session.state_dict()`` snapshot to resume exactly; ``opts``:
        :class:`ssm_mm.streaming.session.SessionOptions` (``t0``, ``speak_threshold``,
        ``max_answer_tokens``, ``max_buffer_bytes``, ``max_pending``, ``auto_step``, ``record``).
        """
        from ssm_mm.streaming.session import StreamingSession  # lazy: streaming imports this module

        return StreamingSession(self, state=state, modalities=modalities, **opts)

    # --------------------------------------------------------------------------- save / load

    def config_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "model": asdict(self.cfg),
            "features": asdict(self.features),
            "labels": self.labels,
            "tokenizer": self.tokenizer.to_dict(),
            "objectives": {name: asdict(obj.cfg) for name, obj in self.objectives.items()},
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created).

        ``config.json`` also records the weights file's size and sha256 (key ``weights``), which
        :meth:`from_pretrained` verifies. Both files are written to a temporary name and renamed, the
        weights first, so an interrupted save never leaves a config that vouches for other bytes.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.cfg.tie_embeddings:
            tensors.pop("heads.lm.weight", None)  # shared with text_in.embed.weight
        tmp = d / "model.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"format_version": str(FORMAT_VERSION)})
        record = weights_record(tmp)
        tmp.replace(d / WEIGHTS_FILE)
        cfg_tmp = d / "config.json.tmp"
        cfg_tmp.write_text(json.dumps({**self.config_dict(), "weights": record}, indent=2) + "\n")
        cfg_tmp.replace(d / "config.json")
        return d

    @classmethod
    def from_config_dict(cls, cfg: dict) -> MultimodalSSM:
        """A fresh model from :meth:`config_dict` (format 1 is upgraded, :func:`upgrade_format_1`;
        every objective it names must be registered)."""
        version = cfg.get("format_version")
        if version == 1:
            cfg = upgrade_format_1(cfg)
        elif version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported model format_version {version!r} (this ssm_mm reads 1 and {FORMAT_VERSION})"
            )
        objectives = {name: config_from_dict(name, d) for name, d in cfg["objectives"].items()}
        return cls(
            _model_config_from_dict(cfg["model"]),
            FeaturizerConfig(**cfg["features"]),
            cfg["labels"],
            tokenizer_from_dict(cfg["tokenizer"]),
            objectives,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> MultimodalSSM:
        """Load a model without unpickling anything.

        ``path`` may be a folder written by :meth:`save_pretrained` (``config.json`` +
        ``model.safetensors``), a training checkpoint file (``step_*.pt``, read with
        ``weights_only=True``), or a run / checkpoint folder, from which the newest usable checkpoint
        is taken.

        A folder's weights are checked against the size and sha256 its ``config.json`` records
        (folders saved before checksums existed have none and load unchecked); a mismatch, or a
        weights file safetensors cannot read, raises :class:`WeightsError` (a ``ValueError``) naming
        the file.
        """
        p = Path(path)
        if p.is_dir() and (p / "config.json").exists():
            if not (p / WEIGHTS_FILE).is_file():
                raise FileNotFoundError(f"{p}: has config.json but no {WEIGHTS_FILE}")
            try:
                cfg = json.loads((p / "config.json").read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{p / 'config.json'}: not valid JSON ({e})") from None
            model = cls.from_config_dict(cfg)
            tensors = _load_weights(p / WEIGHTS_FILE, cfg.get("weights"), map_location)  # verified as stored
            if cfg.get("format_version") == 1:
                tensors = upgrade_weight_names(tensors)
            if model.cfg.tie_embeddings:
                tensors["heads.lm.weight"] = tensors["text_in.embed.weight"]
            where = p
        else:
            from ssm_mm.training.checkpoint import load_checkpoint, load_latest

            if p.is_file():
                ck = load_checkpoint(p)
            else:
                found = None
                for folder in (p, p / "checkpoints"):
                    if folder.is_dir() and (found := load_latest(folder)) is not None:
                        break
                if found is None:
                    raise FileNotFoundError(
                        f"{p}: expected a save_pretrained folder (config.json + model.safetensors), "
                        "a training checkpoint file, or a run folder with checkpoints"
                    )
                ck, p = found
            if "model_config" not in ck or "model" not in ck:
                raise ValueError(f"{p}: not an ssm_mm training checkpoint (no model / model_config)")
            model = cls.from_config_dict(ck["model_config"])
            tensors = {k: v.to(map_location) for k, v in ck["model"].items()}
            if ck["model_config"].get("format_version") == 1:
                tensors = upgrade_weight_names(tensors)
            where = p
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{where}: weights do not match the config (missing {missing}, unexpected {unexpected})"
            )
        return model.to(map_location).eval()

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts per part (shared weights counted once)."""
        parts = {
            "frontends": [self.video_in, self.audio_in, self.text_in, self.kind_emb, self.time_emb],
            "backbone": [self.backbone],
            "heads": [h for name, h in self.heads.items() if name != "lm" or not self.cfg.tie_embeddings],
        }
        out = {k: sum(p.numel() for m in ms for p in m.parameters()) for k, ms in parts.items()}
        out["total"] = sum(p.numel() for p in self.parameters())
        return out
