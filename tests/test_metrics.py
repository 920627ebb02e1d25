import numpy as np
import pytest

from tgdfer.train.metrics import scores


def test_war_uar_per_class_and_confusion():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 0, 1, 1, 0, 0])
    s = scores(y, p, 4)
    assert s.war == pytest.approx(4 / 7 * 100)
    assert s.per_class[:3].tolist() == pytest.approx([75.0, 50.0, 0.0])
    assert np.isnan(s.per_class[3])  # no test clips of class 3: left out of UAR
    assert s.uar == pytest.approx((75 + 50 + 0) / 3)
    assert s.confusion.tolist() == [[3, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
