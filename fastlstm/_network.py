"""A stack of (bi)directional LSTM layers over one mini-batch.

This module composes the one-direction kernels of a backend into the whole
recurrent network: layers feed each other, the two directions of a layer are
concatenated feature-wise (forward first, as ``torch.nn.LSTM`` does), dropout
masks drawn by the caller are applied between layers, and the backward pass
walks the same path in reverse.

A mini-batch arrives as a list of *shards*: packed batches of disjoint
sequences. Sequences never interact inside the network, so every (shard,
direction) pair of a layer is an independent task; with an executor, the
tasks of a layer run in parallel (the kernels release the GIL). Each shard
has its own output and gradient buffers, so the result does not depend on the
number of threads, only on the sharding, which the caller fixes.

Where the backend has native entries for the dtype (numba, float32; see
``_kernels.numba_lstm.entry_addresses``), a layer's tasks run as one native
job: their arguments packed once on the calling thread, every task a C
call, so that no thread takes the GIL or goes through numba's dispatcher for
them. Tasks that need Python around the kernel (a copy into a bidirectional
layer's output, a non-contiguous gradient) run as Python tasks; both run the
same compiled kernels and give the same bits.

A prediction whose layers have fewer tasks than threads (one sequence, or a
batch too small to shard, in one direction) would leave threads idle; there
the cooperative kernel (``numba_lstm.lstm_forward_parts``) cuts each task's
hidden units into parts that the threads share step by step, with the same
bits as the one-thread kernel.
"""

import threading
from dataclasses import dataclass

import numpy as np

from ._kernels import _gemm
from ._kernels._kernel_arguments import BACKWARD, FORWARD, FORWARD_PARTS, pack_job
from ._spin import CAN_SPIN, job_header_size, run_job
from ._weights import GATES


@dataclass(frozen=True)
class NetworkShape:
    """What fixes the network's structure.

    Attributes
    ----------
    hidden_size : int
    num_layers : int
    bidirectional : bool
    proj_size : int
        Size of the projected hidden state; 0 means no projection.
    gate_kind, state_kind : int
        Activation codes (see ``_kernels._activations``).
    """

    hidden_size: int
    num_layers: int
    bidirectional: bool
    proj_size: int = 0
    gate_kind: int = 0
    state_kind: int = 0

    @property
    def n_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def state_size(self):
        """Size of the hidden state h of one direction."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    @property
    def n_features_out(self):
        return self.state_size * self.n_directions


def layer_name(layer, direction):
    """The suffix of a layer's parameter names, as in torch: ``l0``, ``l0_reverse``."""
    return f"l{layer}{'_reverse' if direction == 1 else ''}"


@dataclass
class ForwardResult:
    """Outputs of :func:`network_forward` for one shard, and what backward needs.

    Attributes
    ----------
    outputs : ndarray of shape (n_rows, n_directions * state_size) or None
        Last layer's hidden state at every packed step (None where
        :func:`network_forward` was told not to keep it).
    h_n : ndarray of shape (num_layers * n_directions, batch_size, state_size)
        Every layer's and direction's final hidden state (torch's ``h_n``):
        the forward direction's after the sequence's last step, the reverse
        direction's after its first.
    c_n : ndarray of shape (num_layers * n_directions, batch_size, hidden_size)
        The same for the cell state.
    """

    outputs: np.ndarray
    h_n: np.ndarray
    c_n: np.ndarray
    n_directions: int
    layer_inputs: list
    saved: dict

    @property
    def final_hidden(self):
        """Last layer's final hidden states, directions side by side.

        An array of shape (batch_size, n_directions * state_size): the features
        a sequence-to-label output layer reads.
        """
        return np.concatenate(list(self.h_n[-self.n_directions:]), axis=1)


def _run_tasks(executor, function, tasks):
    """Run ``function(*task)`` for every task: in parallel on ``executor``, if any.

    ``executor`` is a :class:`~fastlstm._pool.SpinPool` (see
    ``_trainer.compute_environment``): the calling thread runs tasks too, and
    each thread takes the next task not yet started, so shards of unequal
    cost still balance. Tasks write only their own outputs, so the order in
    which they run does not change any result.
    """
    if executor is None or len(tasks) == 1:
        for task in tasks:
            function(*task)
        return
    executor.run(function, tasks)


