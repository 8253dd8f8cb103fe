"""Mamba (selective state space) layer with the parameter layout of `mamba_ssm.Mamba`.

Three interchangeable selective scans share one signature:

- `selective_scan` - pure PyTorch, in time chunks with a hand-written backward: each step is one fused in-place update
  of the whole `(batch, d_inner, d_state)` state, only the state entering each chunk is saved, and the backward pass
  recomputes a chunk at a time into reused buffers and runs the adjoint recurrence. Decays are exponentials of
  non-positive numbers, so nothing overflows.
- `selective_scan_reference` - the naive step-by-step recurrence, kept as the test oracle.
- `mamba_ssm`'s CUDA kernels, used by `Mamba` when they are installed and the input lives on CUDA.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch._higher_order_ops.scan import scan as torch_scan
from transformers import initialization as init

logger = logging.getLogger(__name__)

_KERNELS: dict | None = None


def load_mamba_kernels() -> dict:
    """Import the optional `mamba_ssm`/`causal_conv1d` CUDA ops once; an empty dict when they cannot load."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = {}
        try:
            from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn

            _KERNELS = {"mamba_inner_fn": mamba_inner_fn, "selective_scan_fn": selective_scan_fn}
        # OSError: undefined symbols when the extension was built against another torch.
        except (ImportError, OSError) as error:
            logger.info("mamba_ssm CUDA kernels unavailable (%s); using the pure-PyTorch scan.", error)
    return _KERNELS


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u.float(), delta, A.float(), B.float(), C.float()


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Naive selective scan, one Python step per time step (the oracle for the fast paths).

    Args:
        u: `(batch, d_inner, length)` input.
        delta: `(batch, d_inner, length)` step sizes (before `delta_bias` and softplus).
        A: `(d_inner, d_state)` state matrix (negative real).
        B, C: `(batch, d_state, length)` input and output projections.
        D: `(d_inner,)` skip connection; z: `(batch, d_inner, length)` gate (multiplied by `silu(z)`).
        delta_bias: `(d_inner,)`; delta_softplus: apply softplus to `delta + delta_bias`.
        initial_state: `(batch, d_inner, d_state)` state before the first step (zeros when omitted).
        return_last_state: also return the `(batch, d_inner, d_state)` float32 state after the last step.

    Returns:
        `(batch, d_inner, length)` output in the dtype of `u`, computed in float32 (and the last state).
    """
    dtype = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)
        state = decay * state + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        outputs.append((state * C[:, None, :, t]).sum(-1))
    y = _finish(torch.stack(outputs, dim=2), u, D, z, dtype)
    return (y, state) if return_last_state else y


# exp(x) for x < -87 is subnormal in float32, and subnormal arithmetic is ~8x slower on x86. Clamping the exponent
# here changes a decay by less than 2e-35, far below float32 resolution of the state it multiplies.
_MIN_LOG_DECAY = -80.0


def _chunks(length: int, chunk_size: int) -> list[slice]:
    """Consecutive time slices of at most `chunk_size` steps covering `length`."""
    return [slice(start, min(start + chunk_size, length)) for start in range(0, length, chunk_size)]


def _chunk_buffers(u, A, chunk_size, count):
    """`count` reusable `(chunk, batch, d_inner, d_state)` work buffers for time-major u `(length, batch, d_inner)`."""
    shape = (min(chunk_size, u.shape[0]), *u.shape[1:], A.shape[1])
    return [u.new_empty(shape) for _ in range(count)]


def _chunk_states(u, delta, A, B, chunk, state, decay, states):
    """Decays and states of one chunk of time-major u, delta `(length, batch, d_inner)` and B `(length, batch,
    d_state)`, written into the front of the `decay`/`states` buffers and returned as `(chunk, batch, d_inner,
    d_state)` views; `state` is the state entering the chunk.
    """
    size = chunk.stop - chunk.start
    u, delta, B, decay, states = u[chunk], delta[chunk], B[chunk], decay[:size], states[:size]
    torch.mul(delta.unsqueeze(-1), A, out=decay).clamp_(min=_MIN_LOG_DECAY).exp_()
    torch.mul((delta * u).unsqueeze(-1), B.unsqueeze(2), out=states)
    # One fused in-place update per step over batch * d_inner * d_state elements: on CPU this is already parallel
    # and touches each element once, where chunk-parallel (log-depth) formulations read it three to four times.
    for t in range(states.shape[0]):
        states[t].addcmul_(decay[t], state)
        state = states[t]
    return decay, states


def _transposed_scan_(grads, decay, inflow):
    """The adjoint recurrence in place: grads[t] += decay[t + 1] * grads[t + 1], run backwards from the last step,
    which receives `inflow` (decay * gradient flowing back from the next chunk)."""
    grads[-1].add_(inflow)
    for t in range(grads.shape[0] - 2, -1, -1):
        grads[t].addcmul_(decay[t + 1], grads[t + 1])


def _time_major(*tensors):
    """`(batch, channels, length)` tensors as contiguous `(length, batch, channels)`, so that a chunk and a step are
    contiguous views."""
    return [t.permute(2, 0, 1).contiguous() for t in tensors]


def _scan_chunks(u, delta, A, B, C, chunk_size, initial):
    """The forward scan of time-major u, delta `(length, batch, d_inner)` and B, C `(length, batch, d_state)` from
    the state `initial` (zeros when `None`): the output `(length, batch, d_inner)`, the state entering each chunk
    and the last state, both `(..., batch, d_inner, d_state)`."""
    (length, batch, d_inner), d_state = u.shape, A.shape[1]
    chunks = _chunks(length, chunk_size)
    decay_buffer, states_buffer = _chunk_buffers(u, A, chunk_size, 2)
    entering = u.new_zeros(len(chunks), batch, d_inner, d_state)
    if initial is not None:
        entering[0] = initial
    y = u.new_empty(length, batch, d_inner)
    for index, chunk in enumerate(chunks):
        _, states = _chunk_states(u, delta, A, B, chunk, entering[index], decay_buffer, states_buffer)
        rows = states.shape[0] * batch
        torch.bmm(
            states.view(rows, d_inner, d_state), C[chunk].view(rows, d_state, 1), out=y[chunk].view(rows, d_inner, 1)
        )
        if index + 1 < len(chunks):
            entering[index + 1] = states[-1]
    return y, entering, states[-1].clone()


class _ChunkedScan(torch.autograd.Function):
    """Selective scan in time chunks with a hand-written backward.

    Only the state entering each chunk is saved; the backward pass recomputes one chunk's decays and states at a time
    into reused buffers, so memory is O(batch * d_inner * d_state * (chunk_size + length / chunk_size)) and large
    buffers are allocated once per call instead of once per step.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk_size):
        u, delta, B, C = _time_major(u, delta, B, C)
        y, entering, _ = _scan_chunks(u, delta, A, B, C, chunk_size, None)
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(u, delta, A, B, C, entering)
        return y.permute(1, 2, 0)

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, entering = ctx.saved_tensors
        (length, batch, d_inner), d_state = u.shape, A.shape[1]
        grad_y = grad_y.permute(2, 0, 1).contiguous()
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        grad_A = torch.zeros_like(A)
        decay_buffer, states_buffer, grads_buffer = _chunk_buffers(u, A, ctx.chunk_size, 3)
        inflow = u.new_zeros(batch, d_inner, d_state)
        chunks = _chunks(length, ctx.chunk_size)
        for index in reversed(range(len(chunks))):
            chunk = chunks[index]
            decay, states = _chunk_states(u, delta, A, B, chunk, entering[index], decay_buffer, states_buffer)
            size = states.shape[0]
            rows = size * batch
            torch.bmm(
                grad_y[chunk].view(rows, 1, d_inner),
                states.view(rows, d_inner, d_state),
                out=grad_C[chunk].view(rows, 1, d_state),
            )
            # Gradient of the loss with respect to each state, flowing backwards through the recurrence.
            grads = torch.mul(grad_y[chunk].unsqueeze(-1), C[chunk].unsqueeze(2), out=grads_buffer[:size])
            _transposed_scan_(grads, decay, inflow)
            inflow = decay[0] * grads[0]
            # states = decay * previous + (delta * u) B
            grad_delta_u = torch.bmm(grads.view(rows, d_inner, d_state), B[chunk].view(rows, d_state, 1)).view(
                size, batch, d_inner
            )
            torch.bmm(
                grads.view(rows, d_inner, d_state).transpose(1, 2),
                (delta[chunk] * u[chunk]).view(rows, d_inner, 1),
                out=grad_B[chunk].view(rows, d_state, 1),
            )
            # d loss / d log-decay = grads * decay * previous state, built in the decay buffer.
            grad_log_decay = decay.mul_(grads)
            grad_log_decay[1:].mul_(states[:-1])
            grad_log_decay[0].mul_(entering[index])
            torch.sum(torch.mul(grad_log_decay, A, out=states), -1, out=grad_delta[chunk])
            grad_delta[chunk].addcmul_(grad_delta_u, u[chunk])
            torch.mul(grad_delta_u, delta[chunk], out=grad_u[chunk])
            grad_A += grad_log_decay.mul_(delta[chunk].unsqueeze(-1)).sum((0, 1))
        grad_u, grad_delta, grad_B, grad_C = (g.permute(1, 2, 0) for g in (grad_u, grad_delta, grad_B, grad_C))
        return grad_u, grad_delta, grad_A, grad_B, grad_C, None


