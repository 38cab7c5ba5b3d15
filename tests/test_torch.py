"""fastlstm against torch.nn.LSTM on exact variable-length (packed) input.

Skipped when torch is not installed: it is never a dependency of fastlstm.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastlstm import LSTMClassifier  # noqa: E402
from fastlstm._backends import get_backend  # noqa: E402
from fastlstm._bucketing import length_sorted_batches, pack_batch  # noqa: E402
from fastlstm._network import NetworkShape, network_backward, network_forward  # noqa: E402
from fastlstm._weights import init_parameters, parameter_shapes, unflatten  # noqa: E402

N_FEATURES = 3


def torch_lstm(params, shape):
    lstm = torch.nn.LSTM(N_FEATURES, shape.hidden_size, num_layers=shape.num_layers,
                         bidirectional=shape.bidirectional, proj_size=shape.proj_size).double()
    lstm.load_state_dict({name: torch.tensor(params[name], dtype=torch.float64)
                          for name in lstm.state_dict()})
    return lstm


@pytest.mark.parametrize("backend_name", ["numba", "cython"])
@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 1e-5), (np.float64, 1e-9)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("proj_size", [0, 3], ids=["plain", "proj"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_network_matches_torch(bidirectional, num_layers, proj_size, dtype, tolerance,
                               backend_name):
    rng = np.random.default_rng(0)
    shape = NetworkShape(hidden_size=5, num_layers=num_layers, bidirectional=bidirectional,
                         proj_size=proj_size)
    sequences = [rng.standard_normal((n, N_FEATURES)) for n in (4, 9, 1, 6, 6)]
    lengths = np.array([len(seq) for seq in sequences], dtype=np.int64)
    shapes = parameter_shapes(N_FEATURES, 5, num_layers, bidirectional, n_outputs=1,
                              proj_size=proj_size)
    flat = init_parameters(shapes, np.random.RandomState(0), np.float64)
    flat += 0.3 * rng.standard_normal(flat.size)
    params = unflatten(flat, shapes)

    # torch, float64, on a PackedSequence: its exact variable-length path.
    lstm = torch_lstm(params, shape)
    inputs = [torch.tensor(seq, requires_grad=True) for seq in sequences]
    packed = torch.nn.utils.rnn.pack_sequence(inputs, enforce_sorted=False)
    output, (h_n, _) = lstm(packed)
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(output, batch_first=True)
    final = torch.cat([h_n[-2], h_n[-1]], dim=1) if bidirectional else h_n[-1]
    d_out = rng.standard_normal(padded.shape)
    d_final = rng.standard_normal(final.shape)
    mask = np.zeros(padded.shape)
    for j, n in enumerate(lengths):
        mask[j, :n] = 1
    objective = (padded * torch.tensor(d_out * mask)).sum() + (final * torch.tensor(d_final)).sum()
    objective.backward()

    # fastlstm, in the requested dtype, through the same packed layout.
    (order,) = length_sorted_batches(lengths, batch_size=len(sequences))
    typed = [np.ascontiguousarray(seq, dtype=dtype) for seq in sequences]
    batch = pack_batch(typed, lengths, order)
    typed_flat = flat.astype(dtype)
    typed_params = unflatten(typed_flat, shapes)
    grads_flat = np.zeros_like(typed_flat)
    grads = unflatten(grads_flat, shapes)
    backend = get_backend(backend_name)
    (result,) = network_forward(typed_params, shape, [batch], backend)
    packed_rows = [(t, j) for t in range(len(batch.batch_sizes)) for j in range(batch.batch_sizes[t])]
    d_outputs = np.array([d_out[order[j], t] for t, j in packed_rows], dtype=dtype)
    (backward,) = network_backward(typed_params, [grads], shape, [batch], backend, [result],
                                   d_outputs=[d_outputs],
                                   d_final_hidden=[d_final[order].astype(dtype)])
    d_inputs = backward.d_inputs

    def check(name, ours, theirs):
        scale = max(np.abs(theirs).max(), 1e-12)
        error = np.abs(ours.astype(np.float64) - theirs).max() / scale
        assert error < tolerance, f"{name}: relative error {error:.3g}"

    theirs_outputs = np.array([padded[order[j], t].detach().numpy() for t, j in packed_rows])
    check("outputs", result.outputs, theirs_outputs)
    check("final_hidden", result.final_hidden, final.detach().numpy()[order])
    theirs_d_inputs = np.array([inputs[order[j]].grad.numpy()[t] for t, j in packed_rows])
    check("d_inputs", d_inputs, theirs_d_inputs)
    for name, parameter in lstm.named_parameters():
        check(name, grads[name], parameter.grad.numpy())


def test_fitted_classifier_runs_in_torch():
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((rng.integers(2, 9), N_FEATURES)).astype(np.float32) for _ in range(40)]
    y = rng.integers(0, 3, 40)
    # No input normalisation: the raw torch modules below have none.
    clf = LSTMClassifier(hidden_size=6, num_layers=2, bidirectional=True, proj_size=4,
                         normalization=None, max_epochs=2, random_state=0).fit(X, y)
    lstm = torch.nn.LSTM(N_FEATURES, 6, num_layers=2, bidirectional=True, proj_size=4)
    head = torch.nn.Linear(8, 3)
    lstm.load_state_dict({name: torch.tensor(clf.weights_[name]) for name in lstm.state_dict()})
    head.load_state_dict({"weight": torch.tensor(clf.weights_["head.weight"]),
                          "bias": torch.tensor(clf.weights_["head.bias"])})
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_sequence([torch.tensor(seq) for seq in X],
                                                  enforce_sorted=False)
        _, (h_n, _) = lstm(packed)
        proba = torch.softmax(head(torch.cat([h_n[-2], h_n[-1]], dim=1)), dim=1).numpy()
    np.testing.assert_allclose(clf.predict_proba(X), proba, rtol=1e-4, atol=1e-6)
