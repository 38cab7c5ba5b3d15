"""Device-resident training for backend="cuda": the fit loop with nothing on the host.

:class:`fastlstm._trainer.Trainer` drives the kernels with NumPy arrays, so
with backend="cuda" every kernel call copies its inputs to the GPU and its
outputs back. :class:`DeviceTrainer` runs the same algorithm with every array
kept on the device for the whole of :meth:`DeviceTrainer.run_epochs`:

- uploaded once per call of ``run_epochs``: the parameters, and the packed
  mini-batches with their targets and weights (cut by ``Trainer.prepare``,
  so batches, shards and their order are exactly the CPU trainer's; re-cut
  and uploaded again once per epoch with ``shuffle="every-epoch"`` and no
  bucketing, as the CPU trainer re-cuts them);
- kept on the device across calls: the optimiser's moments;
- made on the device at every step: saved activations, gradients, the output
  layer, the loss and its gradient, L2, clipping and the Adam update;
- copied back at every step: the loss, one float64 (for the NaN check and
  the history); once per call: the parameters into ``flat_params`` (and
  once per epoch when ``validate`` needs them on the host).

Arithmetic follows ``_trainer``, ``_losses`` and ``_optim`` operation by
operation, and every reduction runs in a fixed order, so float64 results
match ``Trainer`` with the reference backend to rounding, and a run is
reproducible.

Scope: sequence-to-one targets (the output at each sequence's end), any
number of (bi)directional layers without projection, cross-entropy or
squared-error loss, Adam, the three clipping methods and L2 on weights.
Dropout between layers, per-step targets, truncated backpropagation through
time, projections and the other optimisers raise NotImplementedError.
"""

import math
import time
from functools import cache

import numpy as np

from ._kernels import cuda_lstm
from ._kernels.cuda_lstm import _pointwise, cuda, launch_column_sum, launch_gemm
from ._losses import cross_entropy, mean_squared_error
from ._network import layer_name
from ._optim import learning_rate_at
from ._trainer import EpochRecord, Trainer
from ._weights import GATES

_NO_PROJECTION = {np.float32: np.zeros((0, 0), np.float32),
                  np.float64: np.zeros((0, 0), np.float64)}
# Threads of the one block that reduces a clipping segment.
_CLIP_THREADS = 8 if cuda_lstm._simulated() else 256
# Its dynamic shared memory: a float64 partial sum per thread, and the factor.
_CLIP_SHARED_BYTES = (_CLIP_THREADS + 1) * 8


