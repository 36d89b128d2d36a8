"""PackedLinear: a linear layer whose weight stays bit-packed in memory (2-8 bits, group-wise scales).

Three ways to compute, picked on the first forward (`backend()` says which, `LOWBIT_QLINEAR=...` forces one):
- "c" (default): our C kernel (csrc/qgemv.c, built on first use with -march=native) reads the packed rows
  directly: a group-wise GEMV for decode (2-8 bits, AVX-512 for 2/3/4/8, fp32 arithmetic) and a vectorised
  dequantize (to bf16 or fp32) for prefill. Measured here it is faster than PyTorch's int4 kernel.
- "c-int8" (opt-in): the C kernel with activations rounded to int8 per group for decode (2/4/8 bits, AVX-512
  VNNI integer dot products, as llama.cpp does with its Q8 activations); not exact (about 0.2-0.5% relative
  error per output), several times faster. Falls back to "c" where the layout or the CPU does not fit.
- "int4pack" (opt-in): 4-bit weights with bf16 activations use PyTorch's CPU int4 kernel
  (`aten._weight_int4pack_mm_for_cpu`); the codes are then held only in that kernel's layout.
- "torch": the reference, correct everywhere: dequantize to the activation dtype, then a float matmul.
Batches above `PREFILL_ROWS` rows dequantize once into a reused scratch buffer and run a float matmul
(bf16 goes to oneDNN's AMX path).
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from lowbit.formats import pack, unpack
from lowbit.kernels._build import build_shared, compiler
from lowbit.quantizers import QuantizedWeight, WeightSpec, dequantize_weight

PREFILL_ROWS = 8  # above this many rows the kernels are compute-bound: dequantize and use a float matmul
_SOURCE = Path(__file__).with_name("csrc") / "qgemv.c"
_FLAGS = ["-O3", "-fPIC", "-shared", "-fno-strict-aliasing"]
_INT4_GROUPS = (32, 64, 128, 256)
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_tried = False


def _get_lib() -> ctypes.CDLL | None:
    """The C kernels, compiled on first use; None (with a warning) when no compiler works."""
    global _lib, _lib_tried
    with _lock:
        if _lib_tried:
            return _lib
        _lib_tried = True
        variants = [_FLAGS + ["-march=native", "-fopenmp"], _FLAGS + ["-march=native"], _FLAGS]
        try:
            lib = ctypes.CDLL(str(build_shared(_SOURCE, compiler(), variants, native=True)))
        except (RuntimeError, OSError) as exc:
            warnings.warn(f"lowbit packed-linear C kernels unavailable ({exc}); using the PyTorch reference, "
                          "which is correct but slower. Install gcc to get the fast path.", RuntimeWarning,
                          stacklevel=3)
            return None
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.lbq_set_threads.argtypes, lib.lbq_set_threads.restype = [i32], None
        lib.lbq_gemm.argtypes = [p, i64, i64, p, i64, i64, i32, i64, i64, p, p, i64, p, p, p]
        lib.lbq_dequant.argtypes = [p, i64, i64, i64, i32, i64, i64, p, p, i64, i32, p]
        lib.lbq_dequant_int4pack_bf16.argtypes = [p, i64, i64, i64, i64, p, p, p]
        lib.lbq_quant_act.argtypes = [p, i32, i64, i64, i32, i64, i64, p, p, p]
        lib.lbq_gemv_i8.argtypes = [p, p, p, i64, i64, p, i64, i64, i32, i64, i64, p, p, i64, p, p, i32]
        lib.lbq_linear_i8.argtypes = [p, i32, i64, i64, p, i64, i64, i32, i64, i64, p, p, i64, p, p, i32, p, p, p, i32]
        lib.lbq_rmsnorm.argtypes = [p, p, i64, i64, ctypes.c_float, i32, p]
        lib.lbq_attn1.argtypes = [p, p, p, i64, i64, i64, i64, i64, ctypes.c_float, p, p]
        lib.lbq_multi.argtypes = [p, i32, p, i32, i64, i32, i64, i64, i32, p, i32, p, i32]
        f32 = ctypes.c_float
        lib.lbq_layer.argtypes = [p, p, p, p, f32, p, p, p, p, i32, i32, p, p, p, p, i64, i64, i64, i64, i64, f32, p,
                                  i32]
        lib.lbq_has_vnni.argtypes, lib.lbq_has_vnni.restype = [], i32
        lib.lbq_has_q4bf16.argtypes, lib.lbq_has_q4bf16.restype = [], i32
        lib.lbq_gemv_q4_bf16.argtypes = [p, i64, i64, p, i64, i64, i64, i64, p, p, i64, p, p, i32, p, p, i32]
        lib.lbq_has_bf16.argtypes, lib.lbq_has_bf16.restype = [], i32
        lib.lbq_gemv_bf16.argtypes = [p, i64, i64, p, i64, p, p, i32]
        for f in (lib.lbq_layer, lib.lbq_multi, lib.lbq_rmsnorm, lib.lbq_attn1, lib.lbq_gemv_bf16, lib.lbq_linear_i8,
                  lib.lbq_gemv_q4_bf16, lib.lbq_gemm, lib.lbq_dequant, lib.lbq_dequant_int4pack_bf16,
                  lib.lbq_quant_act, lib.lbq_gemv_i8):
            f.restype = None
        _lib = lib
        return lib


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


_scratch = threading.local()


def _ptr_or_none(t: torch.Tensor | None) -> int | None:
    """_ptr(t), or None (a NULL pointer) for no tensor."""
    return None if t is None else _ptr(t)


def _scratch_matrix(n: int, k: int, dtype: torch.dtype, tag: str = "buf") -> torch.Tensor:
    """A reused [n, k] buffer (one per thread, tag and dtype; no page faults per call)."""
    key = f"{tag}_{dtype}"
    buf = getattr(_scratch, key, None)
    if buf is None or buf.numel() < n * k:
        buf = torch.empty(n * k, dtype=dtype)
        setattr(_scratch, key, buf)
    return buf[: n * k].view(n, k)


def _scratch_ptr(nbytes: int, tag: str) -> int:
    """The address of a reused per-thread byte buffer of at least `nbytes` (decode calls' int8/sum scratch)."""
    buf = _scratch.__dict__.get(tag)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(max(nbytes, 1 << 16), dtype=torch.int8)
        setattr(_scratch, tag, buf)
    return buf.data_ptr()


def _int4pack_unpack(w4: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Codes [n, k] back from torch's CPU int4 layout (n % 64 == 0: per 64 rows and per k, 32 bytes whose
    low nibble is row j and high nibble row j + 32)."""
    b = w4.reshape(n // 64, k, 32)
    return torch.cat([b & 15, b >> 4], dim=-1).permute(0, 2, 1).reshape(n, k).contiguous()


def dense_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x) for a plain bf16 nn.Linear; at a few rows through our bf16 GEMV (exact products, fp32 sums),
    which is several times faster than PyTorch's at batch 1 here. Hooks on `layer` are honoured."""
    w = layer.weight
    rows = x.numel() // w.shape[1]
    fits = (w.dtype == torch.bfloat16 and x.dtype == torch.bfloat16 and rows <= PREFILL_ROWS and w.shape[1] % 32 == 0
            and not layer._forward_pre_hooks and not layer._forward_hooks)
    lib = _get_lib() if fits else None
    if lib is None or not lib.lbq_has_bf16() or not w.is_contiguous():
        return layer(x)
    x2 = x.reshape(rows, w.shape[1]).contiguous()
    y = torch.empty(rows, w.shape[0], dtype=torch.bfloat16)
    b = None if layer.bias is None else layer.bias.detach().float()
    lib.lbq_set_threads(torch.get_num_threads())
    lib.lbq_gemv_bf16(_ptr(x2), rows, w.shape[1], _ptr(w), w.shape[0], None if b is None else _ptr(b), _ptr(y), 1)
    return y.reshape(*x.shape[:-1], w.shape[0])


KERNELS = ("auto", "c", "c-int8", "int4pack", "torch")


def set_kernel(model: nn.Module, name: str) -> int:
    """Make every PackedLinear in `model` use kernel `name` (see KERNELS) from its next forward; returns how many."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(KERNELS)}")
    mods = [m for m in model.modules() if isinstance(m, PackedLinear)]
    for m in mods:
        m.release()
        m.kernel_choice = name
    return len(mods)


class PackedLinear(nn.Module):
    """y = x W^T + b with W held as packed codes (uint8 words), fp16 scales and packed zero points."""

    def __init__(self, in_features: int, out_features: int, spec: WeightSpec, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        groups = 1 if spec.group_size <= 0 else spec.groups(in_features)
        rows = 1 if spec.group_size == -1 else out_features
        nbytes = (in_features + 7) // 8 * spec.bits
        self.register_buffer("qweight", torch.zeros(out_features, nbytes, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(rows, groups, dtype=torch.float16))
        if not spec.symmetric:
            self.register_buffer("qzeros", torch.zeros(rows, (groups + 7) // 8 * spec.bits, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._kernel: dict | None = None  # backend state, built on the first forward
        self.kernel_choice: str | None = None  # set_kernel(); None: $LOWBIT_QLINEAR or auto

    @classmethod
    def from_quantized(cls, q: QuantizedWeight, bias: torch.Tensor | None = None) -> PackedLinear:
        """Pack a QuantizedWeight (and optional bias) into a new module."""
        out, inp = q.codes.shape
        m = cls(inp, out, q.spec, bias is not None)
        m.qweight.copy_(pack(q.codes, q.spec.bits))
        m.scales.copy_(q.scales.to(torch.float16))
        if not q.spec.symmetric:
            m.qzeros.copy_(pack(q.zeros.round().to(torch.uint8), q.spec.bits))
        if bias is not None:
            m.bias.data.copy_(bias)
        return m

    # ------------------------------------------------------------------ views of the stored weight

    def zeros(self) -> torch.Tensor:
        """Zero points [rows, groups] as floats."""
        if self.spec.symmetric:
            return torch.full(self.scales.shape, float(1 << (self.spec.bits - 1)))
        return unpack(self.qzeros, self.spec.bits, self.scales.shape[1]).float()

    def codes(self) -> torch.Tensor:
        """Unpacked integer codes [out, in] (uint8), whichever layout holds them."""
        if self._kernel is not None and self._kernel["name"] == "int4pack":
            return _int4pack_unpack(self._kernel["w4"], self.out_features, self.in_features)
        return unpack(self.qweight, self.spec.bits, self.in_features)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the packed buffers represent."""
        return dequantize_weight(self.codes(), self.scales.float(), self.zeros(), torch.float32).to(dtype)

    def storage_bits(self) -> int:
        """Bits of packed weight, scales and zeros (the bias excluded)."""
        n = self.out_features * ((self.in_features + 7) // 8 * self.spec.bits) * 8 + self.scales.numel() * 16
        return n + (self.qzeros.numel() * 8 if not self.spec.symmetric else 0)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._kernel is not None and self._kernel["name"] == "int4pack":  # canonical layout on disk
            destination[prefix + "qweight"] = pack(self.codes(), self.spec.bits)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kw: object) -> None:
        self.release()
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)

    # ------------------------------------------------------------------ kernels

    def backend(self) -> str | None:
        """The active kernel ('int4pack', 'c' or 'torch'), or None before the first forward."""
        return None if self._kernel is None else self._kernel["name"]

    def release(self) -> None:
        """Drop the kernel state (restoring the packed row layout): the next forward prepares it again."""
        if self._kernel is not None and self._kernel["name"] == "int4pack":
            self.qweight = pack(self.codes(), self.spec.bits)
        self._kernel = None

    def prepare(self, act_dtype: torch.dtype) -> str:
        """Choose and build the kernel for activations of `act_dtype`; returns its name."""
        want = (getattr(self, "kernel_choice", None) or os.environ.get("LOWBIT_QLINEAR", "auto")).lower()
        n, k, spec = self.out_features, self.in_features, self.spec
        rows, groups = self.scales.shape  # rows: out_features, or 1 for one range per tensor
        glen = k // groups
        # per-channel scales fit the int4 kernel by repeating them over groups of 128 (exactly the same weights)
        g4 = glen if glen in _INT4_GROUPS else (128 if groups == 1 and k % 128 == 0 else 0)
        if (want == "int4pack" and spec.bits == 4 and act_dtype == torch.bfloat16 and n % 64 == 0
                and g4 and k % g4 == 0 and rows == n and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")):
            s, z = self.scales.float(), self.zeros().float()  # torch's kernel takes float ranges
            codes = self.codes()
            w4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
            if torch.equal(_int4pack_unpack(w4, n, k), codes):  # the layout we decode for prefill
                rep = g4 // glen if groups > 1 else k // g4
                s4 = s.repeat_interleave(rep, dim=1) if groups > 1 else s.expand(n, rep)
                z4 = z.repeat_interleave(rep, dim=1) if groups > 1 else z.expand(n, rep)
                sz = torch.stack([s4, (8 - z4) * s4], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
                self._kernel = {"name": "int4pack", "w4": w4, "sz": sz, "group": g4, "s": s4.contiguous(),
                                "z": z4.contiguous()}
                self.qweight = torch.empty(0, dtype=torch.uint8)  # the codes now live in w4 only
                return "int4pack"
        lib = _get_lib() if want in ("auto", "c", "c-int8") else None
        if lib is not None and (glen % 8 == 0 or groups == 1):
            # the C kernels read the stored fp16 scales and uint8 zero codes (None: symmetric), no float copies
            z8 = None if spec.symmetric else unpack(self.qzeros, spec.bits, groups).contiguous()
            self._kernel = {"name": "c", "lib": lib, "s": self.scales.to(torch.float16).contiguous(), "z": z8,
                            "per_row": int(rows == n)}
            # 4-bit with bf16 activations: exact bf16 dot products (vdpbf16ps) instead of float unpacking
            self._kernel["q4bf16"] = bool(spec.bits == 4 and k % 128 == 0 and (k if groups == 1 else glen) % 128 == 0
                                          and lib.lbq_has_q4bf16())
            gbytes = (k if groups == 1 else glen) * spec.bits // 8
            if (want == "c-int8" and spec.bits in (2, 4, 8) and k % 8 == 0 and k * spec.bits // 8 % 64 == 0
                    and (gbytes % 64 == 0 or gbytes in (16, 32)) and lib.lbq_has_vnni()):
                self._kernel["name"] = "c-int8"
            return self._kernel["name"]
        self._kernel = {"name": "torch"}
        return "torch"

    def _dequant(self, dtype: torch.dtype) -> torch.Tensor:
        """The float weight in a scratch buffer, through the C kernels (bf16 or fp32)."""
        kern, n, k = self._kernel, self.out_features, self.in_features
        lib = _get_lib()
        if lib is None or dtype not in (torch.bfloat16, torch.float32):
            return self.dequantized_weight(dtype)
        out = _scratch_matrix(n, k, dtype)
        lib.lbq_set_threads(torch.get_num_threads())
        s, z = kern["s"], kern["z"]
        if kern["name"] == "int4pack":
            if dtype != torch.bfloat16:
                return self.dequantized_weight(dtype)
            lib.lbq_dequant_int4pack_bf16(_ptr(kern["w4"]), n, k, kern["group"], s.shape[1], _ptr(s), _ptr(z),
                                          _ptr(out))
        else:
            glen = k if s.shape[1] == 1 else k // s.shape[1]
            lib.lbq_dequant(_ptr(self.qweight), n, k, self.qweight.shape[1], self.spec.bits, glen, s.shape[1],
                            _ptr(s), _ptr_or_none(z), kern["per_row"], int(dtype == torch.bfloat16), _ptr(out))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T + b through the prepared kernel (decode) or a dequantized float matmul (prefill)."""
        if self._kernel is None:
            self.prepare(x.dtype)
        kern = self._kernel
        name = kern["name"]
        rows = x.numel() // self.in_features
        if name == "c-int8" and rows <= PREFILL_ROWS:
            return self._c_int8(x.reshape(rows, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if name == "torch" or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)
        if rows > PREFILL_ROWS:
            return nn.functional.linear(x, self._dequant(x.dtype), bias)
        x2 = x.reshape(rows, self.in_features)
        if name == "c" and kern["q4bf16"] and x.dtype == torch.bfloat16:
            return self._c_q4_bf16(x2).reshape(*x.shape[:-1], self.out_features)
        if name == "int4pack":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), kern["w4"],
                                                           kern["group"], kern["sz"])
            if bias is not None:
                y = y + bias
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return self._c_gemm(x2).to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _c_gemm(self, x2: torch.Tensor) -> torch.Tensor:
        kern, k = self._kernel, self.in_features
        s, z = kern["s"], kern["z"]
        groups = s.shape[1]
        k8 = (k + 7) // 8 * 8
        xf = x2.float()
        if k8 != k:
            xf = nn.functional.pad(xf, (0, k8 - k))
        xf = xf.contiguous()
        glen = k8 if groups == 1 else k // groups
        y = torch.empty(xf.shape[0], self.out_features)
        xsum = torch.empty(xf.shape[0], groups)
        bias = None if self.bias is None else self.bias.detach().float().contiguous()
        lib = kern["lib"]
        lib.lbq_set_threads(torch.get_num_threads())
        lib.lbq_gemm(_ptr(xf), xf.shape[0], k8, _ptr(self.qweight), self.out_features, self.qweight.shape[1],
                     self.spec.bits, glen, groups, _ptr(s), _ptr_or_none(z), kern["per_row"],
                     None if bias is None else _ptr(bias), _ptr(xsum), _ptr(y))
        return y

    def _c_q4_bf16(self, x2: torch.Tensor) -> torch.Tensor:
        """Exact 4-bit decode for bf16 activations (csrc lbq_gemv_q4_bf16)."""
        kern, k, rows = self._kernel, self.in_features, x2.shape[0]
        s, z = kern["s"], kern["z"]
        groups = s.shape[1]
        bias = self._bias32()
        xin = x2.contiguous()
        base = _scratch_ptr(rows * (2 * k + 4 * groups), "q4")  # permuted x, then sums
        y = torch.empty(rows, self.out_features, dtype=torch.bfloat16)
        kern["lib"].lbq_gemv_q4_bf16(_ptr(xin), rows, k, _ptr(self.qweight), self.out_features, self.qweight.shape[1],
                                     k // groups, groups, _ptr(s), _ptr_or_none(z), kern["per_row"],
                                     None if bias is None else _ptr(bias), _ptr(y), 1, base, base + rows * 2 * k,
                                     torch.get_num_threads())
        return y

    def _c_int8(self, x2: torch.Tensor) -> torch.Tensor:
        """Decode through the int8-activation kernel; bf16 and fp32 activations are read and written as they are."""
        kern = self._kernel
        if "args" not in kern:  # everything but the activations, fixed once prepared
            s, z = kern["s"], kern["z"]
            k, groups = self.in_features, s.shape[1]
            bias = self._bias32()
            kern["args"] = (k, _ptr(self.qweight), self.out_features, self.qweight.shape[1], self.spec.bits,
                            k // groups, groups, _ptr(s), _ptr_or_none(z), kern["per_row"],
                            None if bias is None else _ptr(bias))
        rows = x2.shape[0]
        xin = x2 if x2.dtype in (torch.bfloat16, torch.float32) else x2.float()
        xin = xin.contiguous()
        k, groups = self.in_features, kern["args"][6]
        base = _scratch_ptr(rows * (k + 8 * groups), "i8")  # xq, then xs and xsum
        y = torch.empty(rows, self.out_features, dtype=xin.dtype)
        is_bf16 = int(xin.dtype == torch.bfloat16)
        kern["lib"].lbq_linear_i8(_ptr(xin), is_bf16, rows, *kern["args"], _ptr(y), is_bf16, base,
                                  base + rows * k, base + rows * (k + 4 * groups), torch.get_num_threads())
        return y if y.dtype == x2.dtype else y.to(x2.dtype)

    def _bias32(self) -> torch.Tensor | None:
        """The bias as fp32, cached with the kernel state."""
        kern = self._kernel
        if "bias32" not in kern:
            kern["bias32"] = None if self.bias is None else self.bias.detach().float().contiguous()
        return kern["bias32"]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.spec.describe()}"


class FusedLinears:
    """PackedLinear layers that read the same input (q/k/v, gate/up) run as one kernel call for one row: the
    activation is quantized or permuted once. `build` returns None where they do not qualify."""

    def __init__(self, layers: list[PackedLinear], mode: int, dtype: torch.dtype) -> None:
        self.layers, self.mode, self.dtype = layers, mode, dtype
        self.sizes = [m.out_features for m in layers]
        first = layers[0]
        s = first._kernel["s"]
        self.k, self.groups, self.bits = first.in_features, s.shape[1], first.spec.bits
        rows, off = [], 0
        for m in layers:
            kern, b = m._kernel, m._bias32()
            rows.append([_ptr(m.qweight), m.out_features, m.qweight.shape[1], _ptr(kern["s"]),
                         _ptr_or_none(kern["z"]) or 0, kern["per_row"], 0 if b is None else _ptr(b), off])
            off += m.out_features
        self.desc = torch.tensor(rows, dtype=torch.int64)
        self.desc_ptr, self.n, self.glen = _ptr(self.desc), len(layers), self.k // self.groups
        self.bf = int(dtype == torch.bfloat16)
        self.total = off
        self.lib = first._kernel["lib"]

    @classmethod
    def build(cls, layers: list[nn.Module], dtype: torch.dtype) -> FusedLinears | None:
        """Fuse `layers` for activations of `dtype` if they are all prepared alike; else None."""
        if not all(isinstance(m, PackedLinear) for m in layers):
            return None
        if any(m._forward_pre_hooks or m._forward_hooks for m in layers):
            return None
        for m in layers:
            if m._kernel is None:
                m.prepare(dtype)
        first = layers[0]
        if first.backend() not in ("c", "c-int8"):
            return None
        same = all(m.in_features == first.in_features and m.spec == first.spec
                   and m.backend() == first.backend() and m._kernel["s"].shape[1] == first._kernel["s"].shape[1]
                   for m in layers)
        if not same or dtype not in (torch.bfloat16, torch.float32):
            return None
        if first.backend() == "c-int8":
            return cls(layers, 0, dtype)
        if first.backend() == "c" and all(m._kernel["q4bf16"] for m in layers) and dtype == torch.bfloat16:
            return cls(layers, 1, dtype)
        return None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The layers' outputs for one input row x [1, in_features] (or [in_features])."""
        x = x.reshape(1, self.k).contiguous()
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        y = torch.empty(1, self.total, dtype=self.dtype)
        scratch = _scratch_ptr(2 * self.k + 8 * self.groups, "multi")
        self.lib.lbq_multi(self.desc_ptr, self.n, x.data_ptr(), self.bf, self.k, self.bits, self.glen, self.groups,
                           self.mode, y.data_ptr(), self.bf, scratch, torch.get_num_threads())
        return y.split(self.sizes, dim=1)
