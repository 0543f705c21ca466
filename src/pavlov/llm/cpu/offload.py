"""A frozen model whose weights live in a file, read back only while it runs.

Why: full fine-tuning keeps a frozen copy of the starting policy as the KL reference. For
SmolLM2-135M in float32 that copy is 538 MB of the process's memory for the whole run, although
it is used for one no-grad forward per step (a few percent of the step). :func:`offload_copy`
writes the weights once to an anonymous file (``O_TMPFILE``: it has no name and vanishes with
the process) and keeps only the module's structure; inside ``with loaded(module):`` the weights
are read back, the decoder blocks one at a time into a single shared block-sized buffer (a
pre-hook fills block ``i`` just before it runs), everything else (embeddings, final norm,
output head) for the duration of the block. Outside it the copy holds no weight memory, so it no
longer adds to the peak reached during the policy's update, where gradients and activations
live.

The file stays in the operating system's page cache while memory allows (reading it back costs
a copy plus fresh pages for the embeddings: ~0.15 s per step for 538 MB on a 2-core VM); under
memory pressure the kernel may drop those pages and they are read from disk instead. Outputs are
bitwise those of the in-memory copy: the same bytes, the same kernels. This is the CPU analogue
of DeepSpeed's parameter offload for a frozen model.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["OffloadedWeights", "is_offloaded", "loaded", "offload_copy"]

ALIGN = 64  # bytes; every tensor starts at a multiple of this in the file and in buffers


@dataclass
class _Slot:
    """Where one parameter lives: ``offset`` bytes into the file and, for block parameters,
    ``local`` bytes into the shared block buffer."""

    param: nn.Parameter
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    local: int = 0


@dataclass
class OffloadedWeights:
    """The file and layout behind an offloaded module (``module._pavlov_offload``)."""

    fd: int
    blocks: list[nn.Module]
    block_slots: list[list[_Slot]] = field(default_factory=list)
    other_slots: list[_Slot] = field(default_factory=list)
    block_bytes: int = 0
    depth: int = 0  # nesting of ``loaded`` blocks

    def __del__(self, _close=os.close) -> None:
        # the anonymous file goes when its descriptor closes; ``os.close`` bound at definition:
        # at interpreter exit module globals (os, contextlib) may already be None
        try:  # noqa: SIM105
            _close(self.fd)
        except OSError:
            pass


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks (Llama-style ``model.layers``, GPT-2 ``transformer.h``)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        module: nn.Module | None = model
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList) and len(module):
            return list(module)
    return []


def _placeholder(param: Tensor) -> nn.Parameter:
    return nn.Parameter(param.new_empty(0), requires_grad=False)


def offload_copy(model: nn.Module, directory: str | os.PathLike | None = None) -> nn.Module:
    """A frozen copy of ``model`` whose parameters are kept in an anonymous file.

    ``directory`` holds the file (``None``: pavlov's cache directory, which should be on a disk,
    not a RAM-backed tmpfs). The copy is written from the current weights without allocating a
    second in-memory copy; buffers (rotary tables, ...) are copied normally. Use it only under
    ``with loaded(copy):`` and without gradients.
    """
    if directory is None:
        from pavlov.llm.models.assets import cache_root

        directory = cache_root() / "offload"
    Path(directory).mkdir(parents=True, exist_ok=True)
    params = {id(p): p for p in model.parameters()}  # tied weights once
    memo: dict[int, object] = {key: _placeholder(p) for key, p in params.items()}
    frozen = copy.deepcopy(model, memo)  # structure and buffers; parameters are placeholders
    frozen.requires_grad_(False)

    with tempfile.TemporaryFile(dir=directory) as handle:  # O_TMPFILE: no name at all
        fd = os.dup(handle.fileno())  # keeps the file alive after the handle closes
    state = OffloadedWeights(fd, _blocks(frozen))
    placed: set[int] = set()
    offset = 0

    def place(original: nn.Parameter) -> _Slot:
        nonlocal offset
        tensor = original.detach().contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        slot = _Slot(memo[id(original)], offset, nbytes, tuple(tensor.shape), tensor.dtype)
        data = tensor.reshape(-1).view(torch.uint8).numpy()
        os.pwrite(fd, memoryview(data), offset)
        offset = _aligned(offset + nbytes)
        placed.add(id(original))
        return slot

    # Decoder blocks first, each contiguous in the file, then everything not yet placed. Blocks
    # that share parameters with each other (ALBERT-style) are not streamed.
    originals = _blocks(model)
    block_params = [id(p) for block in originals for p in block.parameters()]
    if len(block_params) != len(set(block_params)):
        originals, state.blocks = [], []
    for block in originals:
        slots, local = [], 0
        for p in block.parameters():
            if id(p) in placed:
                continue
            slot = place(p)
            slot.local, local = local, _aligned(local + slot.nbytes)
            slots.append(slot)
        state.block_slots.append(slots)
        state.block_bytes = max(state.block_bytes, local)
    for p in params.values():
        if id(p) not in placed:
            state.other_slots.append(place(p))
    frozen._pavlov_offload = state  # type: ignore[attr-defined]
    return frozen


def is_offloaded(module: nn.Module | None) -> bool:
    return module is not None and hasattr(module, "_pavlov_offload")


def _read(fd: int, out: Tensor, offset: int) -> None:
    """Fill the uint8 tensor ``out`` from the file at ``offset``."""
    view = memoryview(out.numpy())
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"offloaded weights: short read at byte {offset + done}")
        done += n


def _bind(slot: _Slot, buffer: Tensor, start: int) -> None:
    """Point the parameter at its bytes in ``buffer`` (aligned, so the dtype view is valid)."""
    slot.param.data = buffer[start : start + slot.nbytes].view(slot.dtype).view(slot.shape)


@contextlib.contextmanager
def loaded(module: nn.Module | None) -> Iterator[None]:
    """Within the block, an :func:`offload_copy` module can run its forward (without
    gradients); a no-op for ``None`` or an ordinary module. On exit its weight memory is freed."""
    state: OffloadedWeights | None = getattr(module, "_pavlov_offload", None)
    if state is None or state.depth:
        if state is not None:
            state.depth += 1
        try:
            yield
        finally:
            if state is not None:
                state.depth -= 1
        return
    hooks = []
    try:
        state.depth = 1
        for slot in state.other_slots:
            raw = torch.empty(slot.nbytes, dtype=torch.uint8)
            _read(state.fd, raw, slot.offset)
            _bind(slot, raw, 0)
        shared = torch.empty(max(state.block_bytes, 1), dtype=torch.uint8)
        for i, (block, slots) in enumerate(zip(state.blocks, state.block_slots, strict=True)):
            for slot in slots:
                _bind(slot, shared, slot.local)
            hooks.append(block.register_forward_pre_hook(_filler(state, i, shared)))
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for slot in state.other_slots + [s for slots in state.block_slots for s in slots]:
            slot.param.data = slot.param.data.new_empty(0)
        state.depth = 0


def _filler(state: OffloadedWeights, index: int, shared: Tensor):
    """A forward pre-hook reading block ``index`` into the shared buffer."""
    slots = state.block_slots[index]

    def hook(module: nn.Module, args) -> None:
        if torch.is_grad_enabled():
            raise RuntimeError("an offloaded module runs only without gradients (torch.no_grad)")
        if slots:
            first, last = slots[0], slots[-1]
            span = last.local + last.nbytes
            _read(state.fd, shared[:span], first.offset)  # the block is contiguous in the file

    return hook