@cache
def training_kernels(dtype_name):
    """The training loop's element-wise and reduction kernels for one float dtype.

    Parameters
    ----------
    dtype_name : {"float32", "float64"}

    Returns
    -------
    kernels : types.SimpleNamespace
    """
    from types import SimpleNamespace

    cuda_lstm._require_cuda()
    scalar = np.dtype(dtype_name).type
    clip_threads = _CLIP_THREADS
    # A numba type: the simulator takes the itemsize of a dynamic shared
    # array's dtype, which a NumPy scalar class does not have.
    float64 = cuda_lstm.numba.float64

    @cuda.jit
    def fill(a, value, n):
        """a[i] = value, i < n."""
        i = cuda.grid(1)
        if i < n:
            a[i] = value

    @cuda.jit
    def add_into(a, b, out, n):
        """out[i] = a[i] + b[i]."""
        i = cuda.grid(1)
        if i < n:
            out[i] = a[i] + b[i]

    @cuda.jit
    def copy_block(src, src_row, src_col, dst, dst_row, dst_col, n_rows, n_cols):
        """dst[dst_row + r, dst_col + j] = src[src_row + r, src_col + j]."""
        index = cuda.grid(1)
        if index < n_rows * n_cols:
            r = index // n_cols
            j = index - r * n_cols
            dst[dst_row + r, dst_col + j] = src[src_row + r, src_col + j]

    @cuda.jit
    def add_bias(out, bias, n_rows, n_cols):
        """out[r, j] += bias[j]."""
        index = cuda.grid(1)
        if index < n_rows * n_cols:
            r = index // n_cols
            j = index - r * n_cols
            out[r, j] += bias[j]

    @cuda.jit
    def cross_entropy_rows(logits, codes, weights, total_weight, row_loss, d_logits,
                           n_rows, n_classes):
        """One thread per row: w l of the row (float64) and d loss / d logits,
        as ``_losses.cross_entropy`` (softmax in float64, shifted by the row max)."""
        r = cuda.grid(1)
        if r >= n_rows:
            return
        top = float(logits[r, 0])
        for j in range(1, n_classes):
            top = max(top, float(logits[r, j]))
        total = 0.0
        for j in range(n_classes):
            total += math.exp(float(logits[r, j]) - top)
        target = codes[r]
        scale = float(weights[r]) / total_weight
        for j in range(n_classes):
            p = math.exp(float(logits[r, j]) - top) / total
            if j == target:
                row_loss[r] = float(weights[r]) * -math.log(max(p, 2.2250738585072014e-308))
                p -= 1.0
            d_logits[r, j] = p * scale

    @cuda.jit
    def squared_error_rows(predictions, values, weights, total_weight, row_loss, d_predictions,
                           n_rows, n_outputs):
        """One thread per row, as ``_losses.mean_squared_error``."""
        r = cuda.grid(1)
        if r >= n_rows:
            return
        scale = scalar((2.0 / (n_outputs * total_weight)) * float(weights[r]))
        total = 0.0
        for j in range(n_outputs):
            residual = predictions[r, j] - values[r, j]
            total += float(residual) * float(residual)
            d_predictions[r, j] = residual * scale
        row_loss[r] = float(weights[r]) * (total / n_outputs)

    @cuda.jit
    def loss_total(row_loss, n_rows, total_weight, out):
        """out[0] = sum_r row_loss[r] / total_weight, in row order (one thread)."""
        if cuda.grid(1) == 0:
            total = 0.0
            for r in range(n_rows):
                total += row_loss[r]
            out[0] = total / total_weight

    @cuda.jit
    def add_l2(grads, params, mask, factor, n):
        """grads[i] += factor params[i] where mask[i]."""
        i = cuda.grid(1)
        if i < n and mask[i]:
            grads[i] += params[i] * factor

    @cuda.jit
    def clip_values(grads, threshold, n):
        i = cuda.grid(1)
        if i < n:
            grads[i] = min(max(grads[i], -threshold), threshold)

    @cuda.jit
    def clip_norms(grads, starts, ends, threshold):
        """Block b rescales grads[starts[b]:ends[b]] to L2 norm ``threshold``
        when its norm exceeds it; partial sums added in a fixed order.

        Shared memory is dynamic, as in ``cuda_lstm`` (whose module docstring
        says why): ``shared[:clip_threads]`` holds the partial sums and
        ``shared[clip_threads]`` the factor every thread applies.
        """
        shared = cuda.shared.array(0, float64)
        t = cuda.threadIdx.x
        start, end = starts[cuda.blockIdx.x], ends[cuda.blockIdx.x]
        acc = 0.0
        for i in range(start + t, end, clip_threads):
            acc += float(grads[i]) * float(grads[i])
        shared[t] = acc
        cuda.syncthreads()
        if t == 0:
            total = 0.0
            for q in range(clip_threads):
                total += shared[q]
            norm = math.sqrt(total)
            shared[clip_threads] = threshold / norm if norm > threshold else 1.0
        cuda.syncthreads()
        factor = shared[clip_threads]
        if factor != 1.0:
            scale = scalar(factor)
            for i in range(start + t, end, clip_threads):
                grads[i] *= scale

    @cuda.jit
    def adam(params, grads, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2,
             step_size, epsilon_hat, n):
        """One Adam step, in the operation order of ``_optim.Adam.step``."""
        i = cuda.grid(1)
        if i < n:
            g = grads[i]
            m_i = m[i] * beta1 + g * one_minus_beta1
            v_i = v[i] * beta2 + (g * g) * one_minus_beta2
            m[i] = m_i
            v[i] = v_i
            params[i] -= (m_i / (math.sqrt(v_i) + epsilon_hat)) * step_size

    return SimpleNamespace(
        scalar=scalar, fill=fill, add_into=add_into, copy_block=copy_block,
        add_bias=add_bias, cross_entropy_rows=cross_entropy_rows,
        squared_error_rows=squared_error_rows, loss_total=loss_total, add_l2=add_l2,
        clip_values=clip_values, clip_norms=clip_norms, adam=adam,
    )


