"""PyTorch eager: the reference, and the engine of GPUs.

On the CPU the module runs in channels_last memory format (the same numbers, faster
convolutions); on a GPU it runs a copy of the module there, in float32 with TF32 off (so
it agrees with the CPU to within the exactness tolerance), or under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import copy
import weakref

import torch
from torch import nn

from imprinting.engines.base import Engine, as_tensor, threads


def module_device(module: nn.Module) -> torch.device:
    return next(iter(module.parameters()), torch.empty(0)).device


class TorchEngine(Engine):
    """``module`` in eval mode under ``no_grad``, on ``device`` (default: the module's own).

    The engine keeps only a weak reference to a module on its own device (the model owns
    it); for another device it keeps a copy there, made now (weights changed later are
    not seen: ``imprinting.engines.frozen_engine`` builds a new engine when they change).
    """

    name = "torch"

    def __init__(self, module: nn.Module, precision: str = "float32", device: str | torch.device | None = None):
        super().__init__(precision)
        home = module_device(module)
        self.device = torch.device(device) if device is not None else home
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        module.eval()
        if self.device != home:
            self._copy = copy.deepcopy(module).to(self.device)
            self._module = lambda: self._copy
        else:
            self._copy = None
            self._module = weakref.ref(module)
        if self.device.type == "cpu":
            # Outside inference mode: converting parameters inside it would make them unusable for training.
            self.module.to(memory_format=torch.channels_last)

    @property
    def uses_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def module(self) -> nn.Module:
        m = self._module()
        if m is None:
            raise RuntimeError("the module of this engine no longer exists")
        return m

    def _context(self):
        if self.precision == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.device.type == "cuda":
            return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
        return contextlib.nullcontext()

    def run(self, batch) -> torch.Tensor:
        x = as_tensor(batch).to(self.device, non_blocking=True)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            if self.device.type == "cuda" and self.precision == "float32":
                torch.backends.cuda.matmul.allow_tf32 = False
            with torch.no_grad(), self._context():
                out = self.module(x)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        return out.float().reshape(out.shape[0], -1).cpu()

    def details(self) -> str:
        if self.device.type == "cuda":
            what = f"cuda, {torch.cuda.get_device_name(self.device)}"
            return what + (", autocast" if self.precision == "bfloat16" else ", TF32 off")
        return f"eager, channels_last, cpu, {threads()} threads" + (", autocast" if self.precision == "bfloat16" else "")
