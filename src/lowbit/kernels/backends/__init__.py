"""PackedLinear compute backends ("c", "c-int8", "int4pack", "torch") and `choose_backend`, which picks one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lowbit.kernels.backends.base import PREFILL_ROWS, Backend, ReferenceBackend
from lowbit.kernels.backends.c import CBackend
from lowbit.kernels.backends.c_int8 import CInt8Backend
from lowbit.kernels.backends.int4pack import Int4PackBackend, int4pack_unpack
from lowbit.kernels.lib import get_lib

if TYPE_CHECKING:
    from lowbit.kernels.packed import PackedLinear

__all__ = ["PREFILL_ROWS", "Backend", "CBackend", "CInt8Backend", "Int4PackBackend", "ReferenceBackend",
           "choose_backend", "int4pack_unpack"]


def choose_backend(layer: PackedLinear, act_dtype: torch.dtype, want: str) -> Backend:
    """The backend for `layer` and activations of `act_dtype`, given the wanted kernel name (one of KERNELS,
    lower case): "int4pack" where it fits, else the C kernels for "auto"/"c"/"c-int8" where they build and fit
    ("c-int8" only where its layout and the CPU's VNNI fit, else "c"), else the PyTorch reference."""
    if want == "int4pack":
        int4 = Int4PackBackend.build(layer, act_dtype)
        if int4 is not None:
            return int4
    lib = get_lib(stacklevel=4) if want in ("auto", "c", "c-int8") else None
    if lib is not None and CBackend.fits(layer):
        if want == "c-int8" and CInt8Backend.fits_int8(layer, lib):
            return CInt8Backend(layer, lib)
        return CBackend(layer, lib)
    return ReferenceBackend()