def _run_kernel_tasks(executor, entry, signature, kernel_arguments, function, tasks):
    """Run a layer's kernel calls: as one native job if all can be, else as Python tasks.

    ``entry`` is the native entry's address (None: the backend has none for
    this dtype); ``kernel_arguments[i]`` is the whole argument tuple of task
    ``i``'s kernel call when the task is nothing but that call, else None.
    Without atomics (``CAN_SPIN``) a pool would run a native job on one
    thread, so its tasks run as Python tasks there.
    """
    job = None
    if (entry is not None and (executor is None or CAN_SPIN)
            and all(arguments is not None for arguments in kernel_arguments)):
        job = pack_job(entry, signature, kernel_arguments, job_header_size())
    if job is None:
        _run_tasks(executor, function, tasks)
    elif executor is None:
        run_job(job)
    else:
        executor.run_job(job)


def _native_entries(backend, dtype):
    """The backend's (forward, backward, cooperative forward) native entries for
    ``dtype``, or Nones."""
    return backend.native_entries(dtype) or (None, None, None)


# A layer with fewer tasks than threads (one sequence, or a batch too small
# to shard, in one direction) shares each task's hidden units among the idle
# threads when a step's recurrent product has at least COOPERATIVE_MIN_MACS
# multiply-adds (rows x 4H x H; below, the hand-off between threads at every
# step costs more than the halved product saves: hidden 64, one sequence,
# was slower) and at most COOPERATIVE_MAX_ROWS rows. With few rows the
# product is a matrix-vector product that waits on one core's cache, and
# two cores halve it (predictions of one sequence of 1000 steps, hidden
# 128: 1.05-1.36x faster in medians, 1.28-1.48x in the best blocks; 4
# sequences, hidden 256: 1.18-1.69x). With 27 rows (hidden 100) it is
# compute-bound, and the per-step hand-offs took the gain (0.8-1.0x).
COOPERATIVE_MIN_MACS = 32768
COOPERATIVE_MAX_ROWS = 8


def _parts_per_task(executor, n_tasks, batch_size, shape, dtype, parts_entry):
    """Into how many parts the cooperative kernel cuts each task's units (1: not used).

    Only numba's float32 kernels with the own GEMM have a cooperative entry
    that runs the parts' products in place; the parts must run at once on
    threads that spin (``CAN_SPIN``), and a projection, which mixes all the
    units within a step, would need a second hand-off per step.
    """
    if (executor is None or parts_entry is None or not CAN_SPIN or shape.proj_size
            or dtype != np.float32 or not _gemm.enabled()):
        return 1
    n_parts = (executor.n_workers + 1) // n_tasks
    hidden = shape.hidden_size
    if (batch_size > COOPERATIVE_MAX_ROWS
            or batch_size * GATES * hidden * hidden < COOPERATIVE_MIN_MACS):
        return 1
    return max(1, min(n_parts, hidden))


def _task_scratch(workspace, executor, n_tasks):
    """Per task, where its kernel's scratch arrays come from; None: from its thread's.

    A native task must be given its scratch before it runs, not knowing
    which thread will run it. Without an executor the tasks run in turn on
    the calling thread and share its scratch; with no more tasks than
    threads, each task has its own, which holds no more memory than one per
    thread. Otherwise the thread that runs a task takes its own (see
    :func:`_scratch`) and the task runs as a Python task.
    """
    if executor is None:
        return [_scratch(workspace)] * n_tasks
    if n_tasks <= executor.n_workers + 1:
        return [_allocator(workspace, "scratch", "task", index) for index in range(n_tasks)]
    return [None] * n_tasks


def _empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


