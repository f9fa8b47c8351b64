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

The ``_``-prefixed helpers hold the tile addressing and the loops that several kernels share;
Triton inlines them, so a kernel compiles to the loads and products it would have spelt out.
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
def _load_chunk(ptr, bh, t0, col0, T, D, BT: tl.constexpr, BD: tl.constexpr, ACC: tl.constexpr):
    """Tokens ``t0 .. t0 + BT`` × columns ``col0 .. col0 + BD`` of head ``bh`` of a contiguous
    ``[BH, T, D]`` tensor: a ``[BT, BD]`` tile in ``ACC``, zero past ``T`` and ``D``."""
    return _load_tile(ptr + bh * T * D, t0, col0, T, D, BT, BD, ACC)


@triton.jit
def _store_chunk(ptr, value, bh, t0, col0, T, D, BT: tl.constexpr, BD: tl.constexpr):
    """Write ``value`` ``[BT, BD]`` at tokens ``t0 ..``, columns ``col0 ..`` of head ``bh`` of a
    contiguous ``[BH, T, D]`` tensor (the part inside ``[T, D]``)."""
    _store_tile(ptr + bh * T * D, value, t0, col0, T, D, BT, BD)


@triton.jit
def _load_beta(beta_ptr, bh, t0, T, BT: tl.constexpr, ACC: tl.constexpr):
    """``β`` of head ``bh``'s chunk starting at token ``t0`` (``beta_ptr``: ``[BH, T]``): ``[BT]``, zero
    past ``T``."""
    rows = t0 + tl.arange(0, BT)
    return tl.load(beta_ptr + bh * T + rows, mask=rows < T, other=0.0).to(ACC)


@triton.jit
def _store_dbeta(dbeta_ptr, dbeta, bh, t0, T, BT: tl.constexpr):
    """Write ``dβ`` ``[BT]`` of head ``bh``'s chunk starting at ``t0`` into ``[BH, T]``, up to ``T``."""
    rows = t0 + tl.arange(0, BT)
    tl.store(dbeta_ptr + bh * T + rows, dbeta.to(dbeta_ptr.dtype.element_ty), mask=rows < T)


@triton.jit
def _state_ptr(h_ptr, bh, n, NT, DK: tl.constexpr, DV: tl.constexpr):
    """Pointer to state ``n`` (``[DK, DV]``, row-major) of head ``bh`` in ``[BH, NT + 1, DK, DV]``."""
    return h_ptr + (bh * (NT + 1) + n) * DK * DV


@triton.jit
def _tmat_ptr(tmat_ptr, bh, n, NT, BT: tl.constexpr):
    """Pointer to the ``[BT, BT]`` matrix ``T`` of chunk ``n`` of head ``bh`` in ``[BH, NT, BT, BT]``."""
    return tmat_ptr + (bh * NT + n) * BT * BT


@triton.jit
def _causal_mask(BT: tl.constexpr, STRICT: tl.constexpr):
    """``[BT, BT]`` mask ``i > j`` (``STRICT``) or ``i >= j``."""
    rows = tl.arange(0, BT)[:, None]
    cols = tl.arange(0, BT)[None, :]
    return rows > cols if STRICT else rows >= cols


