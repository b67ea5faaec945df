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
    reassociating any sum, and each elem adds its n_in terms in order j = 0, 1, ... (rank 4
    takes four j per pass over o: a quarter of the loads and stores of acc and u).
    """
    n_l, n_b, rank1, n_out = uf.shape
    rank, n_in = rank1 - 1, v.shape[2]
    inv_n = np.float32(1.0 / n_in)
    inv_sqrt = np.float32(1.0 / math.sqrt(n_in))
    s = np.empty(n_out, dtype=np.float32)
    for b in range(n_b):
        for layer in range(n_l):
            u, vb, acc, w = uf[layer, b], v[b, layer], out[b, layer], abs_wt[layer]
            acc[:] = 0.0
            j = 0
            if rank == 4:  # the default rank: four j per pass over o, each row's sum in j order
                u0, u1, u2, u3 = u[0], u[1], u[2], u[3]
                while j + 4 <= n_in:
                    a0, a1, a2, a3 = vb[j, 0], vb[j, 1], vb[j, 2], vb[j, 3]
                    b0, b1, b2, b3 = vb[j + 1, 0], vb[j + 1, 1], vb[j + 1, 2], vb[j + 1, 3]
                    c0, c1, c2, c3 = vb[j + 2, 0], vb[j + 2, 1], vb[j + 2, 2], vb[j + 2, 3]
                    d0, d1, d2, d3 = vb[j + 3, 0], vb[j + 3, 1], vb[j + 3, 2], vb[j + 3, 3]
                    w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
                    for o in range(n_out):
                        x0, x1, x2, x3 = u0[o], u1[o], u2[o], u3[o]
                        t = acc[o]
                        t += abs(x0 * a0 + x1 * a1 + x2 * a2 + x3 * a3) * w0[o]
                        t += abs(x0 * b0 + x1 * b1 + x2 * b2 + x3 * b3) * w1[o]
                        t += abs(x0 * c0 + x1 * c1 + x2 * c2 + x3 * c3) * w2[o]
                        t += abs(x0 * d0 + x1 * d1 + x2 * d2 + x3 * d3) * w3[o]
                        acc[o] = t
                    j += 4
            for jr in range(j, n_in):  # other ranks, and what n_in leaves over for rank 4
                c, uk = vb[jr, 0], u[0]
                for o in range(n_out):
                    s[o] = uk[o] * c
                for k in range(1, rank):
                    c, uk = vb[jr, k], u[k]
                    for o in range(n_out):
                        s[o] += uk[o] * c
                wj = w[jr]
                for o in range(n_out):
                    acc[o] += abs(s[o]) * wj[o]
            lw, filt, bias = layer_w[b, layer], u[rank], filt_bias[layer]
            for o in range(n_out):
                acc[o] = lw * (acc[o] * inv_n + (filt[o] * inv_sqrt + bias[o]))


__all__ = ["group_scores"]
