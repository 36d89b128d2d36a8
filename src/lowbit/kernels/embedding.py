"""PackedEmbedding: an input embedding held as packed rows (a PackedLinear's storage), which for a tied model is
also the LM head: token ids gather and dequantize their rows, float inputs run the packed matmul."""

from __future__ import annotations

import torch

from lowbit.formats import symmetric_zero, unpack
from lowbit.kernels.backends import choose_backend
from lowbit.kernels.packed import PackedLinear
from lowbit.quantizers import QuantizedWeight, WeightSpec, dequantize_weight


class PackedEmbedding(PackedLinear):
    """A [vocab, hidden] table as packed codes and fp16 scales (groups along hidden, as for a head [out, in]).

    `forward(ids)` (integer input) returns the dequantized rows times `scale` (Gemma's sqrt(hidden), applied after
    the lookup in the model's dtype as transformers' scaled embedding does); `forward(x)` (float input) is the
    head's x E^T through the packed kernels, so one module serves both ends of a tied model."""

    def __init__(self, num_embeddings: int, embedding_dim: int, spec: WeightSpec, scale: float | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(embedding_dim, num_embeddings, spec, bias=False)
        self.num_embeddings, self.embedding_dim, self.scale = num_embeddings, embedding_dim, scale
        # no values, only a dtype that follows model.to(): the dtype the looked-up rows are returned in
        self.register_buffer("dtype_tag", torch.empty(0, dtype=dtype), persistent=False)

    @classmethod
    def from_table(cls, q: QuantizedWeight, scale: float | None = None,
                   dtype: torch.dtype = torch.float32) -> PackedEmbedding:
        """Pack a quantized table [vocab, hidden] into a new module."""
        packed = PackedLinear.from_quantized(q)
        m = cls(packed.out_features, packed.in_features, q.spec, scale, dtype)
        m.load_state_dict(packed.state_dict())
        return m

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The dequantized rows [n, hidden] (float32) of the flat token ids."""
        if self._kernel is not None and self._kernel.codes(self) is not None:
            self.release()  # a backend that moved the codes: back to the canonical rows, which are gathered
        spec, sel = self.spec, ids if self.scales.shape[0] > 1 else torch.zeros_like(ids)
        codes = unpack(self.qweight[ids], spec.bits, self.kernel_k)[:, : self.in_features]
        scales = self.scales[sel].float()
        zeros = (torch.full_like(scales, float(symmetric_zero(spec.bits))) if spec.symmetric
                 else unpack(self.qzeros[sel], spec.bits, scales.shape[1]).float())
        return dequantize_weight(codes, scales, zeros, torch.float32, spec.group_len(self.in_features))

    def prepare(self, act_dtype: torch.dtype) -> str:
        """As PackedLinear's, but never a backend that moves the codes out of the rows the lookups gather."""
        name = super().prepare(act_dtype)
        if self._kernel is not None and self._kernel.codes(self) is not None:
            self.release()
            self._kernel = choose_backend(self, act_dtype, "c")
            name = self._kernel.name
        return name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of token ids (integer x), or the tied head's x E^T (float x)."""
        if x.is_floating_point():
            return super().forward(x)
        dtype = self.dtype_tag.dtype
        out = self.rows(x.reshape(-1)).to(dtype).reshape(*x.shape, self.embedding_dim)
        if self.scale is not None:  # transformers: embedding(ids) * embed_scale.to(weight dtype)
            out = out * torch.tensor(self.scale, dtype=torch.float32).to(dtype)
        return out

    def extra_repr(self) -> str:
        scale = "" if self.scale is None else f", scale={self.scale:g}"
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.spec.describe()}{scale}"
