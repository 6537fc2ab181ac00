import pytest

from vlarl.eval import wilson_interval


def test_wilson_against_hand_values():
    # p = 0.5, n = 10, z = 1.96: centre 0.5, half-width 1.96*sqrt(0.025 + 0.0096)/1.3842
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