class Workspace:
    """Buffers that one training step leaves for the next to reuse.

    A step allocates a dozen arrays per shard, layer and direction (saved
    activations, gate gradients, workspaces), several megabytes each for
    long batches. Allocated afresh every step they come back as new pages
    from the operating system, page-faulted and zeroed on first touch
    (21,000 page faults per W3 step), and the threads of a step fault into
    the same address space at once. Here each buffer is kept, under a key
    naming its role, at the largest number of rows asked for so far, and
    handed out as a view of its first rows: mini-batches of different
    lengths share it.

    Only arrays that live within one step may come from here: the next step
    overwrites them. Scratch arrays that live within one kernel call only are
    keyed by thread (see :func:`_scratch`), so that their memory is that of
    the threads running at once, not of every task of the step.
    """

    def __init__(self):
        self._arrays = {}

    @property
    def nbytes(self):
        """Memory held, in bytes."""
        return sum(array.nbytes for array in list(self._arrays.values()))

    def empty(self, key, shape, dtype):
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``."""
        array = self._arrays.get(key)
        if (array is None or array.shape[0] < shape[0] or array.shape[1:] != tuple(shape[1:])
                or array.dtype != dtype):
            array = np.empty(shape, dtype=dtype)
            # Distinct keys per task: threads never share an entry, and a
            # dict assignment is atomic under the GIL.
            self._arrays[key] = array
        # The whole array where it has the rows asked for (every step of a
        # fit on equal lengths): a view costs 0.2 us, and a training step
        # asks for 15 of these, right after kernels that have left the
        # interpreter's caches cold.
        return array if array.shape[0] == shape[0] else array[:shape[0]]

    def zeros(self, key, shape, dtype):
        """A zero-filled array for a kernel to read, never to write.

        Zero inputs (initial states, the gradient of outputs nothing reads)
        are filled once, when first made or grown, rather than every step.
        """
        # Keyed by the trailing shape and the dtype too: an entry never
        # changes shape, so a view handed out earlier in the step stays
        # valid and zero. (The dtype as given: its name, np.dtype(dtype).str,
        # took 0.75 us to make.)
        key = key + (tuple(shape[1:]), dtype)
        array = self._arrays.get(key)
        if array is None or array.shape[0] < shape[0]:
            array = np.zeros(shape, dtype=dtype)
            self._arrays[key] = array
        return array if array.shape[0] == shape[0] else array[:shape[0]]


def _zeros(workspace, key, shape, dtype):
    """Read-only zeros: from ``workspace`` (see :meth:`Workspace.zeros`), or new."""
    if workspace is None:
        return np.zeros(shape, dtype=dtype)
    return workspace.zeros(("zeros",) + key, shape, dtype)


def _allocator(workspace, *key_prefix):
    """``empty(name, shape, dtype)`` from ``workspace``, or fresh arrays without one."""
    if workspace is None:
        return lambda name, shape, dtype: np.empty(shape, dtype=dtype)
    return lambda name, shape, dtype: workspace.empty(key_prefix + (name,), shape, dtype)


def _scratch(workspace):
    """Like :func:`_allocator`, for arrays dead once the calling task's kernel returns."""
    return _allocator(workspace, "scratch", threading.get_ident())


