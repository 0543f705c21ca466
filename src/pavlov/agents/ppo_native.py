"""PPO's closed-form minibatch gradient as one C call: the CPU fast path of
:class:`~pavlov.agents.ppo_fast.ClosedFormGrad` for a categorical policy.

Why: on CartPole-sized nets (4-64-64-2 actor, 4-64-64-1 critic) the torch version of the step
(:meth:`ClosedFormGrad.loss_and_grad`) is ~70 small op dispatches: 0.30-0.33 ms at 128 rows and
0.43-0.54 ms at 256 on one thread, a cost that hardly shrinks with the minibatch, so a DD-PPO
rank holding half the batch took ~75% of one process's time per update. ``ppo_native.c`` does
the same arithmetic (forward through both MLPs, log-softmax head, clipped surrogate, value loss,
entropy bonus, backward into the flat gradient) in one call, 0.11-0.13 / 0.22-0.28 ms, with
register-blocked matmuls (4 rows x 16 columns on AVX2, 4 x 32 on AVX-512 where the CPU has it,
chosen at run time; the same bytes) and a vectorised tanh, single-threaded. The rest of the step
is one more call (:class:`AdamKernel`): a DD-PPO sum's division by the ranks, the gradient clip
and the Adam step, bit for bit torch's fused Adam; the all-reduce between the two calls stays in
:class:`ClosedFormGrad`. Each call binds its pointers once (a ctypes struct), so the Python side
costs ~2 us rather than the ~12 of converting 29 arguments (docs/benchmarks.md, issue 18).

The C source is compiled on first use by :mod:`pavlov.native` (cached; off with
``PAVLOV_NATIVE=0``, or where there is no compiler, AVX2 or x86-64 Linux: then the torch ops
run). Results equal the torch ops' to float32 round-off (other summation order; the tests compare
gradients, metrics and whole updates); the Adam step equals torch's bit for bit.
"""

from __future__ import annotations

import ctypes
import functools
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pavlov import native

__all__ = ["MAX_LAYERS", "OUTPUTS", "AdamKernel", "PPOKernel", "available"]

MAX_LAYERS = 16
"""Most linear layers per MLP the kernel takes."""

_SOURCE = (resources.files(__package__) / "ppo_native.c").read_text()
_ACTIVATIONS = {"tanh": 0, "relu": 1}


class _Minibatch(ctypes.Structure):
    """``ppo_minibatch`` in ppo_native.c: one minibatch's pointers, strides and scratch."""

    _p, _i = ctypes.c_void_p, ctypes.c_int
    _fields_ = [("B", _i), ("act", _i),
                ("L_pi", _i), ("dims_pi", _p), ("w_pi", _p), ("b_pi", _p), ("gw_pi", _p),
                ("gb_pi", _p),
                ("L_v", _i), ("dims_v", _p), ("w_v", _p), ("b_v", _p), ("gw_v", _p), ("gb_v", _p),
                ("x", _p), ("ldx", _i), ("a", _p), ("lda", _i),
                ("old_logp", _p), ("old_v", _p), ("ret", _p), ("ldc", _i), ("adv", _p),
                ("scratch", _p)]


class _AdamState(ctypes.Structure):
    """``adam_state`` in ppo_native.c: the flat vectors of one :class:`~pavlov.agents.ppo_fast.
    AdamView` and how torch would chunk them."""

    _fields_ = [("p", ctypes.c_void_p), ("g", ctypes.c_void_p), ("m", ctypes.c_void_p),
                ("v", ctypes.c_void_p), ("steps", ctypes.c_void_p), ("n", ctypes.c_long),
                ("n_steps", ctypes.c_int), ("width", ctypes.c_int), ("threads", ctypes.c_int)]


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = native.load(_SOURCE, "ppo_native")
    if lib is None:
        return None
    p, i, f, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_double
    lib.ppo_categorical_grad.argtypes = [p, f, f, f, f, p]
    lib.ppo_categorical_grad.restype = None
    lib.clip_grad_norm.argtypes = [p, ctypes.c_long, f]
    lib.clip_grad_norm.restype = f
    lib.clip_adam.argtypes = [p, f, f, d, d, d, d, d]
    lib.clip_adam.restype = None
    lib.ppo_use_avx512.argtypes = [i]
    lib.ppo_use_avx512.restype = None
    lib.ppo_avx512.restype = i
    lib.ppo_scratch_floats.argtypes = [i, i, p, i, p]
    lib.ppo_scratch_floats.restype = ctypes.c_long
    return lib