@triton.jit
def _scores_and_state_product(q_ptr, k_ptr, s_ptr, bh, t0, iv, T, DK, DV, BT, BK, BV, LEFT_IS_Q, ACC, PREC):
    """Over the ``d_dot`` tiles of head ``bh``'s chunk at ``t0``, loading each ``[BT, BK]`` tile of
    ``Q``, ``K`` and ``[BK, BV]`` tile of the state ``s_ptr`` (column tile ``iv``) once: the causal
    scores ``M ⊙ Q Kᵀ`` (``[BT, BT]``) and ``X S`` (``[BT, BV]``) with ``X = Q`` (``LEFT_IS_Q``) or ``K``.

    The two products are issued in the order the output (``X = Q``) and state-backward (``X = K``)
    kernels have always used: Triton picks the MMA warp layout of the loop's dots from that order."""
    scores = tl.zeros([BT, BT], dtype=ACC)
    product = tl.zeros([BT, BV], dtype=ACC)
    for ik in range(tl.cdiv(DK, BK)):
        q = _load_chunk(q_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
        k = _load_chunk(k_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
        s = _load_tile(s_ptr, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
        if LEFT_IS_Q:
            product += tl.dot(q, s, input_precision=PREC)
            scores += tl.dot(q, tl.trans(k), input_precision=PREC)
        else:
            scores += tl.dot(q, tl.trans(k), input_precision=PREC)
            product += tl.dot(k, s, input_precision=PREC)
    return tl.where(_causal_mask(BT, False), scores, 0.0), product


@triton.jit
def _advance_state(
    src_ptr, dst_ptr, a_ptr, x, b_ptr, y, bh, t0, iv, T, DK, DV, BT, BK, BV, SUBTRACT, ACC, PREC
):
    """``dst = src + Aᵀ x`` (``− Bᵀ y`` if ``SUBTRACT``) for column tile ``iv`` of ``[DK, DV]`` states,
    one ``[BK, BV]`` tile at a time: ``A``, ``B`` are head ``bh``'s ``[T, DK]`` rows of the chunk at
    ``t0`` (``[BT, BK]`` tiles), ``x``, ``y`` are ``[BT, BV]``."""
    for ik in range(tl.cdiv(DK, BK)):
        a = _load_chunk(a_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
        s = _load_tile(src_ptr, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
        s += tl.dot(tl.trans(a), x, input_precision=PREC)
        if SUBTRACT:
            b = _load_chunk(b_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
            s -= tl.dot(tl.trans(b), y, input_precision=PREC)
        _store_tile(dst_ptr, s, ik * BK, iv * BV, DK, DV, BK, BV)


@triton.jit
def _store_t_beta_rows(x_ptr, out_ptr, tmat, beta, bh, t0, T, D, BT, BD, ACC, PREC):
    """``out = T diag(β) X`` for head ``bh``'s chunk at ``t0`` of ``[BH, T, D]`` tensors, one
    ``[BT, BD]`` tile at a time (``tmat``: ``[BT, BT]``, ``beta``: ``[BT]``)."""
    for i in range(tl.cdiv(D, BD)):
        x = _load_chunk(x_ptr, bh, t0, i * BD, T, D, BT, BD, ACC)
        out = tl.dot(tmat, x * beta[:, None], input_precision=PREC)
        _store_chunk(out_ptr, out, bh, t0, i * BD, T, D, BT, BD)


@triton.jit
def _add_grad_times_beta_rows(dtmat, x_ptr, g_ptr, beta, bh, t0, T, D, BT, BD, ACC, PREC):
    """``dtmat + G (diag(β) X)ᵀ`` (``[BT, BT]``) for head ``bh``'s chunk at ``t0`` of ``[BH, T, D]``
    tensors ``X`` and its gradient ``G``, one ``[BT, BD]`` tile of each at a time."""
    for i in range(tl.cdiv(D, BD)):
        x = _load_chunk(x_ptr, bh, t0, i * BD, T, D, BT, BD, ACC)
        g = _load_chunk(g_ptr, bh, t0, i * BD, T, D, BT, BD, ACC)
        dtmat += tl.dot(g, tl.trans(x * beta[:, None]), input_precision=PREC)
    return dtmat


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
    t0 = n * BT
    beta = _load_beta(beta_ptr, bh, t0, T, BT, ACC)

    gram = tl.zeros([BT, BT], dtype=ACC)
    for ik in range(tl.cdiv(DK, BK)):
        k = _load_chunk(k_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
        gram += tl.dot(k, tl.trans(k), input_precision=PREC)
    a = tl.where(_causal_mask(BT, True), gram * beta[:, None], 0.0)

    rows = tl.arange(0, BT)
    tmat = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0).to(ACC)
    for i in range(1, BT):
        a_i = tl.sum(tl.where(rows[:, None] == i, a, 0.0), axis=0)
        tmat = tl.where(rows[:, None] == i, tmat - tl.sum(a_i[:, None] * tmat, axis=0)[None, :], tmat)
    _store_tile(_tmat_ptr(tmat_ptr, bh, n, tl.cdiv(T, BT), BT), tmat, 0, 0, BT, BT, BT, BT)

    _store_t_beta_rows(k_ptr, w_ptr, tmat, beta, bh, t0, T, DK, BT, BK, ACC, PREC)
    _store_t_beta_rows(v_ptr, u_ptr, tmat, beta, bh, t0, T, DV, BT, BV, ACC, PREC)


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
    for n in range(NT):
        t0 = n * BT
        h_n = _state_ptr(h_ptr, bh, n, NT, DK, DV)
        U = _load_chunk(v_ptr, bh, t0, iv * BV, T, DV, BT, BV, ACC)
        if IS_DELTA:
            for ik in range(tl.cdiv(DK, BK)):
                w = _load_chunk(w_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
                h = _load_tile(h_n, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
                U -= tl.dot(w, h, input_precision=PREC)
            _store_chunk(U_ptr, U, bh, t0, iv * BV, T, DV, BT, BV)
        h_next = h_n + DK * DV  # h[n + 1] = h[n] + Kᵀ U (no subtracted term: B, y are unused)
        _advance_state(h_n, h_next, k_ptr, U, k_ptr, U, bh, t0, iv, T, DK, DV, BT, BK, BV, False, ACC, PREC)
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
    t0 = n * BT
    h_n = _state_ptr(h_ptr, bh, n, tl.cdiv(T, BT), DK, DV)
    scores, o = _scores_and_state_product(
        q_ptr, k_ptr, h_n, bh, t0, iv, T, DK, DV, BT, BK, BV, True, ACC, PREC
    )
    U = _load_chunk(U_ptr, bh, t0, iv * BV, T, DV, BT, BV, ACC)
    o += tl.dot(scores, U, input_precision=PREC)
    _store_chunk(o_ptr, o, bh, t0, iv * BV, T, DV, BT, BV)


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
    for step in range(NT):
        n = NT - 1 - step
        t0 = n * BT
        dh_next = _state_ptr(dh_ptr, bh, n + 1, NT, DK, DV)
        do = _load_chunk(do_ptr, bh, t0, iv * BV, T, DV, BT, BV, ACC)
        scores, dU = _scores_and_state_product(
            q_ptr, k_ptr, dh_next, bh, t0, iv, T, DK, DV, BT, BK, BV, False, ACC, PREC
        )
        dU += tl.dot(tl.trans(scores), do, input_precision=PREC)
        _store_chunk(dU_ptr, dU, bh, t0, iv * BV, T, DV, BT, BV)
        dh_n = dh_next - DK * DV
        _advance_state(
            dh_next, dh_n, q_ptr, do, w_ptr, dU, bh, t0, iv, T, DK, DV, BT, BK, BV, IS_DELTA, ACC, PREC
        )
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
    h_n = _state_ptr(h_ptr, bh, n, NT, DK, DV)
    dh_next = _state_ptr(dh_ptr, bh, n + 1, NT, DK, DV)
    dscores = tl.zeros([BT, BT], dtype=ACC)
    dq = tl.zeros([BT, BK], dtype=ACC)
    dk = tl.zeros([BT, BK], dtype=ACC)
    dw = tl.zeros([BT, BK], dtype=ACC)
    for iv in range(tl.cdiv(DV, BV)):
        do = _load_chunk(do_ptr, bh, t0, iv * BV, T, DV, BT, BV, ACC)
        U = _load_chunk(U_ptr, bh, t0, iv * BV, T, DV, BT, BV, ACC)
        h = _load_tile(h_n, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
        dh = _load_tile(dh_next, ik * BK, iv * BV, DK, DV, BK, BV, ACC)
        dscores += tl.dot(do, tl.trans(U), input_precision=PREC)
        dq += tl.dot(do, tl.trans(h), input_precision=PREC)
        dk += tl.dot(U, tl.trans(dh), input_precision=PREC)
        if IS_DELTA:
            dU = _load_chunk(dU_ptr, bh, t0, iv * BV, T, DV, BT, BV, ACC)
            dw -= tl.dot(dU, tl.trans(h), input_precision=PREC)
    dscores = tl.where(_causal_mask(BT, False), dscores, 0.0)
    q = _load_chunk(q_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
    k = _load_chunk(k_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
    dq += tl.dot(dscores, k, input_precision=PREC)
    dk += tl.dot(tl.trans(dscores), q, input_precision=PREC)
    _store_chunk(dq_ptr, dq, bh, t0, ik * BK, T, DK, BT, BK)
    _store_chunk(dk_ptr, dk, bh, t0, ik * BK, T, DK, BT, BK)
    if IS_DELTA:
        _store_chunk(dw_ptr, dw, bh, t0, ik * BK, T, DK, BT, BK)


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
    t0 = n * BT
    beta = _load_beta(beta_ptr, bh, t0, T, BT, ACC)
    tmat = _load_tile(_tmat_ptr(tmat_ptr, bh, n, tl.cdiv(T, BT), BT), 0, 0, BT, BT, BT, BT, ACC)

    dtmat = tl.zeros([BT, BT], dtype=ACC)
    dtmat = _add_grad_times_beta_rows(dtmat, k_ptr, dw_ptr, beta, bh, t0, T, DK, BT, BK, ACC, PREC)
    dtmat = _add_grad_times_beta_rows(dtmat, v_ptr, du_ptr, beta, bh, t0, T, DV, BT, BV, ACC, PREC)
    tmat_t = tl.trans(tmat)
    da = -tl.dot(tl.dot(tmat_t, dtmat, input_precision=PREC), tmat_t, input_precision=PREC)
    da = tl.where(_causal_mask(BT, True), da, 0.0)

    dbeta = tl.zeros([BT], dtype=ACC)
    for ik in range(tl.cdiv(DK, BK)):
        k = _load_chunk(k_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
        dw = _load_chunk(dw_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
        dk_beta = tl.dot(tmat_t, dw, input_precision=PREC) + tl.dot(da, k, input_precision=PREC)
        dk = _load_chunk(dk_ptr, bh, t0, ik * BK, T, DK, BT, BK, ACC)
        dk += dk_beta * beta[:, None] + tl.dot(tl.trans(da), k * beta[:, None], input_precision=PREC)
        _store_chunk(dk_ptr, dk, bh, t0, ik * BK, T, DK, BT, BK)
        dbeta += tl.sum(dk_beta * k, axis=1)
    for iv in range(tl.cdiv(DV, BV)):
        v = _load_chunk(v_ptr, bh, t0, iv * BV, T, DV, BT, BV, ACC)
        du = _load_chunk(du_ptr, bh, t0, iv * BV, T, DV, BT, BV, ACC)
        dv_beta = tl.dot(tmat_t, du, input_precision=PREC)
        _store_chunk(dv_ptr, dv_beta * beta[:, None], bh, t0, iv * BV, T, DV, BT, BV)
        dbeta += tl.sum(dv_beta * v, axis=1)
    _store_dbeta(dbeta_ptr, dbeta, bh, t0, T, BT)