def network_forward(params, shape, shards, backend, *, dropout_masks=None, h0=None, c0=None,
                    executor=None, workspace=None, for_backward=True, keep_outputs=True):
    """Run the recurrent layers over every shard of a mini-batch.

    Parameters
    ----------
    params : dict of str to ndarray
        Parameters named as ``torch.nn.LSTM``'s state dict.
    shape : NetworkShape
    shards : list of PackedBatch
    backend : Backend
    dropout_masks : list of list of ndarray, default=None
        ``dropout_masks[s][l - 1]`` (already scaled by 1 / keep probability)
        multiplies the input of layer ``l >= 1`` of shard ``s``.
    h0, c0 : list of ndarray, default=None
        Per shard, initial states of shape (num_layers * n_directions,
        batch_size, state_size or hidden_size); None means zeros.
    executor : fastlstm._pool.SpinPool, default=None
        Runs the independent (shard, direction) tasks of a layer in parallel.
    workspace : Workspace, default=None
        Where the saved activations and layer outputs come from (training
        reuses them step after step); None allocates new arrays. The final
        states ``h_n``, ``c_n`` are always new arrays.
    for_backward : bool, default=True
        Keep what :func:`network_backward` needs. Prediction passes False:
        the kernels then skip saving three of their per-step arrays (the
        entering hidden and cell states, the cell state's activation), about
        30 % of a prediction's memory and 4-12 % of a W1 prediction's time,
        and the results cannot be backpropagated.
    keep_outputs : bool, default=True
        Gather the last layer's hidden states at every step into
        ``outputs``. A sequence-to-one model reads only the final states
        (``h_n``) and passes False: ``outputs`` is then None, and the last
        layer's directions skip copying their hidden states into it (each a
        copy of the whole layer output, on the path of its thread).

    Returns
    -------
    results : list of ForwardResult
        One per shard.
    """
    hidden, state = shape.hidden_size, shape.state_size
    n_stack = shape.num_layers * shape.n_directions
    forward_entry, _, parts_entry = _native_entries(backend, shards[0].X.dtype)
    results = []
    for index, batch in enumerate(shards):
        batch_size, dtype = batch.size, batch.X.dtype
        results.append(ForwardResult(
            outputs=None,
            h_n=_empty((n_stack, batch_size, state), dtype),
            c_n=_empty((n_stack, batch_size, hidden), dtype),
            n_directions=shape.n_directions,
            layer_inputs=[],
            saved={},
        ))
        if h0 is None or h0[index] is None:
            results[-1].saved["h0"] = _zeros(workspace, ("h0",), (n_stack, batch_size, state), dtype)
            results[-1].saved["c0"] = _zeros(workspace, ("c0",), (n_stack, batch_size, hidden), dtype)
        else:
            results[-1].saved["h0"] = np.ascontiguousarray(h0[index], dtype=dtype)
            results[-1].saved["c0"] = np.ascontiguousarray(c0[index], dtype=dtype)

    # Each task is prepared here, on the calling thread, and only run by the
    # pool: a worker then takes the GIL for a few microseconds, not for the
    # whole preparation while the calling thread holds it too.
    def prepare(shard_index, layer, direction, layer_input, layer_output, scratch):
        batch, result = shards[shard_index], results[shard_index]
        n_rows, batch_size, dtype = batch.X.shape[0], batch.size, batch.X.dtype
        name = layer_name(layer, direction)
        stack = layer * shape.n_directions + direction
        W_proj = params.get(f"weight_hr_{name}", _NO_PROJECTION[dtype.type])
        empty = _allocator(workspace, "forward", shard_index, layer, direction)
        # One direction writes the layer's output in place; two write their
        # halves of each row, gathered from their own H after the kernel.
        one_direction_output = layer_output is not None and shape.n_directions == 1
        H = layer_output if one_direction_output else empty("H", (n_rows, state), dtype)
        kept_rows = n_rows if for_backward else 0  # 0 rows: not kept
        saved = dict(
            bias=params[f"bias_ih_{name}"] + params[f"bias_hh_{name}"],
            Hprev=empty("Hprev", (kept_rows, state), dtype),
            Cprev=empty("Cprev", (kept_rows, hidden), dtype),
            TC=empty("TC", (kept_rows, hidden), dtype),
            gates=empty("gates", (n_rows, GATES * hidden), dtype),
            M=empty("M", (n_rows, hidden), dtype) if shape.proj_size else W_proj,
        )
        result.saved[(layer, direction)] = saved
        arguments = (
            layer_input, batch.batch_sizes, params[f"weight_ih_{name}"],
            params[f"weight_hh_{name}"], saved["bias"], W_proj,
            result.saved["h0"][stack], result.saved["c0"][stack], direction == 1,
            shape.gate_kind, shape.state_kind,
            H, saved["Hprev"], saved["Cprev"], saved["TC"], saved["gates"], saved["M"],
            result.h_n[stack], result.c_n[stack],
        )
        work_shape = (batch_size + layer_input.shape[1] + state + 1, GATES * hidden)
        work = None if scratch is None else scratch("work", work_shape, dtype)
        output_columns = (None if layer_output is None or one_direction_output
                          else layer_output[:, direction * state:(direction + 1) * state])
        return arguments, work_shape, work, H, output_columns

    def run(arguments, work_shape, work, H, output_columns):
        if work is None:
            work = _scratch(workspace)("work", work_shape, H.dtype)
        backend.forward(*arguments, work)
        if output_columns is not None:
            output_columns[...] = H

    def kernel_arguments(arguments, work_shape, work, H, output_columns):
        """The kernel call's arguments, if that call is the whole task."""
        return None if work is None or output_columns is not None else arguments + (work,)

    def cooperative_tasks(shard_index, layer, direction, task, n_parts):
        """``n_parts`` runners of the cooperative kernel for one (shard, direction) task."""
        arguments, (n_work_rows, n_gates), _, H, output_columns = task
        batch, dtype = shards[shard_index], H.dtype
        empty = _allocator(workspace, "forward", shard_index, layer, direction)
        progress = empty("progress", (2 * batch.batch_sizes.shape[0] + 3,), np.int64)
        progress[:] = 0
        shared = (empty("states", (2 * batch.size, shape.state_size), dtype), progress, n_parts,
                  empty("parts work", (n_work_rows + 1, n_gates), dtype))
        # The forward kernel's arguments less W_proj, Hprev, Cprev, TC and M
        # (no projection, nothing kept for a backward pass).
        parts_arguments = (arguments[:5] + arguments[6:12] + arguments[15:16] + arguments[17:]
                           + shared)
        # The first runner copies the output; any runner returns only once
        # the whole pass is done.
        return [(parts_arguments, H, output_columns if part == 0 else None)
                for part in range(n_parts)]

    def run_parts(parts_arguments, H, output_columns):
        from ._kernels.numba_lstm import lstm_forward_parts

        lstm_forward_parts(*parts_arguments)
        if output_columns is not None:
            output_columns[...] = H

    # The same (shard, direction) tasks, and so the same parts, in every layer.
    pairs = [(s, direction) for s in range(len(shards))
             for direction in range(shape.n_directions)]
    n_parts = 1 if for_backward else _parts_per_task(
        executor, len(pairs), max(batch.size for batch in shards), shape,
        shards[0].X.dtype, parts_entry)
    layer_inputs = [batch.X for batch in shards]
    for layer in range(shape.num_layers):
        if layer > 0 and dropout_masks is not None:
            layer_inputs = [x * masks[layer - 1] for x, masks in zip(layer_inputs, dropout_masks)]
        if keep_outputs or layer < shape.num_layers - 1:
            layer_outputs = [
                _allocator(workspace, "layer output", s, layer)(
                    "H", (batch.X.shape[0], shape.n_features_out), batch.X.dtype)
                for s, batch in enumerate(shards)
            ]
        else:
            layer_outputs = [None] * len(shards)
        for result, layer_input in zip(results, layer_inputs):
            result.layer_inputs.append(layer_input)
        # The parts of a task share one work array (see cooperative_tasks).
        scratches = ([None] * len(pairs) if n_parts > 1
                     else _task_scratch(workspace, executor, len(pairs)))
        tasks = [prepare(s, layer, direction, layer_inputs[s], layer_outputs[s], scratch)
                 for (s, direction), scratch in zip(pairs, scratches)]
        if n_parts > 1:
            tasks = [runner for (s, direction), task in zip(pairs, tasks)
                     for runner in cooperative_tasks(s, layer, direction, task, n_parts)]
            _run_kernel_tasks(executor, parts_entry, FORWARD_PARTS,
                              [arguments if output_columns is None else None
                               for arguments, _, output_columns in tasks], run_parts, tasks)
        else:
            _run_kernel_tasks(executor, forward_entry, FORWARD,
                              [kernel_arguments(*task) for task in tasks], run, tasks)
        layer_inputs = layer_outputs
    for result, outputs in zip(results, layer_inputs):
        result.outputs = outputs
    return results


