"""The hypernetwork's element scores as one fused loop (no [B, n_out, n_in] tensors)."""

from __future__ import annotations

import math

import numpy as np

from chord.jit import compiled


@compiled
def group_scores(  # pragma: no cover - compiled by numba; tests compare it with torch's path
    uf: np.ndarray,
    v: np.ndarray,
    abs_wt: np.ndarray,
    filt_bias: np.ndarray,
    layer_w: np.ndarray,
    out: np.ndarray,
) -> None:
    """out[b, l] = layer_w[b, l] * (elem + filt) for L layers of one shape (float32 arrays).

    uf: [L, B, r + 1, n_out], rows 0..r-1 = (W A(z))^T and row r = W f(z) (one GEMM per layer,
    done by the caller); v: [B, L, n_in, r] the element head V(z); abs_wt: [L, n_in, n_out]
    |W|^T; filt_bias: [L, n_out]; layer_w: [B, L]; out: [B, L, n_out], written.
    elem[o] = mean_j |(u[o] . v[j]) W[o, j]| and filt[o] = W f / sqrt(n_in) + filt_bias[o],
    HyperNetwork.channel_scores's formulas. The loop runs over j outside and o inside, so the
    [n_out, n_in] score matrix is never stored, the inner loop vectorises over o without
    reassociating any sum, and each elem adds its n_in terms in order j = 0, 1, ...
    """
    n_l, n_b, rank1, n_out = uf.shape
    rank, n_in = rank1 - 1, v.shape[2]
    inv_n = np.float32(1.0 / n_in)
    inv_sqrt = np.float32(1.0 / math.sqrt(n_in))
    s = np.empty(n_out, dtype=np.float32)
    for b in range(n_b):
        for layer in range(n_l):
            u, vb, acc = uf[layer, b], v[b, layer], out[b, layer]
            acc[:] = 0.0
            for j in range(n_in):
                wj = abs_wt[layer, j]
                if rank == 4:  # the default rank: one pass over o
                    c0, c1, c2, c3 = vb[j, 0], vb[j, 1], vb[j, 2], vb[j, 3]
                    u0, u1, u2, u3 = u[0], u[1], u[2], u[3]
                    for o in range(n_out):
                        acc[o] += abs(u0[o] * c0 + u1[o] * c1 + u2[o] * c2 + u3[o] * c3) * wj[o]
                else:
                    c, uk = vb[j, 0], u[0]
                    for o in range(n_out):
                        s[o] = uk[o] * c
                    for k in range(1, rank):
                        c, uk = vb[j, k], u[k]
                        for o in range(n_out):
                            s[o] += uk[o] * c
                    for o in range(n_out):
                        acc[o] += abs(s[o]) * wj[o]
            lw, filt, bias = layer_w[b, layer], u[rank], filt_bias[layer]
            for o in range(n_out):
                acc[o] = lw * (acc[o] * inv_n + (filt[o] * inv_sqrt + bias[o]))


__all__ = ["group_scores"]
