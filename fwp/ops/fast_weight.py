"""One entry point for the maths of a fast-weight layer: causal, bidirectional and read-only use.

``fast_weight_attention`` takes projected heads ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``, β
``[B, H, T]`` (rules that use it) and, in this order:

1. starts a sequence (``feature_map.start_sequence()``, e.g. FAVOR+'s redraw) when a write has no state;
2. maps keys and queries, ``φ(x)`` then the ``sum`` normalisation, in the compute dtype (float32, or
   float64 when any input is float64) with autocast off;
3. zeroes padded keys (and their β), so that they write nothing, and their log-decay (``α = 1``), so
   that they do not shrink the memory;
4. computes the read-out numerator ``φ(q_t) W_t`` and the memory after the call by mode:
   ``causal`` — the recurrence of ``rule`` on a backend (``denominator_write`` rescales keys and β first),
   gated by ``α_t = exp(log_decay_t)`` when ``log_decay`` is given (``fwp.ops.dispatch.GATED_BACKENDS``);
   ``bidirectional`` — ``W = W_0 + Σ_j φ(k_j)ᵀ v_j`` read by every query (order-free rules only);
   ``read`` — the memory of ``state`` is read, nothing is written;
5. divides by the denominator ``φ(q_t) · z_t + ε`` when it is on: here, once, for every mode and backend.

Packed sequences (``cu_seqlens``, ``fwp.ops.packing``): ``N`` sequences laid end to end in ``[1, H, T, ·]``
are feature-mapped packed, gathered into padded batches ``[N_g, H, T_g, ·]`` of sequences of similar
lengths (``fwp.ops.packed_layout``) whose padding is a ``key_padding_mask`` at the end of each row
(padded keys write nothing and do not decay, so every final memory is exact), run through the steps
above, and gathered back.

Backends (``fwp.ops.dispatch``) compute only the numerator and ``W``; ``z`` is the entry point's.
``fast_weight_recurrence`` is the causal mode on keys and queries that are already feature-mapped.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor

from fwp.ops.dispatch import BACKENDS, compute_dtype, load_backend, resolve_backend, resolve_gated_backend
from fwp.ops.feature_maps import FeatureMap
from fwp.ops.gated_chunk import gated_causal_denominator
from fwp.ops.gated_reference import validate_gated_options
from fwp.ops.normalization import Normalization, causal_denominator, normalized_write, sum_normalize
from fwp.ops.packed_layout import PackedLayout, packed_layouts
from fwp.ops.rules import RULES, get_rule
from fwp.ops.state import FastWeightState
from fwp.ops.validation import (
    check_finite_enabled,
    require_at_least,
    require_choice,
    require_float,
    validate_recurrence_inputs,
    validate_state,
)

Mode = Literal["causal", "bidirectional", "read"]
MODES = ("causal", "bidirectional", "read")
NO_NORMALIZATION = Normalization()


def fast_weight_attention(
    q: Tensor,
    k: Tensor | None = None,
    v: Tensor | None = None,
    beta: Tensor | None = None,
    *,
    log_decay: Tensor | None = None,
    feature_map: FeatureMap | None = None,
    rule: str = "sum",
    normalization: Normalization = NO_NORMALIZATION,
    mode: Mode = "causal",
    state: FastWeightState | None = None,
    key_padding_mask: Tensor | None = None,
    backend: str = "auto",
    chunk_size: int = 64,
    check_finite: bool | None = None,
    cu_seqlens: Tensor | None = None,
    query_cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, FastWeightState]:
    """A fast-weight layer's read-out and memory (module docstring).

    q ``[B, H, T_q, d_k]``; k ``[B, H, T, d_k]``, v ``[B, H, T, d_v]`` (None in ``read`` mode); beta
    ``[B, H, T]``; log_decay ``[B, H, T]`` (≤ 0, causal mode): the gated rules, ``W_t = α_t W_{t−1} + …``
    with ``α_t = exp(log_decay_t)`` (docs/ops.md, "Gated rules"); feature_map: φ (None: q and k are
    already features); state: the memory to continue
    (``causal``), add to (``bidirectional``) or read (``read``, required), ``W`` ``[B, H, d_dot, d_v]``
    and ``z`` ``[B, H, d_dot]`` exactly when the denominator is on; key_padding_mask ``[B, T]`` (True =
    padding). Returns ``y`` ``[B, H, T_q, d_v]`` in ``v``'s dtype (``q``'s when reading) and the memory
    in the compute dtype.

    cu_seqlens ``[N + 1]`` (int, ``0 = c_0 < … < c_N = T``; ``B = 1``; causal and bidirectional modes,
    without key_padding_mask): the ``T`` positions hold ``N`` packed sequences, each run as if alone,
    from its own memory: ``state`` then holds ``N`` memories (``W`` ``[N, H, d_dot, d_v]``), and so does
    the returned one. query_cu_seqlens (bidirectional only): the queries' own offsets when ``T_q ≠ T``
    (cross-attention; the same ``N``); default ``cu_seqlens``.
    """
    require_choice("mode", mode, MODES)
    require_choice("backend", backend, ("auto", *BACKENDS))
    require_at_least("chunk_size", chunk_size, 1)
    _check_mode(mode, rule, normalization, k, v, beta, state, key_padding_mask, log_decay)
    for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta), ("log_decay", log_decay)):
        if x is not None:
            require_float(name, x)
    if cu_seqlens is not None or query_cu_seqlens is not None:
        return _packed(
            q,
            k,
            v,
            beta,
            log_decay,
            _packed_layouts(q, k, mode, state, key_padding_mask, cu_seqlens, query_cu_seqlens),
            feature_map=feature_map,
            normalization=normalization,
            mode=mode,
            state=state,
            options={
                "rule": rule,
                "backend": backend,
                "chunk_size": chunk_size,
                "check_finite": check_finite,
            },
        )
    dtype = state.W.dtype if mode == "read" else compute_dtype(q, k, v, beta, log_decay)
    with autocast_off(q.device.type):
        if mode != "read" and state is None and feature_map is not None:
            feature_map.start_sequence()
        if mode == "read":
            phi_q = features(q, feature_map, normalization, dtype)
            numerator, memory, den = _read(phi_q, state, normalization)
        else:
            phi_q, phi_k = _query_and_key_features(q, k, feature_map, normalization, dtype)
            phi_k, beta, log_decay = _without_padding(
                phi_k, optional_cast(beta, dtype), optional_cast(log_decay, dtype), key_padding_mask
            )
            if mode == "bidirectional":
                numerator, memory, den = _bidirectional(phi_q, phi_k, cast(v, dtype), state, normalization)
            else:
                numerator, memory, den = _causal(
                    phi_q,
                    phi_k,
                    cast(v, dtype),
                    beta,
                    log_decay,
                    state,
                    rule=rule,
                    normalization=normalization,
                    key_padding_mask=key_padding_mask,
                    backend=backend,
                    chunk_size=chunk_size,
                    check_finite=check_finite_enabled(check_finite),
                )
        y = numerator if den is None else numerator / (den.unsqueeze(-1) + normalization.eps)
    return cast(y, q.dtype if v is None else v.dtype), memory


def fast_weight_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None = None,
    *,
    log_decay: Tensor | None = None,
    rule: str = "sum",
    denominator: bool = False,
    eps: float = 1e-6,
    initial_state: FastWeightState | None = None,
    backend: str = "auto",
    chunk_size: int = 64,
    check_finite: bool | None = None,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, FastWeightState]:
    """The causal fast-weight recurrence of docs/design.md §1 over feature-mapped keys and queries.

    q, k: ``[B, H, T, d_dot]``; v: ``[B, H, T, d_v]``; beta: ``[B, H, T]`` (``rule='delta'`` only);
    log_decay: ``[B, H, T]`` (≤ 0; the gated rules, or None); initial_state: ``W_0``
    ``[B, H, d_dot, d_v]`` (+ ``z_0`` with ``denominator``), zeros if None; cu_seqlens ``[N + 1]``:
    ``N`` packed sequences (``B = 1``, ``initial_state`` ``[N, …]``; ``fast_weight_attention``).
    Returns ``y``: ``[B, H, T, d_v]`` in ``v``'s dtype and the final state in the compute dtype
    (float32, or float64 for float64 inputs), with autocast off inside.
    """
    return fast_weight_attention(
        q,
        k,
        v,
        beta,
        log_decay=log_decay,
        rule=rule,
        normalization=Normalization(denominator=denominator, eps=eps),
        state=initial_state,
        backend=backend,
        chunk_size=chunk_size,
        check_finite=check_finite,
        cu_seqlens=cu_seqlens,
    )


def cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype``, without a call when it already is (a decoding step makes a dozen such calls)."""
    return x if x.dtype == dtype else x.to(dtype)