# Kernels take a (0, 0) projection matrix to mean "no projection".
_NO_PROJECTION = {np.float32: np.zeros((0, 0), np.float32),
                  np.float64: np.zeros((0, 0), np.float64)}


@dataclass
class BackwardResult:
    """Gradients of :func:`network_backward` for one shard beyond the parameters.

    Attributes
    ----------
    d_inputs : ndarray of shape (n_rows, n_features)
        With respect to the packed inputs.
    d_h0, d_c0 : ndarray
        With respect to the initial states, shaped like them.
    """

    d_inputs: np.ndarray
    d_h0: np.ndarray
    d_c0: np.ndarray


def network_backward(params, grads, shape, shards, backend, forward_results, *,
                     d_outputs=None, d_final_hidden=None, dropout_masks=None, executor=None,
                     input_gradients=True, workspace=None):
    """Backpropagate through the recurrent layers of every shard.

    Parameters
    ----------
    params : dict of str to ndarray
    grads : list of dict of str to ndarray
        OUT. Per shard, gradient views named as ``params``; the recurrent
        entries are overwritten, the others are left alone.
    shape : NetworkShape
    shards : list of PackedBatch
    backend : Backend
    forward_results : list of ForwardResult
        From :func:`network_forward` on the same shards and parameters.
    d_outputs : list of ndarray or None, default=None
        Per shard, the gradient with respect to ``outputs``; None means zero.
    d_final_hidden : list of ndarray or None, default=None
        Per shard, the gradient with respect to ``final_hidden``; None means zero.
    dropout_masks : list of list of ndarray, default=None
        The masks given to :func:`network_forward`.
    executor : fastlstm._pool.SpinPool, default=None
    input_gradients : bool, default=True
        Compute ``d_inputs``, the gradient with respect to the network's
        inputs. Training does not need it, and skipping it saves one GEMM
        per direction of the first layer; ``d_inputs`` is then None.
    workspace : Workspace, default=None
        Where the gradient workspaces come from (see :func:`network_forward`);
        ``d_inputs`` may then be one of them, valid until the next step.

    Returns
    -------
    results : list of BackwardResult
    """
    hidden, state = shape.hidden_size, shape.state_size
    n_directions = shape.n_directions
    results = [
        BackwardResult(d_inputs=None, d_h0=np.empty_like(fwd.saved["h0"]),
                       d_c0=np.empty_like(fwd.saved["c0"]))
        for fwd in forward_results
    ]

    # Prepared on the calling thread, run by the pool (see network_forward).
    def prepare(shard_index, layer, direction, d_layer_output, d_layer_input_parts, scratch):
        batch, fwd = shards[shard_index], forward_results[shard_index]
        result, shard_grads = results[shard_index], grads[shard_index]
        n_rows, batch_size, dtype = batch.X.shape[0], batch.size, batch.X.dtype
        name = layer_name(layer, direction)
        stack = layer * n_directions + direction
        saved = fwd.saved[(layer, direction)]
        columns = slice(direction * state, (direction + 1) * state)
        if d_layer_output is None:
            d_output_columns = _zeros(workspace, ("dH",), (n_rows, state), dtype)
        else:
            d_output_columns = d_layer_output[:, columns]  # made contiguous by run()
        dh_n = np.zeros((batch_size, state), dtype)
        if layer == shape.num_layers - 1 and d_final_hidden is not None:
            dh_n[:] = d_final_hidden[shard_index][:, columns]
        project = shape.proj_size > 0
        W_proj = params[f"weight_hr_{name}"] if project else saved["M"]
        dW_proj = shard_grads[f"weight_hr_{name}"] if project else saved["M"]
        layer_input = fwd.layer_inputs[layer]
        if layer > 0 or input_gradients:
            # The layer below reads this layer's dX while writing its own:
            # two buffers, alternating with the layer.
            dX = _allocator(workspace, "dX", shard_index, direction, layer % 2)(
                "dX", layer_input.shape, dtype)
        else:
            dX = _empty((0, layer_input.shape[1]), dtype)
        d_layer_input_parts[direction] = dX
        d_bias = shard_grads[f"bias_ih_{name}"]
        before_dH = (
            layer_input, batch.batch_sizes, params[f"weight_ih_{name}"],
            params[f"weight_hh_{name}"], saved["bias"], W_proj,
            fwd.saved["h0"][stack], fwd.saved["c0"][stack], direction == 1,
            shape.gate_kind, shape.state_kind,
            saved["Hprev"], saved["Cprev"], saved["TC"], saved["gates"], saved["M"],
        )
        after_dH = (
            dh_n, _zeros(workspace, ("dc_n",), (batch_size, hidden), dtype),
            dX, shard_grads[f"weight_ih_{name}"], shard_grads[f"weight_hh_{name}"], d_bias,
            dW_proj, result.d_h0[stack], result.d_c0[stack],
        )
        # Without projection, its workspaces are the (0, 0) stand-in saved["M"].
        scratch_shapes = dict(dG=(n_rows, GATES * hidden))
        if project:
            scratch_shapes.update(dH_total=(n_rows, state), dM=(batch_size, hidden))
        workspaces = (None if scratch is None
                      else scratch_workspaces(scratch, scratch_shapes, saved["M"]))
        # Both torch biases enter the gates as one sum, so they share a
        # gradient, copied once the layer's tasks are done.
        bias_copies.append((shard_grads[f"bias_hh_{name}"], d_bias))
        return before_dH, d_output_columns, after_dH, scratch_shapes, saved["M"], workspaces

    def scratch_workspaces(scratch, scratch_shapes, no_projection):
        """The kernel's dG, dH_total and dM (the (0, 0) stand-in where not used)."""
        dtype = no_projection.dtype
        return tuple(scratch(name, scratch_shapes[name], dtype) if name in scratch_shapes
                     else no_projection for name in ("dG", "dH_total", "dM"))

    def run(before_dH, d_output_columns, after_dH, scratch_shapes, no_projection, workspaces):
        if workspaces is None:
            # Per-thread scratch: taken by the thread that runs the kernel.
            workspaces = scratch_workspaces(_scratch(workspace), scratch_shapes, no_projection)
        backend.backward(*before_dH, np.ascontiguousarray(d_output_columns), *after_dH,
                         *workspaces)

    def kernel_arguments(before_dH, d_output_columns, after_dH, scratch_shapes, no_projection,
                         workspaces):
        """The kernel call's arguments, if that call is the whole task."""
        if workspaces is None:
            return None
        return before_dH + (d_output_columns,) + after_dH + workspaces

    backward_entry = _native_entries(backend, shards[0].X.dtype)[1]
    d_layer_outputs = [None] * len(shards) if d_outputs is None else list(d_outputs)
    for layer in reversed(range(shape.num_layers)):
        parts = [[None] * n_directions for _ in shards]
        pairs = [(s, direction) for s in range(len(shards)) for direction in range(n_directions)]
        scratches = _task_scratch(workspace, executor, len(pairs))
        bias_copies = []
        tasks = [prepare(s, layer, direction, d_layer_outputs[s], parts[s], scratch)
                 for (s, direction), scratch in zip(pairs, scratches)]
        # A task whose gradient columns are a strided view (a bidirectional
        # layer's) runs in Python, which makes them contiguous.
        _run_kernel_tasks(executor, backward_entry, BACKWARD,
                          [kernel_arguments(*task) for task in tasks], run, tasks)
        for d_bias_hh, d_bias in bias_copies:
            d_bias_hh[:] = d_bias
        if layer == 0 and not input_gradients:
            d_layer_outputs = [None] * len(shards)
            break
        d_layer_outputs = []
        for s, shard_parts in enumerate(parts):
            d_input = shard_parts[0] if n_directions == 1 else shard_parts[0] + shard_parts[1]
            if layer > 0 and dropout_masks is not None:
                d_input *= dropout_masks[s][layer - 1]
            d_layer_outputs.append(d_input)
    for result, d_input in zip(results, d_layer_outputs):
        result.d_inputs = d_input
    return results
