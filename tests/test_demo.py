"""The README's first command: ``python -m fastlstm`` on the bundled data."""

import re

from fastlstm.__main__ import main


def test_demo_trains_to_high_accuracy(capsys):
    # One seed and fewer epochs than the demo's default, to keep the suite
    # quick; still the MATLAB recipe, and still well above chance (0.24).
    main(["--epochs", "25", "--seeds", "0"])
    out = capsys.readouterr().out
    assert "one-off start-up" in out and "kernels" in out
    accuracy = float(re.search(r"seed 0: test accuracy ([0-9.]+)", out).group(1))
    assert accuracy >= 0.93, out
    assert re.search(r"fit [0-9.]+ s", out)