def _scan_recurrent(u, delta, A, B, C, initial):
    """The forward scan as one `torch.scan` over time, which `torch.onnx.export` turns into an ONNX `Scan` over any
    number of steps (a Python loop would be unrolled at the traced length). Same time-major arguments as
    [`_scan_chunks`] (`initial` required); returns the output `(length, batch, d_inner)` and the last state."""

    def step(carry, inputs):
        state, A = carry
        delta, u, B, C = inputs
        decay = torch.exp((delta.unsqueeze(-1) * A).clamp(min=_MIN_LOG_DECAY))
        state = decay * state + (delta * u).unsqueeze(-1) * B.unsqueeze(1)
        # A travels in the carry (the scan body may not read outer tensors) and must not alias its input.
        return (state, A.clone()), (state * C.unsqueeze(1)).sum(-1)

    (last, _), y = torch_scan(step, (initial, A), (delta, u, B, C))
    return y, last


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int = 16,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked pure-PyTorch selective scan; same arguments and result as [`selective_scan_reference`].

    The state is kept in float32 whatever the input dtype (bfloat16 inputs are upcast, the output is cast back).
    A scan that carries a state (`initial_state`, `return_last_state`) is for inference: it takes no gradients.
    """
    dtype = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    if torch.compiler.is_exporting():
        initial = u.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if initial_state is None else initial_state.float()
        y, last = _scan_recurrent(*_time_major(u, delta), A, *_time_major(B, C), initial)
        y = _finish(y.permute(1, 2, 0), u, D, z, dtype)
        return (y, last) if return_last_state else y
    if initial_state is None and not return_last_state:
        return _finish(_ChunkedScan.apply(u, delta, A, B, C, chunk_size), u, D, z, dtype)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C)):
        raise RuntimeError("selective_scan with a carried state is for inference; run it under torch.no_grad().")
    initial = None if initial_state is None else initial_state.float()
    y, _, last = _scan_chunks(*_time_major(u, delta), A, *_time_major(B, C), chunk_size, initial)
    y = _finish(y.permute(1, 2, 0), u, D, z, dtype)
    return (y, last) if return_last_state else y


class Mamba(nn.Module):
    """Mamba mixer with exactly the parameters (names, shapes) of `mamba_ssm.Mamba(d_model, d_state, d_conv, expand)`.

    Args:
        d_model: channels in and out; d_state: SSM state size; d_conv: causal depthwise conv width;
        expand: `d_inner = expand * d_model`; dt_rank: rank of the step-size projection.
        use_kernels: use the `mamba_ssm` CUDA kernels for CUDA inputs when they are installed.
        chunk_size: time steps per chunk of the pure-PyTorch scan (memory vs. per-chunk overhead).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        use_kernels: bool = True,
        chunk_size: int = 16,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.use_kernels = use_kernels
        self.chunk_size = chunk_size
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        # mamba_ssm excludes these from weight decay.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """mamba_ssm's initialisation of the SSM parameters (the linear and conv layers keep PyTorch's defaults)."""
        std = self.dt_rank**-0.5
        init.uniform_(self.dt_proj.weight, -std, std)
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(self.d_inner) * (log_max - log_min) + log_min).clamp(min=self.dt_init_floor)
        # dt_proj.bias holds softplus^-1(dt), so softplus(bias) starts log-uniform in [dt_min, dt_max].
        init.copy_(self.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))
        init.copy_(
            self.A_log, torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1)
        )
        init.ones_(self.D)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, length, d_model)` -> `(batch, length, d_model)`, causal along `length`."""
        length = hidden_states.shape[1]
        kernels = load_mamba_kernels() if self.use_kernels and hidden_states.is_cuda else {}
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (batch, 2 * d_inner, length)
        if kernels:
            out = kernels["mamba_inner_fn"](
                xz,
                self.conv1d.weight,
                self.conv1d.bias,
                self.x_proj.weight,
                self.dt_proj.weight,
                self.out_proj.weight,
                self.out_proj.bias,
                -torch.exp(self.A_log.float()),
                None,
                None,
                self.D.float(),
                delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True,
            )
            return out
        x, z = xz.chunk(2, dim=1)
        return self._ssm(F.silu(self.conv1d(x)[..., :length]), z)

    def _ssm(self, x: torch.Tensor, z: torch.Tensor, **state) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The selective scan and output projection of the convolved `x` and the gate `z`, `(batch, d_inner,
        length)` each -> `(batch, length, d_model)`; `state`: [`selective_scan`]'s `initial_state` and
        `return_last_state`, which then also returns the last state."""
        dt, B, C = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias goes in as delta_bias, as in mamba_ssm
        A = -torch.exp(self.A_log.float())
        args = (x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D, z)
        out = selective_scan(
            *args, delta_bias=self.dt_proj.bias, delta_softplus=True, chunk_size=self.chunk_size, **state
        )
        if state.get("return_last_state"):
            return self.out_proj(out[0].transpose(1, 2)), out[1]
        return self.out_proj(out.transpose(1, 2))

    def allocate_state(self, batch: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh (zero) carried state for `batch` sequences: the convolution state `(batch, d_inner, d_conv - 1)`
        (the last inputs of the causal convolution) and the SSM state `(batch, d_inner, d_state)`, float32."""
        return (
            torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device),
            torch.zeros(batch, self.d_inner, self.d_state, device=device),
        )

    def forward_with_state(
        self, hidden_states: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """[`forward`] on the next `(batch, length, d_model)` piece of sequences that continue from `state` (see
        [`allocate_state`]): the output `(batch, length, d_model)` and the state after the piece. Pieces fed one
        after another give [`forward`] of the whole sequence. Inference only (no gradients)."""
        conv_state, ssm_state = state
        xz = self.in_proj(hidden_states).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)
        x = torch.cat([conv_state.to(x.dtype), x], dim=2)
        conv_state = x[:, :, x.shape[2] - (self.d_conv - 1) :]
        x = F.silu(F.conv1d(x, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner))
        out, ssm_state = self._ssm(x, z, initial_state=ssm_state, return_last_state=True)
        return out, (conv_state, ssm_state)

    def step(
        self, hidden_states: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One time step of the recurrence, `mamba_ssm.Mamba.step`'s form: `(batch, d_model)` and the state in, the
        output `(batch, d_model)` and the next state out."""
        conv_state, ssm_state = state
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (batch, d_inner) each
        window = torch.cat([conv_state.to(x.dtype), x[:, :, None]], dim=2)  # (batch, d_inner, d_conv)
        x = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt).float())
        x = x.float()
        decay = torch.exp((dt[:, :, None] * -torch.exp(self.A_log.float())).clamp(min=_MIN_LOG_DECAY))
        ssm_state = decay * ssm_state + (dt * x)[:, :, None] * B.float()[:, None, :]
        y = (ssm_state * C.float()[:, None, :]).sum(-1) + x * self.D.float()
        y = (y * F.silu(z.float())).to(hidden_states.dtype)
        return self.out_proj(y), (window[:, :, 1:], ssm_state)
