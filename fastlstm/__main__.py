"""``python -m fastlstm``: the Japanese Vowels demo.

Trains a bidirectional LSTM on the bundled Japanese Vowels data with the
recipe of MATLAB's "Sequence Classification Using Deep Learning" example
(BiLSTM with 100 hidden units, last output, mini-batch 27, Adam with learning
rate 1e-3, gradient threshold 1) and prints the test accuracy, the fit time
and, separately, the one-off time to compile or load the kernels.
"""

import argparse
import time

import numpy as np


def main(argv=None):
    """Run the demo; ``argv`` as for :func:`argparse.ArgumentParser.parse_args`."""
    parser = argparse.ArgumentParser(prog="python -m fastlstm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="random_state of each run (default 0 1 2)")
    parser.add_argument("--backend", default="auto", help="compute backend (default auto)")
    args = parser.parse_args(argv)

    from . import LSTMClassifier
    from ._backends import get_backend
    from ._trainer import warm_up
    from .datasets import load_japanese_vowels

    # The kernels are imported lazily, so this covers loading them: numba's
    # from its on-disk cache (or compiling them, the very first time, if
    # numba is asked for explicitly), or the ahead-of-time Cython kernels.
    start = time.perf_counter()
    backend = get_backend(args.backend)
    warm_up(backend, np.dtype(np.float32))
    startup_seconds = time.perf_counter() - start

    X_train, y_train, X_test, y_test = load_japanese_vowels()
    print(f"Japanese Vowels: {len(X_train)} training and {len(X_test)} test sequences, "
          f"{X_train[0].shape[1]} features, lengths {min(map(len, X_train))}-"
          f"{max(map(len, X_train + X_test))}")
    print(f"one-off start-up (load or compile the {backend.name} kernels): {startup_seconds:.2f} s")
    accuracies = []
    for seed in args.seeds:
        model = LSTMClassifier(hidden_size=100, bidirectional=True, batch_size=27,
                               learning_rate=1e-3, gradient_threshold=1.0,
                               max_epochs=args.epochs, backend=args.backend,
                               random_state=seed)
        start = time.perf_counter()
        model.fit(X_train, y_train)
        fit_seconds = time.perf_counter() - start
        accuracy = model.score(X_test, y_test)
        accuracies.append(accuracy)
        print(f"seed {seed}: test accuracy {accuracy:.4f}   fit {fit_seconds:.2f} s "
              f"({args.epochs} epochs, final loss {model.history_[-1]['loss']:.4f})")
    print(f"mean test accuracy over {len(accuracies)} seed(s): {np.mean(accuracies):.4f} "
          f"(min {np.min(accuracies):.4f})")


if __name__ == "__main__":
    main()
