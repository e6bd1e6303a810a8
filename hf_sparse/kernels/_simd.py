"""SIMD loops Numba cannot express by itself, written as LLVM IR through Numba intrinsics.

*A SELL-8 slice's 8 row sums* (the decode kernel).
Numba (through LLVM) vectorises loops over contiguous data, but not the sparse mat-vec's gather from the
activation: written as 8 scalar running sums (`hf_sparse.kernels._numba_rows` before 2026-12-02), a SELL-8 step is
8 column-step loads, 8 adds, 8 activation loads, 8 value loads and 8 scalar multiply-adds. `slice_sums` emits the
step as one 8-byte load of the column steps, one vector add into the 8 running columns, 8 scalar activation loads
inserted into one vector, one 32-byte value load and one vector multiply-add, four steps at a time into four sums.
It is plain LLVM vector IR, so it compiles on any CPU. On this project's AMD EPYC (Zen 3) machine it was 1.2-1.45x
faster than the same loop with an AVX2 ``vgatherdps`` per step (24 GPT-2-small-shaped layers at 90%, one thread,
measured side by side 2026-12-02), which itself was 20-25% faster than the scalar loop.

*One output row of a token panel with its sums in registers* (the prefill / encoder CSR kernel). Numba keeps a
loop's running sums in registers only when they are scalars, so the panel kernel used to add every group of
non-zeros into the output row in memory, a load and a store per 8 products. `panel_row_64` and its narrower
siblings keep 8 (4, 2, 1) 8-lane sums in registers for the whole row and stream the row's non-zeros through
broadcast-multiply-adds. This is plain LLVM vector IR, which LLVM lowers on any CPU (AVX2 FMAs here).
"""

from __future__ import annotations

from typing import Callable

import numba
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def _emit_loop(builder: ir.IRBuilder, name: str, start: ir.Value, stop: ir.Value, step: int, initial: list,
               body: Callable[[ir.Value, list], list]) -> list:
    """Emits ``for i in range(start, stop, step)`` (i64 bounds) carrying the ``initial`` values in phi nodes.

    ``body(i, values)`` builds one iteration at the builder's position and returns the updated values; the builder
    is left after the loop, and the values there are returned.
    """
    entry = builder.block
    head = builder.append_basic_block(f"{name}.head")
    loop = builder.append_basic_block(f"{name}.body")
    done = builder.append_basic_block(f"{name}.done")
    builder.branch(head)
    builder.position_at_end(head)
    counter = builder.phi(start.type)
    carried = [builder.phi(value.type) for value in initial]
    counter.add_incoming(start, entry)
    for phi, value in zip(carried, initial):
        phi.add_incoming(value, entry)
    builder.cbranch(builder.icmp_signed("<", counter, stop), loop, done)
    builder.position_at_end(loop)
    updated = body(counter, carried)
    last = builder.block
    counter.add_incoming(builder.add(counter, ir.Constant(start.type, step)), last)
    for phi, value in zip(carried, updated):
        phi.add_incoming(value, last)
    builder.branch(head)
    builder.position_at_end(done)
    return carried


#: SELL-8 steps `slice_sums` does per loop iteration, each into its own sums: independent multiply-add chains keep
#: the core busy while the activation loads of the next steps are in flight (4 was ~8% faster than 1 on the 24
#: GPT-2-small-shaped layers, measured side by side).
SELL_UNROLL = 4


@intrinsic
def _slice_loop(typingctx, data, deltas, x, q0, q1, sums):  # pragma: no cover - runs at compile time
    """``sums[l] = sum over entries q0 + l, q0 + 8 + l, ... < q1 of data[q] * x[col]``, ``col`` the running sum of
    ``deltas`` of lane ``l`` (see `hf_sparse.kernels._numba_rows.sell_pack`)."""
    arrays = {"data": (data, types.float32), "deltas": (deltas, types.uint8), "x": (x, types.float32),
              "sums": (sums, types.float32)}
    for name, (array, dtype) in arrays.items():  # the IR below assumes these: refuse anything else at typing
        if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C" and array.dtype == dtype):
            raise numba.core.errors.TypingError(f"{name} must be a 1-D C-contiguous {dtype} array, got {array}")
    signature = types.void(data, deltas, x, types.int64, types.int64, sums)

    def codegen(context, builder, sig, args):
        f32, i32, i8, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(8), ir.IntType(64)
        v8f, v8i, v8b = ir.VectorType(f32, 8), ir.VectorType(i32, 8), ir.VectorType(i8, 8)
        data_ptr, delta_ptr, x_ptr, sums_ptr = (context.make_array(sig.args[i])(context, builder, args[i]).data
                                                for i in (0, 1, 2, 5))
        zeros = ir.Constant(v8f, [ir.Constant(f32, 0.0)] * 8)

        def one_step(q, acc, col):
            """Adds step ``q / 8`` to ``acc``; returns the new sums and columns."""
            values = builder.load(builder.bitcast(builder.gep(data_ptr, [q]), v8f.as_pointer()), align=4)
            steps = builder.load(builder.bitcast(builder.gep(delta_ptr, [q]), v8b.as_pointer()), align=1)
            col = builder.add(col, builder.zext(steps, v8i))
            xs = ir.Constant(v8f, ir.Undefined)
            for lane in range(8):
                column = builder.zext(builder.extract_element(col, ir.Constant(i32, lane)), i64)
                xs = builder.insert_element(xs, builder.load(builder.gep(x_ptr, [column])), ir.Constant(i32, lane))
            return builder.fadd(acc, builder.fmul(values, xs, flags=("fast",)), flags=("fast",)), col

        def unrolled(q, carried):
            *accs, col = carried
            for u in range(SELL_UNROLL):
                accs[u], col = one_step(builder.add(q, ir.Constant(i64, 8 * u)), accs[u], col)
            return [*accs, col]

        def single(q, carried):
            return list(one_step(q, *carried))

        width = 8 * SELL_UNROLL
        q0, q1 = args[3], args[4]
        split = builder.add(q0, builder.mul(builder.sdiv(builder.sub(q1, q0), ir.Constant(i64, width)),
                                            ir.Constant(i64, width)))
        first_cols = ir.Constant(v8i, [ir.Constant(i32, 0)] * 8)
        *accs, col = _emit_loop(builder, "sell4", q0, split, width, [zeros] * SELL_UNROLL + [first_cols], unrolled)
        acc = accs[0]
        for other in accs[1:]:
            acc = builder.fadd(acc, other, flags=("fast",))
        acc, _ = _emit_loop(builder, "sell1", split, q1, 8, [acc, col], single)
        builder.store(acc, builder.bitcast(sums_ptr, v8f.as_pointer()), align=4)
        return context.get_dummy_value()

    return signature, codegen