def _device_views(flat, shapes):
    """Named, shaped views of a flat device array (as ``_weights.unflatten``)."""
    views, start = {}, 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        views[name] = flat[start:start + size].reshape(shape)
        start += size
    return views


class DeviceAdam:
    """Adam with its moments on the device, as ``_optim.Adam``.

    ``state_dict``/``load_state_dict`` exchange the same host dict as
    ``_optim.Adam``'s (so a CPU fit can be continued here and back); they copy
    the moments across and are meant for once per fit or per epoch, not per step.
    """

    _state_arrays = ("first_moment", "second_moment")

    def __init__(self, n_parameters, dtype, learning_rate, beta1=0.9, beta2=0.999,
                 epsilon=1e-8):
        self.learning_rate = learning_rate
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.n_steps = 0
        self._kernels = training_kernels(np.dtype(dtype).name)
        self.first_moment = _device_zeros((n_parameters,), dtype)
        self.second_moment = _device_zeros((n_parameters,), dtype)

    def step(self, params, grads):
        """Update the device ``params`` in place from the device ``grads``."""
        self.n_steps += 1
        sqrt_c2 = np.sqrt(1 - self.beta2**self.n_steps)
        step_size = self.learning_rate * sqrt_c2 / (1 - self.beta1**self.n_steps)
        epsilon_hat = self.epsilon * sqrt_c2
        s = self._kernels.scalar
        _pointwise(self._kernels.adam, params.size, params, grads, self.first_moment,
                   self.second_moment, s(self.beta1), s(1 - self.beta1), s(self.beta2),
                   s(1 - self.beta2), s(step_size), s(epsilon_hat), params.size)

    def state_dict(self):
        state = {name: getattr(self, name).copy_to_host() for name in self._state_arrays}
        state["n_steps"] = self.n_steps
        return state

    def load_state_dict(self, state):
        expected = set(self._state_arrays) | {"n_steps"}
        if set(state) != expected:
            raise ValueError(f"DeviceAdam state must have the keys {sorted(expected)}; "
                             f"got {sorted(state)}.")
        for name in self._state_arrays:
            buffer = getattr(self, name)
            value = np.ascontiguousarray(state[name], dtype=buffer.dtype)
            if value.shape != buffer.shape:
                raise ValueError(f"DeviceAdam state {name!r} has shape {value.shape}; "
                                 f"expected {buffer.shape}.")
        for name in self._state_arrays:
            getattr(self, name).copy_to_device(
                np.ascontiguousarray(state[name], dtype=getattr(self, name).dtype))
        self.n_steps = int(state["n_steps"])


def _device_zeros(shape, dtype):
    """A device array of zeros, filled on the device (no host copy)."""
    K = training_kernels(np.dtype(dtype).name)
    size = int(np.prod(shape))
    flat = cuda.device_array(size, dtype=dtype)
    with cuda_lstm.simulator_turn():
        _pointwise(K.fill, size, flat, K.scalar(0), size)
    return flat.reshape(shape) if len(shape) != 1 else flat


class _DeviceShard:
    """One packed shard on the device, and where its rows sit in its batch."""

    def __init__(self, shard, row_offset):
        self.X = cuda.to_device(np.ascontiguousarray(shard.X))
        self.batch_sizes = np.asarray(shard.batch_sizes)  # host: the kernels walk it
        self.size = shard.size
        self.n_rows = shard.X.shape[0]
        self.row_offset = row_offset


class _DeviceBatch:
    """One mini-batch on the device: its shards, targets and weights."""

    def __init__(self, chunks, targets, is_classifier):
        if len(chunks) != 1:
            raise NotImplementedError(
                "DeviceTrainer does not do truncated backpropagation through time "
                "(an integer sequence_length); use a CPU backend.")
        shards = [shard for shard, _ in chunks[0]]
        rows = np.concatenate([shard.order for shard in shards])
        weights = targets.weights[rows]
        self.total_weight = float(weights.sum(dtype=np.float64))
        self.n_rows = len(rows)
        self.shards, offset = [], 0
        for shard in shards:
            self.shards.append(_DeviceShard(shard, offset))
            offset += shard.size
        values = targets.values[rows]
        self.values = cuda.to_device(np.ascontiguousarray(
            values.astype(np.int64) if is_classifier else values))
        self.weights = cuda.to_device(np.ascontiguousarray(weights))