def optional_cast(x: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``cast`` of a tensor that may be absent."""
    return None if x is None else cast(x, dtype)


def autocast_off(device_type: str) -> AbstractContextManager:
    """A context with autocast off on ``device_type``; nothing to enter when it is off already."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


def features(
    x: Tensor, feature_map: FeatureMap | None, normalization: Normalization, dtype: torch.dtype
) -> Tensor:
    """``φ(x)``, sum-normalised when that normalisation is on: ``[B, H, T, d_k]`` → ``[B, H, T, d_dot]``
    in ``dtype`` (call with autocast off)."""
    phi = cast(x, dtype)
    if feature_map is not None:
        phi = feature_map(phi)
    return sum_normalize(phi, normalization.sum_eps) if normalization.sum else phi


def _query_and_key_features(
    q: Tensor, k: Tensor, feature_map: FeatureMap | None, normalization: Normalization, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``features`` of q and k; of both in one pass when each is one position (a decoding step)."""
    if q.dim() == 4 and q.shape == k.shape and q.shape[2] == 1:
        phi_q, phi_k = features(torch.cat([q, k], dim=2), feature_map, normalization, dtype).split(1, dim=2)
        return phi_q, phi_k
    return features(q, feature_map, normalization, dtype), features(k, feature_map, normalization, dtype)


def _check_mode(
    mode: str,
    rule: str,
    normalization: Normalization,
    k: Tensor | None,
    v: Tensor | None,
    beta: Tensor | None,
    state: FastWeightState | None,
    key_padding_mask: Tensor | None,
    log_decay: Tensor | None,
) -> None:
    """A ValueError naming the argument when ``mode`` does not fit the rule or the arguments given (the
    causal mode's shapes are checked by ``validate_recurrence_inputs``, ``log_decay``'s by
    ``validate_log_decay``)."""
    entry = get_rule(rule)
    if mode == "read":
        given = {"k": k, "v": v, "beta": beta, "key_padding_mask": key_padding_mask, "log_decay": log_decay}
        extra = [name for name, x in given.items() if x is not None]
        if state is None or extra:
            raise ValueError(
                "mode='read' reads the memory of a state without writing: give q and state only, got "
                + ("state=None" if state is None else ", ".join(extra))
            )
        return
    if k is None or v is None:
        raise ValueError(f"mode={mode!r} writes k and v into the memory, got k or v None")
    if log_decay is not None:
        validate_gated_options(mode=mode, denominator_write=normalization.denominator_write)
    if mode == "bidirectional":
        order_free = [name for name, candidate in RULES.items() if candidate.order_free]
        if not entry.order_free:
            raise ValueError(
                f"mode='bidirectional' (causal=False) needs a rule whose memory does not depend on the "
                f"order of the writes ({', '.join(order_free)}), got rule={rule!r}"
            )
        if beta is not None:
            raise ValueError(f"beta is not used by rule={rule!r}, got a beta tensor")
    if normalization.denominator_write and (mode != "causal" or rule != "delta"):
        raise ValueError(f"denominator_write needs the causal delta rule, got rule={rule!r}, mode={mode!r}")


def _packed_layouts(
    q: Tensor,
    k: Tensor | None,
    mode: str,
    state: FastWeightState | None,
    key_padding_mask: Tensor | None,
    cu_seqlens: Tensor | None,
    query_cu_seqlens: Tensor | None,
) -> tuple[PackedLayout, PackedLayout]:
    """The layouts of the packed keys and queries (``packed_layouts``); a ValueError naming
    ``cu_seqlens`` (or ``query_cu_seqlens``) when packing does not fit the mode or the state."""
    if mode == "read" or k is None:
        raise ValueError("cu_seqlens packs the sequences a call writes: mode='read' does not take it")
    if cu_seqlens is None:
        raise ValueError("query_cu_seqlens needs cu_seqlens (the offsets of the packed keys)")
    if query_cu_seqlens is not None and mode != "bidirectional":
        raise ValueError(
            f"query_cu_seqlens is for mode='bidirectional' (queries read other sequences' keys), got "
            f"mode={mode!r}: causal queries are the keys' positions, packed by cu_seqlens"
        )
    keys, queries = packed_layouts(q, k, cu_seqlens, query_cu_seqlens, key_padding_mask)
    if state is not None and state.W.shape[0] != keys.sequences:
        raise ValueError(
            f"with cu_seqlens the state holds one memory per packed sequence: state.W must be "
            f"[N, H, d_dot, d_v] with N={keys.sequences}, got {tuple(state.W.shape)}"
        )
    return keys, queries


def _packed(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    log_decay: Tensor | None,
    layouts: tuple[PackedLayout, PackedLayout],
    *,
    feature_map: FeatureMap | None,
    normalization: Normalization,
    mode: Mode,
    state: FastWeightState | None,
    options: dict,
) -> tuple[Tensor, FastWeightState]:
    """Packed sequences (``layouts``: keys', queries') through padded batches: ``φ`` and the ``sum``
    normalisation on the packed positions, then ``[1, H, T, ·]`` → one ``[N_g, H, T_g, ·]`` per group
    of similar lengths (``fwp.ops.packed_layout``) with its padding as ``key_padding_mask``, one batched
    call per group, and the read-outs packed back, the memories put back in sequence order."""
    keys, queries = layouts
    dtype = compute_dtype(q, k, v, beta, log_decay)
    with autocast_off(q.device.type):
        if state is None and feature_map is not None:
            feature_map.start_sequence()
        phi_q, phi_k = _query_and_key_features(q, k, feature_map, normalization, dtype)
    groups = len(keys.groups)
    absent = [None] * groups
    per_group = zip(
        queries.unpack(phi_q),
        keys.unpack(phi_k),
        keys.unpack(v),
        absent if beta is None else keys.unpack(beta),
        absent if log_decay is None else keys.unpack(log_decay),
        absent if state is None else keys.split_rows(state.W),
        absent if state is None or state.z is None else keys.split_rows(state.z),
        keys.paddings,
        strict=True,
    )
    outputs, memories = [], []
    for q_g, k_g, v_g, beta_g, log_decay_g, W_g, z_g, padding in per_group:
        y, memory = fast_weight_attention(
            q_g,
            k_g,
            v_g,
            beta_g,
            log_decay=log_decay_g,
            normalization=replace(normalization, sum=False),
            mode=mode,
            state=None if W_g is None else FastWeightState(W_g, z_g),
            key_padding_mask=padding,
            **options,
        )
        outputs.append(y)
        memories.append(memory)
    z = None if memories[0].z is None else keys.merge_rows([memory.z for memory in memories])
    return queries.pack(outputs), FastWeightState(keys.merge_rows([memory.W for memory in memories]), z)


def _without_padding(
    phi_k: Tensor, beta: Tensor | None, log_decay: Tensor | None, key_padding_mask: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Padded keys (key_padding_mask ``[B, T]`` True) and their β set to zero: they write nothing; and
    their log-decay set to zero (``α = 1``): they do not shrink the memory either."""
    if key_padding_mask is None:
        return phi_k, beta, log_decay
    keep = (~key_padding_mask)[:, None, :].to(phi_k.dtype)
    return (
        phi_k * keep.unsqueeze(-1),
        None if beta is None else beta * keep,
        None if log_decay is None else log_decay * keep,
    )


def _read(
    phi_q: Tensor, state: FastWeightState, normalization: Normalization
) -> tuple[Tensor, FastWeightState, Tensor | None]:
    """``φ(q) W`` of a memory and ``φ(q) · z`` when the denominator is on."""
    B, H, _, d_dot = phi_q.shape
    validate_state(state, B, H, d_dot, state.W.shape[-1], denominator=normalization.denominator)
    return _read_memory(phi_q, state.to(phi_q.dtype), normalization)


def _read_memory(
    phi_q: Tensor, memory: FastWeightState, normalization: Normalization
) -> tuple[Tensor, FastWeightState, Tensor | None]:
    den = torch.einsum("bhtd,bhd->bht", phi_q, memory.z) if normalization.denominator else None
    return torch.einsum("bhtd,bhdv->bhtv", phi_q, memory.W), memory, den


def _bidirectional(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, state: FastWeightState | None, normalization: Normalization
) -> tuple[Tensor, FastWeightState, Tensor | None]:
    """Every query reads ``W = W_0 + Σ_j φ(k_j)ᵀ v_j`` (and ``z = z_0 + Σ_j φ(k_j)``)."""
    B, H, _, d_dot = phi_q.shape
    if state is not None:
        validate_state(state, B, H, d_dot, v.shape[-1], denominator=normalization.denominator)
    W = torch.einsum("bhsd,bhsv->bhdv", phi_k, v)
    z = phi_k.sum(dim=2) if normalization.denominator else None
    if state is not None:
        W = W + state.W.to(W.dtype)
        z = None if z is None else z + state.z.to(z.dtype)
    return _read_memory(phi_q, FastWeightState(W, z), normalization)


def _causal(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    log_decay: Tensor | None,
    state: FastWeightState | None,
    *,
    rule: str,
    normalization: Normalization,
    key_padding_mask: Tensor | None,
    backend: str,
    chunk_size: int,
    check_finite: bool,
) -> tuple[Tensor, FastWeightState, Tensor | None]:
    """The recurrence on a backend: ``φ(q_t) W_t``, ``W_T`` and, with the denominator, ``φ(q_t) · z_t``
    and ``z_T`` (the gated backends and the gated denominator when ``log_decay`` is given)."""
    validate_recurrence_inputs(
        phi_q,
        phi_k,
        v,
        beta,
        state,
        rule=rule,
        denominator=normalization.denominator,
        check_finite=check_finite,
    )
    B, H, _, d_dot = phi_q.shape
    W0 = cast(state.W, phi_q.dtype) if state is not None else phi_q.new_zeros(B, H, d_dot, v.shape[-1])
    z0 = None if state is None or state.z is None else cast(state.z, phi_q.dtype)
    keys = phi_k
    if normalization.denominator_write:
        keys, beta = normalized_write(phi_k, beta, z0, key_padding_mask, normalization.write_eps)
    if log_decay is not None:
        run = load_backend(resolve_gated_backend(backend, phi_q), gated=True)
        numerator, written = run(phi_q, keys, v, beta, log_decay, FastWeightState(W0), chunk_size=chunk_size)
    else:
        run = load_backend(resolve_backend(backend, phi_q))
        numerator, written = run(phi_q, keys, v, beta, FastWeightState(W0), rule=rule, chunk_size=chunk_size)
    if not normalization.denominator:
        return numerator, written, None
    if log_decay is not None:
        den, z = gated_causal_denominator(phi_q, phi_k, log_decay, z0, backend=run, chunk_size=chunk_size)
    else:
        den, z = causal_denominator(phi_q, phi_k, z0)
    return numerator, FastWeightState(written.W, z), den
