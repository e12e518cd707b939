"""The time-aware Mamba-2 mixer (SPEC §6).

Per head, with input ``u_t`` (the block input) and ``x_t, B_t, C_t`` (after the short causal conv)::

    λ_t = (softplus(w_λ·u_t + b_λ) + ρ/|A|) · Δt_t   decay step, Δt_t = real seconds since the previous
                                                 token, ρ ≥ 0 the floor rate (``temporal.rate_floor``)
    γ_t = softplus(w_γ·u_t + b_γ)               input gain, independent of Δt
    h_t = exp(A · λ_t) · h_{t-1} + γ_t · B_t x_tᵀ      A < 0 per head
    y_t = C_t h_t + D x_t

With ``gain = "relu"`` the input gain is ``γ_t = exp(s_h) · relu(w_γ·u_t + b_γ)`` (s_h per head, b_γ
starting at 1 so that the gains start in the softplus range): a head can leave a token out of its
state exactly (γ_t = 0) instead of writing a small positive amount of every token. A head that holds
something for minutes otherwise sums thousands of small writes of tokens unrelated to it (the
evidence: docs/experiments.md, "Sparse writes").

With ``rotate_pairs = R > 0`` the first R pairs of state dimensions (n, n + R) also turn by a
data-dependent angle θ_t = w_θ·u_t / d_model per token (per group and pair; w_θ starts at zero; the
1/d_model keeps the first optimizer steps from turning the state by radians per token), so the state
is complex-valued on those pairs (the complex state of Mamba-3, 2025)::

    h_t = exp(A · λ_t) · R(θ_t) h_{t-1} + γ_t · B_t x_tᵀ

The rotation is carried by the inputs, not the scan: with Θ_t = Σ_{s≤t} θ_s and g_t = R(−Θ_t) h_t,
``g_t = exp(A·λ_t) g_{t-1} + γ_t (R(−Θ_t) B_t) x_tᵀ`` and ``y_t = (R(−Θ_t) C_t) g_t``, so every scan path
(chunked, token step, mamba_ssm's kernels) runs unchanged on rotated B and C, and the state carries
Θ mod 2π beside g. A sum of angles is an exact, unnormalised integrator (e.g. of how often something
happened) whose read-out, a phase, does not change when later norms rescale the features.

With ρ > 0 every head forgets at least ``exp(−ρ·Δt)`` over ``Δt`` seconds, whatever its input: a
memory horizon of ~1/ρ seconds past which the state's distribution no longer depends on the stream's
age. Tokens sharing a timestamp (Δt = 0) are still written into the state (γ_t > 0) and the state forgets
by seconds, not by token count. With ``time_aware_dt=False`` this is plain Mamba-2 (Dao & Gu, 2024):
a single ``dt_t = softplus(w·u_t + b)`` is both the decay step and the input gain, λ_t = γ_t = dt_t.

The scan itself is the pure function :func:`ssm_mm.ops.ssd.ssd_scan`, which takes the log-decay
``A·λ`` and the scaled input ``γ·x`` separately (the interface of mamba_ssm's ``ssd_minimal_discrete``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ssm_mm.config import ModelConfig
from ssm_mm.layers.norm import GatedRMSNorm
from ssm_mm.ops.conv import causal_conv1d, causal_conv1d_update
from ssm_mm.ops.ssd import ssd_scan, ssd_step
from ssm_mm.state import SSMState

# Floor on the per-token log-decay A·λ. exp(x) is exactly 0 in float32 for x <= -104, so the floor
# changes no float32 decay, but it keeps a long time jump (an hour, an epoch-clock reset: A·λ ~ -1e9)
# from swamping the in-chunk cumulative sums the chunked scans difference (cs_i − cs_j): without it
# every token after the jump in the same chunk gets a wrong decay.
LOG_DECAY_FLOOR = -104.0


def _inv_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer with the time-aware step. ``forward(u, dt, state, valid) -> (y, state)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.d_model = cfg.d_model
        self.d_inner = cfg.expand * cfg.d_model
        self.headdim = cfg.headdim
        self.nheads = self.d_inner // cfg.headdim
        self.ngroups = cfg.ngroups
        self.d_state = cfg.d_state
        self.d_conv = cfg.d_conv
        self.chunk_size = cfg.chunk_size
        self.kernels = cfg.kernels
        self.time_aware = cfg.temporal.time_aware_dt
        self.conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        n_gate = 2 * self.nheads if self.time_aware else self.nheads

        # in_proj -> [z (d_inner) | xBC (conv_dim) | gate pre-activations (n_gate)]
        self.in_proj = nn.Linear(cfg.d_model, self.d_inner + self.conv_dim + n_gate, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, self.d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(self.conv_dim))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.gate_bias = nn.Parameter(torch.empty(n_gate))
        self.D = nn.Parameter(torch.ones(self.nheads))
        if cfg.gain not in ("softplus", "relu"):
            raise ValueError(f"Mamba2Mixer: model.gain={cfg.gain!r} must be 'softplus' or 'relu'")
        self.sparse_gain = cfg.gain == "relu"
        if self.sparse_gain and not self.time_aware:
            raise ValueError(
                "Mamba2Mixer: model.gain='relu' needs time_aware_dt=True (in plain Mamba-2 one dt_t is "
                "both the decay step and the gain)"
            )
        # γ = exp(s_h) · relu(w·u + b): s_h per head carries the gain's scale, b starts at 1
        self.gain_log_scale = nn.Parameter(torch.empty(self.nheads)) if self.sparse_gain else None
        self.rotate_pairs = cfg.rotate_pairs
        if not 0 <= self.rotate_pairs <= self.d_state // 2:
            raise ValueError(
                f"Mamba2Mixer: model.rotate_pairs={self.rotate_pairs} must be in [0, d_state / 2 = "
                f"{self.d_state // 2}] (each rotated pair takes two of the d_state dimensions)"
            )
        # angles θ_t (ngroups x rotate_pairs per token); zero at init: the mixer starts as plain Mamba-2
        n_angles = self.ngroups * self.rotate_pairs
        self.angle_proj = nn.Linear(cfg.d_model, n_angles, bias=False) if n_angles else None
        self.norm = GatedRMSNorm(self.d_inner, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)
        self._rate_range = (cfg.temporal.rate_min, cfg.temporal.rate_max)
        self.rate_floor = float(cfg.temporal.rate_floor)
        if self.rate_floor and not self.time_aware:
            raise ValueError(
                f"Mamba2Mixer: temporal.rate_floor={self.rate_floor} is a decay per second and needs "
                "time_aware_dt=True (plain Mamba-2 decays per token)"
            )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))
        self.conv_bias.zero_()
        h = self.nheads
        # A in [-16, -1] as in Mamba-2.
        self.A_log.copy_(torch.log(torch.empty(h).uniform_(1.0, 16.0)))
        A = torch.exp(self.A_log)

        def log_uniform(lo: float, hi: float) -> Tensor:
            return torch.exp(torch.empty(h).uniform_(math.log(lo), math.log(hi)))

        if self.time_aware:
            # decay per second |A|·softplus(b_λ) log-uniform in [rate_min, rate_max]: time constants
            # from 1/rate_max seconds (e.g. 0.1 s) to 1/rate_min (minutes) across heads.
            rate = log_uniform(*self._rate_range) / A
            gain = log_uniform(1e-3, 1e-1)  # Mamba-2's dt init range for the input gain
            if self.sparse_gain:
                self.gain_log_scale.copy_(torch.log(gain))
                self.gate_bias.copy_(torch.cat([_inv_softplus(rate), torch.ones(h)]))
            else:
                self.gate_bias.copy_(torch.cat([_inv_softplus(rate), _inv_softplus(gain)]))
        else:
            self.gate_bias.copy_(_inv_softplus(log_uniform(1e-3, 1e-1)))
        self.D.fill_(1.0)
        if self.angle_proj is not None:
            self.angle_proj.weight.zero_()

    # ------------------------------------------------------------------------------------------

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> SSMState:
        return SSMState(
            conv=torch.zeros(batch, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(
                batch, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32
            ),
            phase=torch.zeros(batch, self.ngroups, self.rotate_pairs, device=device, dtype=torch.float32),
        )

    def _angles(self, u: Tensor, state: SSMState, valid: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """Θ_t for every token, (B, L, G, R) float32 in [−π, π), and the carried Θ after the last one
        (B, G, R); None without rotation. Padding turns nothing. Summed in float64 and wrapped: a sum
        over a long window keeps the precision of its steps."""
        if self.angle_proj is None:
            return None
        # in float64 from the start: autocast leaves float64 alone, so bf16 never rounds an angle
        theta = F.linear(u.double(), self.angle_proj.weight.double()) / self.d_model
        theta = rearrange(theta, "b l (g r) -> b l g r", r=self.rotate_pairs)
        if valid is not None:
            theta = theta * valid[..., None, None]
        total = state.phase.double().unsqueeze(1) + theta.cumsum(1)
        wrapped = torch.remainder(total + math.pi, 2 * math.pi) - math.pi
        return wrapped.float(), wrapped[:, -1].float()

    def _turn(self, u: Tensor, B: Tensor, C: Tensor, state: SSMState, valid: Tensor | None):
        """B and C, (B, L, G, N) or one token's (B, G, N), turned by −Θ_t, and the carried Θ after them."""
        angles = self._angles(u, state, valid)
        if angles is None:
            return B, C, state.phase
        theta, phase = angles
        if B.dim() == 3:  # one token
            theta = theta[:, 0]
        cos, sin = theta.cos(), theta.sin()
        return self._rotate(B, cos, sin), self._rotate(C, cos, sin), phase

    def _rotate(self, v: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """R(−Θ) applied to the pairs (n, n + R) of v (..., G, N); cos, sin: (..., G, R)."""
        r = self.rotate_pairs
        a, b, rest = v[..., :r], v[..., r : 2 * r], v[..., 2 * r :]
        cos, sin = cos.to(v.dtype), sin.to(v.dtype)
        return torch.cat([a * cos + b * sin, b * cos - a * sin, rest], -1)

    def _gates(self, g_bth: Tensor, dt_bt: Tensor | None) -> tuple[Tensor, Tensor]:
        """Return (log_decay = A·λ, gain = γ), each (B, L, H) float32, from gate pre-activations."""
        g_bth = g_bth.float() + self.gate_bias.float()
        A = -torch.exp(self.A_log.float())  # (H,)
        if self.time_aware:
            if dt_bt is None:
                raise ValueError(
                    "Mamba2Mixer: time_aware_dt=True needs dt (seconds since the previous token)"
                )
            if self.sparse_gain:
                g_rate, g_gain = g_bth.split(self.nheads, dim=-1)
                rate = F.softplus(g_rate)
                gain = torch.exp(self.gain_log_scale.float()) * F.relu(g_gain)
            else:  # one softplus over both halves, as before the option existed
                rate, gain = F.softplus(g_bth).split(self.nheads, dim=-1)
            dt_blh = dt_bt.float().unsqueeze(-1)
            log_decay = A * (rate * dt_blh)  # (B, L, H)
            if self.rate_floor:
                log_decay = log_decay - self.rate_floor * dt_blh
        else:
            gain = F.softplus(g_bth)
            log_decay = A * gain
        return log_decay.clamp(min=LOG_DECAY_FLOOR), gain

    def forward(
        self, u: Tensor, dt: Tensor | None = None, state: SSMState | None = None, valid: Tensor | None = None
    ) -> tuple[Tensor, SSMState]:
        """u: (B, L, d_model); dt: (B, L) seconds since the previous token (needed when time-aware);
        valid: (B, L) bool for right-padded rows (padding never touches the state).
        Returns y (B, L, d_model) and the new state."""
        b, l, _ = u.shape
        if state is None:
            state = self.init_state(b, u.device, u.dtype)
        proj = self.in_proj(u)
        z, xbc, g = proj.split(
            [self.d_inner, self.conv_dim, proj.shape[-1] - self.d_inner - self.conv_dim], -1
        )
        log_decay, gain = self._gates(g, dt)  # (B, L, H) each

        if l == 1:
            return self._step(u, z, xbc, log_decay, gain, state, valid)

        lengths = None if valid is None else valid.sum(1)
        xbc_bdl, conv_state = causal_conv1d(
            rearrange(xbc, "b l d -> b d l"),  # channels-first view, as the conv kernels take it
            self.conv_weight,
            self.conv_bias,
            state.conv.to(xbc.dtype),
            "silu",
            lengths,
        )
        xbc = rearrange(xbc_bdl, "b d l -> b l d")  # (B, L, conv_dim)
        x, B, C = xbc.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        x = rearrange(x, "b l (h p) -> b l h p", p=self.headdim)
        B = rearrange(B, "b l (g n) -> b l g n", n=self.d_state)
        C = rearrange(C, "b l (g n) -> b l g n", n=self.d_state)
        B, C, phase = self._turn(u, B, C, state, valid)
        if valid is not None:  # padding: no decay, no input -> state unchanged
            log_decay = log_decay * valid.unsqueeze(-1)
            gain = gain * valid.unsqueeze(-1)
        x_scaled = x * gain.unsqueeze(-1).to(x.dtype)
        y, ssm_state = ssd_scan(
            x_scaled,
            log_decay,
            B,
            C,
            chunk_size=self.chunk_size,
            initial_state=state.ssm,
            kernels=self.kernels,
        )
        y = y + x * rearrange(self.D.to(x.dtype), "h -> h 1")  # skip connection D per head
        y = self.norm(rearrange(y, "b l h p -> b l (h p)"), z)
        return self.out_proj(y), SSMState(conv=conv_state, ssm=ssm_state, phase=phase)

    def _step(self, u, z, xbc, log_decay, gain, state: SSMState, valid) -> tuple[Tensor, SSMState]:
        """One token per row (decode / token-by-token streaming). Same maths, recurrent form."""
        xbc, conv_state = causal_conv1d_update(
            xbc[:, 0], self.conv_weight, self.conv_bias, state.conv.to(xbc.dtype), "silu"
        )  # (B, conv_dim)
        x, B, C = xbc.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        x = rearrange(x, "b (h p) -> b h p", p=self.headdim)
        x_scaled = x * gain[:, 0].unsqueeze(-1).to(x.dtype)
        B = rearrange(B, "b (g n) -> b g n", n=self.d_state)
        C = rearrange(C, "b (g n) -> b g n", n=self.d_state)
        B, C, phase = self._turn(u, B, C, state, valid)
        y, ssm_state = ssd_step(x_scaled, log_decay[:, 0], B, C, state.ssm)
        y = y + x * rearrange(self.D.to(x.dtype), "h -> h 1")
        y = self.norm(rearrange(y, "b h p -> b 1 (h p)"), z)
        new = SSMState(conv=conv_state, ssm=ssm_state, phase=phase)
        if valid is not None:  # a padded step keeps the old state
            keep = ~valid[:, 0]
            new = SSMState(
                conv=torch.where(keep.view(-1, 1, 1), state.conv, new.conv),
                ssm=torch.where(keep.view(-1, 1, 1, 1), state.ssm, new.ssm),
                phase=torch.where(keep.view(-1, 1, 1), state.phase, new.phase),
            )
        return self.out_proj(y), new

    def state_nbytes(self, batch: int = 1) -> int:
        """Bytes of this layer's recurrent state (zoology-style state-size report)."""
        return self.init_state(batch).nbytes()