class DeviceTrainer(Trainer):
    """:class:`fastlstm._trainer.Trainer` with every array on the GPU.

    Same constructor and public surface as ``Trainer`` (``run_epochs``,
    ``prepare``, ``optimizer`` with ``state_dict``/``load_state_dict`` and
    ``learning_rate``, ``epochs_done``, ``iterations_done``); ``flat_params``
    (host) is updated from the device copy when ``run_epochs`` returns (or
    raises). ``backend`` must be the cuda backend; the kernels are called
    directly from :mod:`fastlstm._kernels.cuda_lstm`.

    Raises
    ------
    NotImplementedError
        For what the device path does not do (see the module docstring).
    """

    def __init__(self, flat_params, shapes, net_shape, loss, options, backend):
        unsupported = []
        if options.dropout > 0 and net_shape.num_layers > 1:
            unsupported.append(f"dropout={options.dropout} between layers")
        if isinstance(options.sequence_length, int) and not isinstance(
                options.sequence_length, bool):
            unsupported.append("truncated backpropagation through time "
                               f"(sequence_length={options.sequence_length})")
        if net_shape.proj_size > 0:
            unsupported.append(f"proj_size={net_shape.proj_size}")
        if options.optimizer != "adam":
            unsupported.append(f"optimizer={options.optimizer!r} (only 'adam')")
        if loss is not cross_entropy and loss is not mean_squared_error:
            unsupported.append(f"the loss {getattr(loss, '__name__', loss)!r}")
        if flat_params.dtype not in (np.float32, np.float64):
            unsupported.append(f"dtype {flat_params.dtype}")
        if unsupported:
            raise NotImplementedError(
                "The device-resident CUDA training path does not support "
                + ", ".join(unsupported) + "; use the host Trainer (backend='numba', "
                "'cython' or 'reference') for these options.")
        self.flat_params = flat_params
        self.shapes = shapes
        self.net_shape = net_shape
        self.loss = loss
        self.options = options
        self.backend = backend
        self.dtype = flat_params.dtype
        self._K = training_kernels(self.dtype.name)
        self._L = cuda_lstm.kernels(self.dtype.name)
        self._is_classifier = loss is cross_entropy
        n = flat_params.size
        self._params = cuda.device_array(n, dtype=self.dtype)
        self._grads = cuda.device_array(n, dtype=self.dtype)
        self.params = _device_views(self._params, shapes)
        self.grads = _device_views(self._grads, shapes)
        self._shard_flat_grads, self._shard_grad_views = [], []
        mask = np.concatenate([
            np.full(int(np.prod(shape)), name.startswith(("weight", "head.weight")))
            for name, shape in shapes
        ])
        self.weight_mask = mask
        self._mask = cuda.to_device(mask.astype(np.uint8))
        starts = np.cumsum([0] + [int(np.prod(shape)) for _, shape in shapes])
        self._segments = (cuda.to_device(starts[:-1].astype(np.int64)),
                          cuda.to_device(starts[1:].astype(np.int64)))
        self._whole = (cuda.to_device(np.array([0], np.int64)),
                       cuda.to_device(np.array([n], np.int64)))
        self._loss_value = cuda.device_array(1, dtype=np.float64)
        self.optimizer = DeviceAdam(n, self.dtype, options.learning_rate, beta1=options.beta1,
                                    beta2=options.beta2, epsilon=options.epsilon)
        self.epochs_done = 0
        self.iterations_done = 0

    # -- host <-> device, once per call ------------------------------------------

    def _upload(self, sequences, lengths, targets, rng):
        return [_DeviceBatch(chunks, targets, self._is_classifier)
                for chunks in self.prepare(sequences, lengths, targets, rng)]

    def _sync_to_host(self):
        self._params.copy_to_host(self.flat_params)

    def _shard_gradients(self, n_shards):
        while len(self._shard_flat_grads) < n_shards:
            buffer = _device_zeros((self.flat_params.size,), self.dtype)
            self._shard_flat_grads.append(buffer)
            self._shard_grad_views.append(_device_views(buffer, self.shapes))
        return self._shard_flat_grads[:n_shards], self._shard_grad_views[:n_shards]

    # -- the network on one shard -----------------------------------------------

    def _shard_forward(self, shard, features):
        """Forward through every layer; writes the last layer's final hidden
        states into ``features`` at the shard's rows. Returns what backward needs."""
        K, shape, P, dtype = self._K, self.net_shape, self.params, self.dtype
        hidden, state, n_dir = shape.hidden_size, shape.state_size, shape.n_directions
        n_rows, size = shard.n_rows, shard.size
        no_proj = _NO_PROJECTION[dtype.type]
        zeros_h = _device_zeros((size, state), dtype)
        zeros_c = _device_zeros((size, hidden), dtype)
        layer_input, inputs, saved = shard.X, [], {}
        for layer in range(shape.num_layers):
            inputs.append(layer_input)
            layer_output = cuda.device_array((n_rows, shape.n_features_out), dtype=dtype)
            for direction in range(n_dir):
                name = layer_name(layer, direction)
                bias = cuda.device_array(GATES * hidden, dtype=dtype)
                _pointwise(K.add_into, bias.size, P[f"bias_ih_{name}"], P[f"bias_hh_{name}"],
                           bias, bias.size)
                H = cuda.device_array((n_rows, state), dtype=dtype)
                s = {"Hprev": cuda.device_array((n_rows, state), dtype=dtype),
                     "Cprev": cuda.device_array((n_rows, hidden), dtype=dtype),
                     "TC": cuda.device_array((n_rows, hidden), dtype=dtype),
                     "gates": cuda.device_array((n_rows, GATES * hidden), dtype=dtype)}
                h_n = cuda.device_array((size, state), dtype=dtype)
                c_n = cuda.device_array((size, hidden), dtype=dtype)
                cuda_lstm.forward(
                    layer_input, shard.batch_sizes, P[f"weight_ih_{name}"],
                    P[f"weight_hh_{name}"], bias, no_proj, zeros_h, zeros_c, direction == 1,
                    shape.gate_kind, shape.state_kind, H, s["Hprev"], s["Cprev"], s["TC"],
                    s["gates"], no_proj, h_n, c_n, None)
                _pointwise(K.copy_block, n_rows * state, H, 0, 0, layer_output, 0,
                           direction * state, n_rows, state)
                if layer == shape.num_layers - 1:
                    _pointwise(K.copy_block, size * state, h_n, 0, 0, features,
                               shard.row_offset, direction * state, size, state)
                saved[(layer, direction)] = s
            layer_input = layer_output
        return {"inputs": inputs, "saved": saved, "zeros_h": zeros_h, "zeros_c": zeros_c}

    def _shard_backward(self, shard, forward, d_features, grads):
        K, shape, P, dtype = self._K, self.net_shape, self.params, self.dtype
        hidden, state, n_dir = shape.hidden_size, shape.state_size, shape.n_directions
        n_rows, size = shard.n_rows, shard.size
        no_proj = _NO_PROJECTION[dtype.type]
        zeros_h, zeros_c = forward["zeros_h"], forward["zeros_c"]
        zeros_H = None
        d_layer_output = None
        for layer in reversed(range(shape.num_layers)):
            layer_input = forward["inputs"][layer]
            parts = []
            for direction in range(n_dir):
                name = layer_name(layer, direction)
                s = forward["saved"][(layer, direction)]
                if d_layer_output is None:
                    if zeros_H is None:
                        zeros_H = _device_zeros((n_rows, state), dtype)
                    dH = zeros_H
                else:
                    dH = cuda.device_array((n_rows, state), dtype=dtype)
                    _pointwise(K.copy_block, n_rows * state, d_layer_output, 0,
                               direction * state, dH, 0, 0, n_rows, state)
                if layer == shape.num_layers - 1:
                    dh_n = cuda.device_array((size, state), dtype=dtype)
                    _pointwise(K.copy_block, size * state, d_features, shard.row_offset,
                               direction * state, dh_n, 0, 0, size, state)
                else:
                    dh_n = zeros_h
                # Nothing reads the first layer's input gradient: 0 rows skips it.
                dX = cuda.device_array((layer_input.shape[0] if layer > 0 else 0,
                                        layer_input.shape[1]), dtype=dtype)
                cuda_lstm.backward(
                    layer_input, shard.batch_sizes, P[f"weight_ih_{name}"],
                    P[f"weight_hh_{name}"], None, no_proj, zeros_h, zeros_c, direction == 1,
                    shape.gate_kind, shape.state_kind, s["Hprev"], s["Cprev"], s["TC"],
                    s["gates"], no_proj, dH, dh_n, zeros_c,
                    dX, grads[f"weight_ih_{name}"], grads[f"weight_hh_{name}"],
                    grads[f"bias_ih_{name}"], no_proj,
                    cuda.device_array((size, state), dtype=dtype),
                    cuda.device_array((size, hidden), dtype=dtype),
                    cuda.device_array((n_rows, GATES * hidden), dtype=dtype), no_proj, no_proj)
                # Both torch biases enter the gates as one sum: one gradient.
                n_bias = GATES * hidden
                _pointwise(K.copy_block, n_bias, grads[f"bias_ih_{name}"].reshape((1, n_bias)),
                           0, 0, grads[f"bias_hh_{name}"].reshape((1, n_bias)), 0, 0, 1, n_bias)
                parts.append(dX)
            if layer == 0:
                break
            if n_dir == 2:
                _pointwise(K.add_into, parts[0].size, parts[0].reshape(parts[0].size),
                           parts[1].reshape(parts[1].size), parts[0].reshape(parts[0].size),
                           parts[0].size)
            d_layer_output = parts[0]

    # -- one update ----------------------------------------------------------------

    def _device_step(self, batch):
        """Forward, loss, backward and an Adam step on one device batch.

        Returns the batch's loss (the one value copied back) and its row count.
        """
        if batch.n_rows == 0 or batch.total_weight == 0:
            return 0.0, 0
        with cuda_lstm.simulator_turn():  # one step's launches, uninterrupted
            return self._launch_step(batch)

    def _launch_step(self, batch):
        K, L, shape, options, dtype = self._K, self._L, self.net_shape, self.options, self.dtype
        n_features, n_rows = shape.n_features_out, batch.n_rows
        features = cuda.device_array((n_rows, n_features), dtype=dtype)
        forwards = [self._shard_forward(shard, features) for shard in batch.shards]
        head_w, head_b = self.params["head.weight"], self.params["head.bias"]
        n_outputs = head_b.shape[0]
        outputs = cuda.device_array((n_rows, n_outputs), dtype=dtype)
        launch_gemm(L, features, head_w, outputs, n_rows, n_outputs, n_features, trans_b=True)
        _pointwise(K.add_bias, n_rows * n_outputs, outputs, head_b, n_rows, n_outputs)
        row_loss = cuda.device_array(n_rows, dtype=np.float64)
        d_outputs = cuda.device_array((n_rows, n_outputs), dtype=dtype)
        rows_kernel = K.cross_entropy_rows if self._is_classifier else K.squared_error_rows
        _pointwise(rows_kernel, n_rows, outputs, batch.values, batch.weights, batch.total_weight,
                   row_loss, d_outputs, n_rows, n_outputs)
        K.loss_total[1, 1](row_loss, n_rows, batch.total_weight, self._loss_value)
        value = float(self._loss_value.copy_to_host()[0])
        if not np.isfinite(value):
            raise FloatingPointError(
                f"The training loss became {value} at epoch {self.epochs_done + 1}; training "
                "stopped. Lower learning_rate, set gradient_threshold, or normalise the inputs."
            )
        d_features = cuda.device_array((n_rows, n_features), dtype=dtype)
        launch_gemm(L, d_outputs, head_w, d_features, n_rows, n_features, n_outputs)
        shard_flat_grads, shard_grads = self._shard_gradients(len(batch.shards))
        for shard, forward, grads in zip(batch.shards, forwards, shard_grads):
            self._shard_backward(shard, forward, d_features, grads)
        # Shard gradients summed in a fixed order, as the host trainer does.
        n = self._grads.size
        _pointwise(K.copy_block, n, shard_flat_grads[0].reshape((1, n)), 0, 0,
                   self._grads.reshape((1, n)), 0, 0, 1, n)
        for buffer in shard_flat_grads[1:]:
            _pointwise(K.add_into, n, self._grads, buffer, self._grads, n)
        launch_gemm(L, d_outputs, features, self.grads["head.weight"], n_outputs, n_features,
                    n_rows, trans_a=True)
        launch_column_sum(L, d_outputs, self.grads["head.bias"], n_rows, n_outputs)
        if options.l2_regularization > 0:
            _pointwise(K.add_l2, n, self._grads, self._params, self._mask,
                       K.scalar(options.l2_regularization), n)
        if options.gradient_threshold is not None:
            self._clip(options.gradient_threshold, options.gradient_threshold_method)
        self.optimizer.step(self._params, self._grads)
        self.iterations_done += 1
        return value, n_rows

    def _clip(self, threshold, method):
        K, n = self._K, self._grads.size
        if method == "absolute-value":
            _pointwise(K.clip_values, n, self._grads, K.scalar(threshold), n)
            return
        if method == "l2norm":
            starts, ends = self._segments
        elif method == "global-l2norm":
            starts, ends = self._whole
        else:
            raise ValueError(f"Unknown gradient_threshold_method {method!r}.")
        K.clip_norms[starts.size, _CLIP_THREADS, 0, _CLIP_SHARED_BYTES](
            self._grads, starts, ends, float(threshold))

    # -- epochs ----------------------------------------------------------------------

    def run_epochs(self, sequences, lengths, targets, n_epochs, rng, *, validate=None, log=None):
        """Train for up to ``n_epochs`` epochs, as :meth:`Trainer.run_epochs`.

        Returns
        -------
        history : list of dict
            Per epoch: ``epoch``, ``loss``, ``val_loss``, ``val_score``,
            ``learning_rate``, ``seconds``.
        """
        if targets.per_step:
            raise NotImplementedError(
                "The device-resident CUDA training path trains on one target per sequence "
                "only, not per-step targets (output_mode='sequence'); use a CPU backend.")
        self._params.copy_to_device(np.ascontiguousarray(self.flat_params))
        try:
            return self._run_epochs(sequences, lengths, targets, n_epochs, rng, validate, log)
        finally:
            self._sync_to_host()

    def _run_epochs(self, sequences, lengths, targets, n_epochs, rng, validate, log):
        options = self.options
        batches = self._upload(sequences, lengths, targets, rng)
        rebatch = options.shuffle == "every-epoch" and not options.bucketing
        schedule = np.arange(len(batches))
        if options.shuffle == "once":
            schedule = rng.permutation(schedule)
        # validate reads the host parameters: copy them there first.
        epochs = EpochRecord(self, validate, log, before_validate=self._sync_to_host)
        for _ in range(n_epochs):
            epoch = self.epochs_done + 1
            start = time.perf_counter()
            self.optimizer.learning_rate = learning_rate_at(
                epoch, options.learning_rate, options.learning_rate_schedule,
                options.learning_rate_drop_factor, options.learning_rate_drop_period)
            if rebatch and epochs.history:
                batches = self._upload(sequences, lengths, targets, rng)
            if options.shuffle == "every-epoch":
                schedule = rng.permutation(len(batches))
            total_loss, total_rows = 0.0, 0
            for done, batch_index in enumerate(schedule, start=1):
                value, n_rows = self._device_step(batches[batch_index])
                total_loss += value * n_rows
                total_rows += n_rows
                if log is not None:
                    log.progress(epoch, done, len(schedule))
            self.epochs_done = epoch
            if epochs.end(epoch, total_loss, total_rows, start):
                break
        best = epochs.best()
        if best is not None:
            self._params.copy_to_device(best[0])
            self.optimizer.load_state_dict(best[1])
        return epochs.history
