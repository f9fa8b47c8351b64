"""Triton kernels of the chunkwise fast-weight recurrence (sum and delta rule), forward and backward.

Row-vector convention of ``fwp.ops.reference``: per (batch, head) and chunk ``n`` of ``C`` tokens
(rows of ``Q, K: [C, d_dot]``, ``V: [C, d_v]``, ``β: [C]``), with ``S_n: [d_dot, d_v]`` the state
before the chunk and ``M`` the causal mask (``i >= j``):

- sum rule:   ``U = V``
- delta rule (WY/UT form, Yang et al. 2024): ``A = tril(diag(β) K Kᵀ, -1)``, ``T = (I + A)⁻¹``,
  ``w = T diag(β) K``, ``u = T diag(β) V`` and ``U = u − w S_n``, i.e. ``(I + A) U = diag(β)(V − K S_n)``
- ``O = Q S_n + (M ⊙ Q Kᵀ) U`` and ``S_{n+1} = S_n + Kᵀ U``.

Backward, with ``dS_{n+1}`` flowing in from later chunks (``dS_N`` = the final state's gradient):

- ``dU = (M ⊙ Q Kᵀ)ᵀ dO + K dS_{n+1}`` and ``dS_n = dS_{n+1} + Qᵀ dO − wᵀ dU`` (sequential)
- ``dQ = dO S_nᵀ + (M ⊙ dO Uᵀ) K``, ``dK = (M ⊙ dO Uᵀ)ᵀ Q + U dS_{n+1}ᵀ`` (+ the WY part),
  ``dw = −dU S_nᵀ``, ``du = dU``; sum rule: ``dV = dU``
- WY part: ``dT = dw (βK)ᵀ + du (βV)ᵀ``, ``dA = strict_tril(−Tᵀ dT Tᵀ)``,
  ``d(βK) = Tᵀ dw + dA K``, ``dK += β d(βK) + dAᵀ (βK)``, ``dV = β Tᵀ du``,
  ``dβ = rowsum(d(βK) ⊙ K) + rowsum(Tᵀ du ⊙ V)``.

Tensors are contiguous ``[BH, T, D]`` (batch and heads flattened); chunk states ``h, dh`` are
``[BH, NT + 1, d_dot, d_v]`` in the accumulation dtype ``ACC`` (float32, or float64), ``T`` matrices
``[BH, NT, C, C]``. Tiles: ``BT`` tokens (the chunk), ``BK`` columns of ``d_dot``, ``BV`` of ``d_v``;
the state is streamed in ``[BK, BV]`` tiles, so any ``d_dot``/``d_v`` works. The sequential kernels
keep the running state in their own slice of ``h``/``dh`` (one program per ``(d_v tile, BH)``)
and synchronise their threads after each chunk. Every matrix product runs in ``ACC`` with
``tl.dot``'s ``input_precision=PREC``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_tile(ptr, row0, col0, n_rows, n_cols, ROWS: tl.constexpr, COLS: tl.constexpr, ACC: tl.constexpr):
    """The ``[ROWS, COLS]`` tile at ``(row0, col0)`` of a row-major ``[n_rows, n_cols]`` matrix, zero
    outside it."""
    rows = row0 + tl.arange(0, ROWS)
    cols = col0 + tl.arange(0, COLS)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(ACC)


@triton.jit
def _store_tile(ptr, value, row0, col0, n_rows, n_cols, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Write ``value`` ``[ROWS, COLS]`` at ``(row0, col0)`` of a row-major ``[n_rows, n_cols]`` matrix."""
    rows = row0 + tl.arange(0, ROWS)
    cols = col0 + tl.arange(0, COLS)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(ptr + rows[:, None] * n_cols + cols[None, :], value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_beta(beta_ptr, t0, T, BT: tl.constexpr, ACC: tl.constexpr):
    """``β`` of the chunk starting at token ``t0``: ``[BT]``, zero past ``T``."""
    rows = t0 + tl.arange(0, BT)
    return tl.load(beta_ptr + rows, mask=rows < T, other=0.0).to(ACC)


@triton.jit
def _causal_mask(BT: tl.constexpr, STRICT: tl.constexpr):
    """``[BT, BT]`` mask ``i > j`` (``STRICT``) or ``i >= j``."""
    rows = tl.arange(0, BT)[:, None]
    cols = tl.arange(0, BT)[None, :]
    return rows > cols if STRICT else rows >= cols


@triton.jit
def wy_forward_kernel(
    k_ptr,
    v_ptr,
    beta_ptr,
    tmat_ptr,
    w_ptr,
    u_ptr,
    T,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """Delta rule, per chunk (grid ``(NT, BH)``): ``T = (I + A)⁻¹``, ``w = T βK``, ``u = T βV``.

    ``T`` comes from forward substitution over the rows: ``T_i = e_i − Σ_{j<i} A_ij T_j``.
    """
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    NT = tl.cdiv(T, BT)
    t0 = n * BT
    k_ptr += bh * T * DK
    w_ptr += bh * T * DK
    v_ptr += bh * T * DV
    u_ptr += bh * T * DV
    beta = _load_beta(beta_ptr + bh * T, t0, T, BT, ACC)

    gram = tl.zeros([BT, BT], dtype=ACC)
    for ik in range(tl.cdiv(DK, BK)):
        k = _load_tile(k_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
        gram += tl.dot(k, tl.trans(k), input_precision=PREC)
    a = tl.where(_causal_mask(BT, True), gram * beta[:, None], 0.0)

    rows = tl.arange(0, BT)
    tmat = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0).to(ACC)
    for i in range(1, BT):
        a_i = tl.sum(tl.where(rows[:, None] == i, a, 0.0), axis=0)
        tmat = tl.where(rows[:, None] == i, tmat - tl.sum(a_i[:, None] * tmat, axis=0)[None, :], tmat)
    _store_tile(tmat_ptr + (bh * NT + n) * BT * BT, tmat, 0, 0, BT, BT, BT, BT)

    for ik in range(tl.cdiv(DK, BK)):
        k = _load_tile(k_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
        w = tl.dot(tmat, k * beta[:, None], input_precision=PREC)
        _store_tile(w_ptr, w, t0, ik * BK, T, DK, BT, BK)
    for iv in range(tl.cdiv(DV, BV)):
        v = _load_tile(v_ptr, t0, iv * BV, T, DV, BT, BV, ACC)
        u = tl.dot(tmat, v * beta[:, None], input_precision=PREC)
        _store_tile(u_ptr, u, t0, iv * BV, T, DV, BT, BV)


@triton.jit
def state_forward_kernel(
    k_ptr,
    v_ptr,
    w_ptr,
    h_ptr,
    U_ptr,
    T,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    IS_DELTA: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """Chunk states ``h[n + 1] = h[n] + Kᵀ U`` from ``h[0]`` (grid ``(NV, BH)``, sequential over chunks).

    Sum rule: ``U = V`` (``v_ptr``). Delta rule: ``v_ptr`` holds ``u`` and ``U = u − w h[n]`` is
    written to ``U_ptr``.
    """
    iv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    NT = tl.cdiv(T, BT)
    k_ptr += bh * T * DK
    w_ptr += bh * T * DK
    v_ptr += bh * T * DV
    U_ptr += bh * T * DV
    h_ptr += bh * (NT + 1) * DK * DV
    for n in range(NT):
        t0 = n * BT
        h_n = h_ptr + n * DK * DV
        U = _load_tile(v_ptr, t0, iv * BV, T, DV, BT, BV, ACC)
        if IS_DELTA:
            for ik in range(tl.cdiv(DK, BK)):
                w = _load_tile(w_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
                h = _load_tile(h_n, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
                U -= tl.dot(w, h, input_precision=PREC)
            _store_tile(U_ptr, U, t0, iv * BV, T, DV, BT, BV)
        for ik in range(tl.cdiv(DK, BK)):
            k = _load_tile(k_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
            h = _load_tile(h_n, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
            h += tl.dot(tl.trans(k), U, input_precision=PREC)
            _store_tile(h_n + DK * DV, h, ik * BK, iv * BV, DK, DV, BK, BV)
        tl.debug_barrier()


@triton.jit
def output_kernel(
    q_ptr,
    k_ptr,
    U_ptr,
    h_ptr,
    o_ptr,
    T,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """``O = Q h[n] + (M ⊙ Q Kᵀ) U`` per chunk and ``d_v`` tile (grid ``(NV, NT, BH)``)."""
    iv = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    NT = tl.cdiv(T, BT)
    t0 = n * BT
    q_ptr += bh * T * DK
    k_ptr += bh * T * DK
    h_n = h_ptr + (bh * (NT + 1) + n) * DK * DV
    o = tl.zeros([BT, BV], dtype=ACC)
    scores = tl.zeros([BT, BT], dtype=ACC)
    for ik in range(tl.cdiv(DK, BK)):
        q = _load_tile(q_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
        k = _load_tile(k_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
        h = _load_tile(h_n, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
        o += tl.dot(q, h, input_precision=PREC)
        scores += tl.dot(q, tl.trans(k), input_precision=PREC)
    scores = tl.where(_causal_mask(BT, False), scores, 0.0)
    U = _load_tile(U_ptr + bh * T * DV, t0, iv * BV, T, DV, BT, BV, ACC)
    o += tl.dot(scores, U, input_precision=PREC)
    _store_tile(o_ptr + bh * T * DV, o, t0, iv * BV, T, DV, BT, BV)


@triton.jit
def state_backward_kernel(
    q_ptr,
    k_ptr,
    w_ptr,
    do_ptr,
    dh_ptr,
    dU_ptr,
    T,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    IS_DELTA: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """State gradients from ``dh[NT]`` back to ``dh[0]`` (grid ``(NV, BH)``, reverse over chunks):
    ``dU = (M ⊙ Q Kᵀ)ᵀ dO + K dh[n + 1]`` (written to ``dU_ptr``) and
    ``dh[n] = dh[n + 1] + Qᵀ dO`` (``− wᵀ dU`` for the delta rule).
    """
    iv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    NT = tl.cdiv(T, BT)
    q_ptr += bh * T * DK
    k_ptr += bh * T * DK
    w_ptr += bh * T * DK
    do_ptr += bh * T * DV
    dU_ptr += bh * T * DV
    dh_ptr += bh * (NT + 1) * DK * DV
    for step in range(NT):
        n = NT - 1 - step
        t0 = n * BT
        dh_next = dh_ptr + (n + 1) * DK * DV
        do = _load_tile(do_ptr, t0, iv * BV, T, DV, BT, BV, ACC)
        scores = tl.zeros([BT, BT], dtype=ACC)
        dU = tl.zeros([BT, BV], dtype=ACC)
        for ik in range(tl.cdiv(DK, BK)):
            q = _load_tile(q_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
            k = _load_tile(k_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
            dh = _load_tile(dh_next, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
            scores += tl.dot(q, tl.trans(k), input_precision=PREC)
            dU += tl.dot(k, dh, input_precision=PREC)
        scores = tl.where(_causal_mask(BT, False), scores, 0.0)
        dU += tl.dot(tl.trans(scores), do, input_precision=PREC)
        _store_tile(dU_ptr, dU, t0, iv * BV, T, DV, BT, BV)
        for ik in range(tl.cdiv(DK, BK)):
            q = _load_tile(q_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
            dh = _load_tile(dh_next, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
            dh += tl.dot(tl.trans(q), do, input_precision=PREC)
            if IS_DELTA:
                w = _load_tile(w_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
                dh -= tl.dot(tl.trans(w), dU, input_precision=PREC)
            _store_tile(dh_next - DK * DV, dh, ik * BK, iv * BV, DK, DV, BK, BV)
        tl.debug_barrier()


@triton.jit
def qk_backward_kernel(
    q_ptr,
    k_ptr,
    U_ptr,
    h_ptr,
    dh_ptr,
    do_ptr,
    dU_ptr,
    dq_ptr,
    dk_ptr,
    dw_ptr,
    T,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    IS_DELTA: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """Per chunk and ``d_dot`` tile (grid ``(NK, NT, BH)``): ``dQ = dO h[n]ᵀ + (M ⊙ dO Uᵀ) K``,
    ``dK = (M ⊙ dO Uᵀ)ᵀ Q + U dh[n + 1]ᵀ`` and, for the delta rule, ``dw = −dU h[n]ᵀ``."""
    ik = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    NT = tl.cdiv(T, BT)
    t0 = n * BT
    U_ptr += bh * T * DV
    do_ptr += bh * T * DV
    dU_ptr += bh * T * DV
    h_n = h_ptr + (bh * (NT + 1) + n) * DK * DV
    dh_next = dh_ptr + (bh * (NT + 1) + n + 1) * DK * DV
    dscores = tl.zeros([BT, BT], dtype=ACC)
    dq = tl.zeros([BT, BK], dtype=ACC)
    dk = tl.zeros([BT, BK], dtype=ACC)
    dw = tl.zeros([BT, BK], dtype=ACC)
    for iv in range(tl.cdiv(DV, BV)):
        do = _load_tile(do_ptr, t0, iv * BV, T, DV, BT, BV, ACC)
        U = _load_tile(U_ptr, t0, iv * BV, T, DV, BT, BV, ACC)
        h = _load_tile(h_n, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
        dh = _load_tile(dh_next, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
        dscores += tl.dot(do, tl.trans(U), input_precision=PREC)
        dq += tl.dot(do, tl.trans(h), input_precision=PREC)
        dk += tl.dot(U, tl.trans(dh), input_precision=PREC)
        if IS_DELTA:
            dU = _load_tile(dU_ptr, t0, iv * BV, T, DV, BT, BV, ACC)
            dw -= tl.dot(dU, tl.trans(h), input_precision=PREC)
    dscores = tl.where(_causal_mask(BT, False), dscores, 0.0)
    q = _load_tile(q_ptr + bh * T * DK, t0, ik * BK, T, DK, BT, BK, ACC)
    k = _load_tile(k_ptr + bh * T * DK, t0, ik * BK, T, DK, BT, BK, ACC)
    dq += tl.dot(dscores, k, input_precision=PREC)
    dk += tl.dot(tl.trans(dscores), q, input_precision=PREC)
    _store_tile(dq_ptr + bh * T * DK, dq, t0, ik * BK, T, DK, BT, BK)
    _store_tile(dk_ptr + bh * T * DK, dk, t0, ik * BK, T, DK, BT, BK)
    if IS_DELTA:
        _store_tile(dw_ptr + bh * T * DK, dw, t0, ik * BK, T, DK, BT, BK)


@triton.jit
def wy_backward_kernel(
    k_ptr,
    v_ptr,
    beta_ptr,
    tmat_ptr,
    dw_ptr,
    du_ptr,
    dk_ptr,
    dv_ptr,
    dbeta_ptr,
    T,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """Delta rule, per chunk (grid ``(NT, BH)``): back through ``w = T βK``, ``u = T βV``; adds the
    WY part to ``dk`` in place and writes ``dv`` and ``dβ``."""
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    NT = tl.cdiv(T, BT)
    t0 = n * BT
    k_ptr += bh * T * DK
    dw_ptr += bh * T * DK
    dk_ptr += bh * T * DK
    v_ptr += bh * T * DV
    du_ptr += bh * T * DV
    dv_ptr += bh * T * DV
    beta = _load_beta(beta_ptr + bh * T, t0, T, BT, ACC)
    tmat = _load_tile(tmat_ptr + (bh * NT + n) * BT * BT, 0, 0, BT, BT, BT, BT, ACC)

    dtmat = tl.zeros([BT, BT], dtype=ACC)
    for ik in range(tl.cdiv(DK, BK)):
        k = _load_tile(k_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
        dw = _load_tile(dw_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
        dtmat += tl.dot(dw, tl.trans(k * beta[:, None]), input_precision=PREC)
    for iv in range(tl.cdiv(DV, BV)):
        v = _load_tile(v_ptr, t0, iv * BV, T, DV, BT, BV, ACC)
        du = _load_tile(du_ptr, t0, iv * BV, T, DV, BT, BV, ACC)
        dtmat += tl.dot(du, tl.trans(v * beta[:, None]), input_precision=PREC)
    tmat_t = tl.trans(tmat)
    da = -tl.dot(tl.dot(tmat_t, dtmat, input_precision=PREC), tmat_t, input_precision=PREC)
    da = tl.where(_causal_mask(BT, True), da, 0.0)

    dbeta = tl.zeros([BT], dtype=ACC)
    for ik in range(tl.cdiv(DK, BK)):
        k = _load_tile(k_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
        dw = _load_tile(dw_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
        dk_beta = tl.dot(tmat_t, dw, input_precision=PREC) + tl.dot(da, k, input_precision=PREC)
        dk = _load_tile(dk_ptr, t0, ik * BK, T, DK, BT, BK, ACC)
        dk += dk_beta * beta[:, None] + tl.dot(tl.trans(da), k * beta[:, None], input_precision=PREC)
        _store_tile(dk_ptr, dk, t0, ik * BK, T, DK, BT, BK)
        dbeta += tl.sum(dk_beta * k, axis=1)
    for iv in range(tl.cdiv(DV, BV)):
        v = _load_tile(v_ptr, t0, iv * BV, T, DV, BT, BV, ACC)
        du = _load_tile(du_ptr, t0, iv * BV, T, DV, BT, BV, ACC)
        dv_beta = tl.dot(tmat_t, du, input_precision=PREC)
        _store_tile(dv_ptr, dv_beta * beta[:, None], t0, iv * BV, T, DV, BT, BV)
        dbeta += tl.sum(dv_beta * v, axis=1)
    rows = t0 + tl.arange(0, BT)
    tl.store(dbeta_ptr + bh * T + rows, dbeta.to(dbeta_ptr.dtype.element_ty), mask=rows < T)
