"""Typed recurrent states: of every layer, of the backbone and of the whole model.

The bottom of the package: ``layers/``, ``models/``, ``training/`` and ``streaming/`` import these
types from here, and this module imports only torch (so ``import ssm_mm.layers`` never loads the
streaming package).

State in, state out (shared/STYLE.md): layers take ``state=None`` and return the new state; nothing
is hidden on a module. Every state is a dataclass of tensors whose batch axis is 0, reports its size
in bytes, turns into a plain dict of tensors (for snapshots: safetensors / torch.save(weights_only))
and can be split into per-row states and stacked back (for batched streaming sessions and training
slots).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


class _TensorState:
    """Shared plumbing: bytes, plain-dict round trip, row selection, stacking, detaching."""

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.tensors().items()}

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]):
        names = {f.name for f in dataclasses.fields(cls)}
        if set(d) != names:
            raise ValueError(f"{cls.__name__}.from_dict: expected keys {sorted(names)}, got {sorted(d)}")
        return cls(**{k: d[k].clone() for k in names})

    def map(self, fn):
        return type(self)(**{k: fn(v) for k, v in self.tensors().items()})

    def detach(self):
        """Cut the autograd graph (truncated BPTT between training windows)."""
        return self.map(lambda t: t.detach())

    def to(self, device=None, dtype=None):
        return self.map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def select(self, rows: Tensor | list[int] | slice):
        return self.map(lambda t: t[rows])

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors().values())).shape[0]


@dataclass
class SSMState(_TensorState):
    """State of a Mamba-2 mixer.

    conv:  (B, conv_dim, d_conv - 1) the last inputs of the short causal conv.
    ssm:   (B, H, P, N) float32 recurrent state (in the rotating frame when rotate_pairs > 0).
    phase: (B, G, R) float32 the summed rotation angles Θ mod 2π of the R rotated pairs (R = 0: none).
    """

    conv: Tensor
    ssm: Tensor
    phase: Tensor

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> SSMState:
        if "phase" not in d and {"conv", "ssm"} <= set(d):  # written before rotations existed: none
            d = {**d, "phase": d["ssm"].new_zeros(d["ssm"].shape[0], 1, 0)}
        return super().from_dict(d)

    @classmethod
    def stack(cls, states: list[SSMState]) -> SSMState:
        return cls(**{k: torch.cat([getattr(s, k) for s in states]) for k in ("conv", "ssm", "phase")})


@dataclass
class AttentionState(_TensorState):
    """Key/value cache of an attention layer (keys already rotated).

    k, v:  (B, S, Hkv, D) the cached keys/values; S = window - 1 for a sliding window (fixed size,
           so memory is bounded) or the number of tokens so far for full attention.
    valid: (B, S) bool, which slots hold a real token (slots are left-padded).
    """

    k: Tensor
    v: Tensor
    valid: Tensor

    @classmethod
    def stack(cls, states: list[AttentionState]) -> AttentionState:
        # Full-attention caches of different sessions differ in length: left-pad to the longest.
        s_max = max(s.k.shape[1] for s in states)

        def pad(t: Tensor, value) -> Tensor:
            n = s_max - t.shape[1]
            if n == 0:
                return t
            shape = (t.shape[0], n, *t.shape[2:])
            return torch.cat([torch.full(shape, value, dtype=t.dtype, device=t.device), t], dim=1)

        return cls(
            k=torch.cat([pad(s.k, 0) for s in states]),
            v=torch.cat([pad(s.v, 0) for s in states]),
            valid=torch.cat([pad(s.valid, False) for s in states]),
        )


LayerState = SSMState | AttentionState


@dataclass
class BackboneState:
    """State of the whole hybrid stack.

    layers:   one state per layer, in pattern order.
    n_tokens: (B,) int64 valid tokens seen so far (the running index for rotary positions).
    """

    layers: list[LayerState]
    n_tokens: Tensor

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.layers) + self.n_tokens.numel() * self.n_tokens.element_size()

    def detach(self) -> BackboneState:
        return BackboneState([s.detach() for s in self.layers], self.n_tokens.detach())

    def select(self, rows) -> BackboneState:
        return BackboneState([s.select(rows) for s in self.layers], self.n_tokens[rows])

    @classmethod
    def stack(cls, states: list[BackboneState]) -> BackboneState:
        layers = [type(group[0]).stack(list(group)) for group in zip(*[s.layers for s in states])]
        return cls(layers, torch.cat([s.n_tokens for s in states]))

    def to_dict(self) -> dict[str, Tensor]:
        out = {"n_tokens": self.n_tokens.detach().clone()}
        for i, s in enumerate(self.layers):
            kind = "ssm" if isinstance(s, SSMState) else "attn"
            for k, v in s.to_dict().items():
                out[f"layers.{i}.{kind}.{k}"] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> BackboneState:
        groups: dict[int, tuple[str, dict[str, Tensor]]] = {}
        for key, v in d.items():
            if key == "n_tokens":
                continue
            _, i, kind, name = key.split(".")
            groups.setdefault(int(i), (kind, {}))[1][name] = v
        layers: list[LayerState] = []
        for i in range(len(groups)):
            kind, fields = groups[i]
            layers.append((SSMState if kind == "ssm" else AttentionState).from_dict(fields))
        return cls(layers, d["n_tokens"].clone())


@dataclass
class ModelState:
    """Recurrent state of the whole model (:class:`ssm_mm.models.multimodal.MultimodalSSM`; batch axis 0).

    backbone:  the hybrid stack's state.
    last_t:    (B,) float64 time of the last token seen (-inf before the first one).
    last_kind_t: (B, 3) float64 time of the last token of each modality (-inf = none yet).
    """

    backbone: BackboneState
    last_t: Tensor
    last_kind_t: Tensor

    def nbytes(self) -> int:
        return self.backbone.nbytes() + self.last_t.numel() * 8 + self.last_kind_t.numel() * 8

    def detach(self) -> ModelState:
        return ModelState(self.backbone.detach(), self.last_t.detach(), self.last_kind_t.detach())

    def select(self, rows) -> ModelState:
        return ModelState(self.backbone.select(rows), self.last_t[rows], self.last_kind_t[rows])

    @classmethod
    def stack(cls, states: list[ModelState]) -> ModelState:
        return cls(
            BackboneState.stack([s.backbone for s in states]),
            torch.cat([s.last_t for s in states]),
            torch.cat([s.last_kind_t for s in states]),
        )

    def to_dict(self) -> dict[str, Tensor]:
        d = {f"backbone.{k}": v for k, v in self.backbone.to_dict().items()}
        d["last_t"] = self.last_t.detach().clone()
        d["last_kind_t"] = self.last_kind_t.detach().clone()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> ModelState:
        bb = {k[len("backbone.") :]: v for k, v in d.items() if k.startswith("backbone.")}
        return cls(BackboneState.from_dict(bb), d["last_t"].clone(), d["last_kind_t"].clone())
