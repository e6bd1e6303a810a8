"""SIMD loops Numba cannot express by itself, written as LLVM IR through Numba intrinsics.

*A SELL-8 slice's 8 row sums with AVX2 gathers* (the decode kernel).
Numba (through LLVM) vectorises loops over contiguous data, but not the sparse mat-vec's gather from the
activation: written as 8 scalar running sums, a SELL-8 step is 8 index loads, 8 activation loads and 8 value
loads, while AVX2 does it as one 8-byte delta load, one vector add, one ``vgatherdps`` and one 32-byte value load.
`slice_sums_gather` emits that loop as LLVM IR through a Numba intrinsic. It uses the x86 intrinsic
``llvm.x86.avx2.gather.d.ps.256`` (32-bit indices scaled by 4 from one base pointer), so it is only compiled where
`HAS_AVX2` says the CPU has the instruction; elsewhere `hf_sparse.kernels._numba_rows` uses its scalar loop.

*One output row of a token panel with its sums in registers* (the prefill / encoder CSR kernel). Numba keeps a
loop's running sums in registers only when they are scalars, so the panel kernel used to add every group of
non-zeros into the output row in memory, a load and a store per 8 products. `panel_row_64` and its narrower
siblings keep 8 (4, 2, 1) 8-lane sums in registers for the whole row and stream the row's non-zeros through
broadcast-multiply-adds. This is plain LLVM vector IR, which LLVM lowers on any CPU (AVX2 FMAs here).
"""

from __future__ import annotations

import platform
from typing import Callable

import numba
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def _host_has_avx2() -> bool:
    """Whether Numba compiles for a CPU with AVX2: an x86-64 host, and no ``NUMBA_CPU_NAME`` that may lack it."""
    if platform.machine().lower() not in ("x86_64", "amd64") or numba.config.CPU_NAME not in (None, "host"):
        return False
    try:
        return "+avx2" in llvm.get_host_cpu_features().flatten().split(",")
    except RuntimeError:  # llvmlite cannot read the features on this host
        return False


#: Whether `slice_sums_gather` can be used on this machine.
HAS_AVX2 = _host_has_avx2()


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


@intrinsic
def _gather_loop(typingctx, data, deltas, x, q0, q1, sums):  # pragma: no cover - runs at compile time
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
        module = builder.module
        gather_type = ir.FunctionType(v8f, [v8f, i8.as_pointer(), v8i, v8f, i8])
        name = "llvm.x86.avx2.gather.d.ps.256"
        gather = module.globals.get(name) or ir.Function(module, gather_type, name)
        x_bytes = builder.bitcast(x_ptr, i8.as_pointer())
        all_lanes = ir.Constant(v8f, [ir.Constant(f32, -1.0)] * 8)  # a lane is gathered when its sign bit is set
        zeros = ir.Constant(v8f, [ir.Constant(f32, 0.0)] * 8)
        def step(q, carried):
            acc, col = carried
            values = builder.load(builder.bitcast(builder.gep(data_ptr, [q]), v8f.as_pointer()), align=4)
            steps = builder.load(builder.bitcast(builder.gep(delta_ptr, [q]), v8b.as_pointer()), align=1)
            next_col = builder.add(col, builder.zext(steps, v8i))
            xs = builder.call(gather, [zeros, x_bytes, next_col, all_lanes, ir.Constant(i8, 4)])
            return [builder.fadd(acc, builder.fmul(values, xs, flags=("fast",)), flags=("fast",)), next_col]

        first_cols = ir.Constant(v8i, [ir.Constant(i32, 0)] * 8)
        acc, _ = _emit_loop(builder, "sell", args[3], args[4], 8, [zeros, first_cols], step)
        builder.store(acc, builder.bitcast(sums_ptr, v8f.as_pointer()), align=4)
        return context.get_dummy_value()

    return signature, codegen


@njit(boundscheck=False, cache=True)
def slice_sums_gather(data, deltas, x, q0, q1, sums):  # pragma: no cover - compiled
    """The 8 lane sums of SELL-8 entries ``q0 .. q1`` (multiples of 8) into ``sums`` (fp32 ``[8]``), with AVX2
    gathers; only call it when `HAS_AVX2`. ``data`` fp32 and ``deltas`` uint8 are C-contiguous, ``x`` one fp32 row."""
    _gather_loop(data, deltas, x, q0, q1, sums)


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