TORCH_VECTOR_WIDTH = {"AVX512": 8, "AVX2": 8}
"""Per ``torch.backends.cpu.get_cpu_capability()``: how many lanes of torch 2.13's fused Adam
take its vector loop's arithmetic, so that a chunk's last ``n % width`` elements take its scalar
loop's (other capabilities keep torch's own step). 8 on AVX-512 too, as measured element by
element against ``torch._fused_adam_`` (tests/agents/test_ppo_native.py)."""


def available() -> bool:
    """Whether the kernel is built and loaded here."""
    return _library() is not None


def _use_avx512(on: bool) -> bool:
    """Let the matmuls run on AVX-512 where the CPU has it (the default), or force the AVX2
    loops (the tests run both); -> whether AVX-512 is now in use."""
    lib = _library()
    if lib is None:
        return False
    lib.ppo_use_avx512(int(on))
    return bool(lib.ppo_avx512())


OUTPUTS = ("losses/policy", "losses/value", "losses/entropy", "loss", "losses/approx_kl",
           "losses/clip_fraction")
"""What a kernel step returns, in order (a ``(6,)`` array): the policy loss, value loss and mean
entropy of the minibatch, its total loss, the k3 estimate of KL(old || new) and the fraction of
ratios outside the clip range (:func:`pavlov.math.ppo_clip_loss`'s metrics)."""


class PPOKernel:
    """The C step for one actor-critic: pointers to its layers' weights and gradient slices are
    taken once (the flat vectors do not move), each call passes the minibatch's columns."""

    def __init__(self, actor: Any, critic: Any, activation: str) -> None:
        self.lib = _library()
        if self.lib is None:
            raise RuntimeError("the PPO C kernel is not available here")
        self.act = _ACTIVATIONS[activation]
        self._keep: list[Any] = []  # the ctypes arrays and tensors the pointers point into
        self._pi, self._v = self._net(actor), self._net(critic)
        self._scratch, self._rows = torch.empty(0), 0
        self._bound: Any = None  # the minibatch self._args points into
        self._outs, self._outs_at, self._row = np.empty((0, len(OUTPUTS)), np.float32), 0, 0

    def _net(self, mlp: Any) -> tuple[int, ...]:
        """One MLP as the C call takes it: (layers, dims, weights, biases, weight grads, bias
        grads), the last five as addresses of C arrays."""
        ws = mlp.weights
        dims = (ctypes.c_int * (len(ws) + 1))(ws[0].shape[1], *(w.shape[0] for w in ws))
        tensors = (ws, mlp.biases, mlp.weight_grads, mlp.bias_grads)
        arrays = [(ctypes.c_void_p * len(ws))(*(t.data_ptr() for t in ts)) for ts in tensors]
        self._keep += [dims, *arrays, *tensors]
        return (len(ws), *(ctypes.addressof(x) for x in (dims, *arrays)))

    @staticmethod
    def takes(actor: Any, critic: Any, activation: str) -> bool:
        """Float32 CPU nets the kernel handles (and the kernel built)."""
        tensors = [*actor.weights, *actor.biases, *critic.weights, *critic.biases]
        return (activation in _ACTIVATIONS and len(actor.weights) <= MAX_LAYERS
                and actor.weights[-1].shape[0] <= 64
                and len(critic.weights) <= MAX_LAYERS
                and actor.weights[0].shape[1] == critic.weights[0].shape[1]
                and critic.weights[-1].shape[0] == 1
                and all(t.device.type == "cpu" and t.dtype == torch.float32
                        and t.is_contiguous() for t in tensors)
                and available())

    def __call__(self, mb: Any, clip_eps: float, clip_vf: float | None, vf_coef: float,
                 ent_coef: float) -> Tensor:
        """One minibatch (a :class:`~pavlov.agents.ppo_fast.Minibatch` of float32 column views
        of one packed batch) -> its :data:`OUTPUTS` (a ``(6,)`` float32 NumPy row, written
        once); the gradient is written into the nets' ``.grad`` slices of the flat gradient.
        The minibatch's pointers are bound once and reused while the same object comes back
        (the epochs of a one-minibatch update): a call then costs ~2 us of Python, not ~12."""
        if mb is not self._bound:
            self._bind(mb)
        if self._row == len(self._outs):  # a fresh block: earlier rows may still be records
            self._outs = np.empty((64, len(OUTPUTS)), np.float32)
            self._outs_at, self._row = self._outs.ctypes.data, 0
        row, self._row = self._row, self._row + 1
        self.lib.ppo_categorical_grad(self._args_ref, clip_eps,
                                      -1.0 if clip_vf is None else clip_vf, vf_coef, ent_coef,
                                      self._outs_at + row * 4 * len(OUTPUTS))
        return self._outs[row]

    def _bind(self, mb: Any) -> None:
        x, a, old_logp, old_values, adv, returns = mb
        stride = old_logp.stride(0)
        if (x.stride(1) != 1 or a.stride(1) != 1 or old_values.stride(0) != stride
                or returns.stride(0) != stride or x.dtype != torch.float32):
            raise ValueError("the PPO kernel takes float32 column views of one packed batch")
        if not adv.is_contiguous():
            adv = adv.contiguous()
        b = len(x)
        if b > self._rows:
            pi, v = self._pi, self._v
            self._scratch = torch.empty(self.lib.ppo_scratch_floats(b, pi[0], pi[1], v[0], v[1]))
            self._rows = b
        self._args = _Minibatch(b, self.act, *self._pi, *self._v, x.data_ptr(), x.stride(0),
                                a.data_ptr(), a.stride(0), old_logp.data_ptr(),
                                old_values.data_ptr(), returns.data_ptr(), stride, adv.data_ptr(),
                                self._scratch.data_ptr())
        self._args_ref = ctypes.byref(self._args)
        self._bound, self._bound_adv = mb, adv  # keeps the memory the pointers point into

    def clip_(self, flat_grad: Tensor, max_norm: float) -> None:
        """``clip_grad_norm_`` of a contiguous float32 flat gradient, in place (global norm,
        coefficient ``max_norm / (norm + 1e-6)`` capped at 1; the norm summed in float64)."""
        self.lib.clip_grad_norm(flat_grad.data_ptr(), flat_grad.numel(), max_norm)