@njit(boundscheck=False, cache=True)
def slice_sums(data, deltas, x, q0, q1, sums):  # pragma: no cover - compiled
    """The 8 lane sums of SELL-8 entries ``q0 .. q1`` (multiples of 8) into ``sums`` (fp32 ``[8]``). ``data`` fp32
    and ``deltas`` uint8 are C-contiguous, ``x`` one fp32 row."""
    _slice_loop(data, deltas, x, q0, q1, sums)


def _panel_row_intrinsic(vectors: int, panel: int = 0):
    """A Numba intrinsic ``panel_row(data, indices, x, p0, p1, s, y)``: ``y[s : s + w] += sum_p data[p] *
    x[indices[p], s : s + w]`` over ``p0 <= p < p1``, with ``w = 8 * vectors`` tokens held in ``vectors``
    8-lane registers for the whole row (``x`` ``[in, panel]`` C-contiguous fp32, ``s + w <= panel``). A nonzero
    ``panel`` compiles that row stride in (a shift instead of a multiply on the load address: 5-20% faster, measured);
    the caller must then only pass such panels."""

    @intrinsic
    def panel_row(typingctx, data, indices, x, p0, p1, s, y):  # pragma: no cover - runs at compile time
        arrays = {"data": (data, types.float32, 1), "indices": (indices, types.int32, 1),
                  "x": (x, types.float32, 2), "y": (y, types.float32, 1)}
        for name, (array, dtype, ndim) in arrays.items():
            if not (isinstance(array, types.Array) and array.ndim == ndim and array.layout == "C"
                    and array.dtype == dtype):
                raise numba.core.errors.TypingError(f"{name} must be a {ndim}-D C-contiguous {dtype} array")
        signature = types.void(data, indices, x, types.int64, types.int64, types.int64, y)

        def codegen(context, builder, sig, args):
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            v8f = ir.VectorType(f32, 8)
            data_ptr, index_ptr, x_ptr, y_ptr = (context.make_array(sig.args[i])(context, builder, args[i]).data
                                                 for i in (0, 1, 2, 6))
            x_struct = context.make_array(sig.args[2])(context, builder, args[2])
            stride = ir.Constant(i64, panel) if panel else builder.extract_value(x_struct.shape, 1)  # in elements
            x_from_s = builder.gep(x_ptr, [args[5]])
            y_vectors = builder.bitcast(builder.gep(y_ptr, [args[5]]), v8f.as_pointer())
            first = [builder.load(builder.gep(y_vectors, [ir.Constant(i64, j)]), align=4) for j in range(vectors)]

            def step(p, accs):
                lane = builder.insert_element(ir.Constant(v8f, ir.Undefined),
                                              builder.load(builder.gep(data_ptr, [p])), ir.Constant(i32, 0))
                weight = builder.shuffle_vector(lane, ir.Constant(v8f, ir.Undefined),
                                                ir.Constant(ir.VectorType(i32, 8), [0] * 8))
                column = builder.sext(builder.load(builder.gep(index_ptr, [p])), i64)
                row = builder.bitcast(builder.gep(x_from_s, [builder.mul(column, stride)]), v8f.as_pointer())
                xs = [builder.load(builder.gep(row, [ir.Constant(i64, j)]), align=4) for j in range(vectors)]
                return [builder.fadd(acc, builder.fmul(weight, x, flags=("fast",)), flags=("fast",))
                        for acc, x in zip(accs, xs)]

            accs = _emit_loop(builder, "row", args[3], args[4], 1, first, step)
            for j, acc in enumerate(accs):
                builder.store(acc, builder.gep(y_vectors, [ir.Constant(i64, j)]), align=4)
            return context.get_dummy_value()

        return signature, codegen

    return panel_row


#: ``panel_row_<w>`` accumulates one output row over ``w`` tokens of a panel (see `_panel_row_intrinsic`).
panel_row_64 = _panel_row_intrinsic(8)
#: `panel_row_64` for panels of exactly 64 (`CSR_PANEL`) or 128 tokens (a BERT sequence in a packed feed-forward).
panel_row_64_of_64 = _panel_row_intrinsic(8, panel=64)
panel_row_64_of_128 = _panel_row_intrinsic(8, panel=128)
panel_row_32 = _panel_row_intrinsic(4)
panel_row_16 = _panel_row_intrinsic(2)
panel_row_8 = _panel_row_intrinsic(1)