class AdamKernel:
    """:meth:`clip_` and the fused Adam step of one :class:`~pavlov.agents.ppo_fast.AdamView`
    as one C call, bit for bit torch 2.13's ``_fused_adam_`` (~7 us for CartPole's 9,155
    parameters instead of ~12 for the clip, the step counts' ``add_`` and torch's kernel). The
    flat vectors must not move (re-bind after ``AdamView.link``)."""

    def __init__(self, adam: Any, flat_grad: Tensor) -> None:
        self.lib, self.adam, self.flat_grad = _library(), adam, flat_grad
        self.width = TORCH_VECTOR_WIDTH[torch.backends.cpu.get_cpu_capability()]
        self.bind()

    @staticmethod
    def takes(adam: Any, flat_grad: Tensor) -> bool:
        """Contiguous float32 CPU vectors, a plain Adam, the kernel built and torch's vector
        width known here."""
        tensors = (adam.flat, flat_grad, adam.exp_avg, adam.exp_avg_sq, adam.steps)
        return (all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                    for t in tensors)
                and torch.backends.cpu.get_cpu_capability() in TORCH_VECTOR_WIDTH
                and available())  # fmt: skip

    def bind(self) -> None:
        """Take the vectors' addresses (again, after the optimizer's state was relinked)."""
        a = self.adam
        self._state = _AdamState(a.flat.data_ptr(), self.flat_grad.data_ptr(),
                                 a.exp_avg.data_ptr(), a.exp_avg_sq.data_ptr(),
                                 a.steps.data_ptr(), a.flat.numel(), a.steps.numel(),
                                 self.width, 1)
        self._ref = ctypes.byref(self._state)

    def clip_and_step(self, max_norm: float | None, ranks: int = 1) -> None:
        """Divide the flat gradient by ``ranks`` (a sum over DD-PPO's ranks -> their mean, as
        ``div_``), clip it (if ``max_norm``), advance the step counts and step Adam with
        ``opt.param_groups[0]``'s hyperparameters (chunked as torch would with its current
        thread count)."""
        g = self.adam.opt.param_groups[0]
        self._state.threads = torch.get_num_threads()
        self.lib.clip_adam(self._ref, ranks, -1.0 if max_norm is None else max_norm, g["lr"],
                           g["betas"][0], g["betas"][1], g["weight_decay"], g["eps"])
