"""The next epoch's order drawn on a thread while an epoch trains (l2fast.orders): the same orders, parameters and
generator state as drawing each order when it is needed."""
import numpy as np
import pytest

import l2fast
from l2fast import orders
from l2fast.testing import make_problem


def test_orders_drawn_ahead_are_the_generators_own_draws_in_turn():
    m = 1000
    plain = np.random.default_rng(5)
    expected = [plain.permutation(m) for _ in range(4)]
    ahead = orders.EpochOrders(np.random.default_rng(5), m, epochs=4, ahead=True)
    for k in range(4):
        np.testing.assert_array_equal(ahead.draw(), expected[k])
    ahead.close()


@pytest.mark.parametrize("used", [1, 2, 3])
def test_an_order_drawn_ahead_and_not_used_is_undone(used):
    # a fit that stops after `used` of 5 epochs leaves the generator where `used` draws leave it
    m = 777
    plain = np.random.default_rng(9)
    for _ in range(used):
        plain.permutation(m)
    rng = np.random.default_rng(9)
    ahead = orders.EpochOrders(rng, m, epochs=5, ahead=True)
    for _ in range(used):
        ahead.draw()
    assert ahead.state == plain.bit_generator.state
    ahead.close()
    assert rng.bit_generator.state == plain.bit_generator.state
    np.testing.assert_array_equal(rng.permutation(m), plain.permutation(m))


def test_a_failed_draw_ahead_is_raised_by_the_draw_that_wanted_it():
    class Failing:
        def __init__(self):
            self.rng, self.calls = np.random.default_rng(0), 0
            self.bit_generator = self.rng.bit_generator

        def permutation(self, m):
            self.calls += 1
            if self.calls == 2:
                raise MemoryError("no room for the order")
            return self.rng.permutation(m)

    ahead = orders.EpochOrders(Failing(), 10, epochs=3, ahead=True)
    ahead.draw()
    with pytest.raises(MemoryError, match="no room"):
        ahead.draw()
    ahead.close()


def _fit(monkeypatch, ahead, **fit_options):
    # ahead: every order drawn on the helper thread (MIN_RECORDS 0), or none (MIN_RECORDS above m)
    monkeypatch.setattr(orders, "MIN_RECORDS", 0 if ahead else 10**9)
    X, y = make_problem("softmax", n_in=7, n_out=3, m=600, seed=4)
    nets = [l2fast.Network([7, 6, 3], lam=lam, backend="cpu", seed=2) for lam in (0.0, 0.5)]
    histories = l2fast.fit_together(nets, X, y, lr=0.05, batch_size=32, **fit_options)
    return nets, histories


@pytest.mark.parametrize("fit_options", [
    dict(epochs=4),
    dict(epochs=30, tol=1e9, n_iter_no_change=2),  # stops early: the order drawn ahead is undone
])
def test_fits_with_and_without_orders_drawn_ahead_agree_bit_for_bit(monkeypatch, fit_options):
    with_ahead, histories = _fit(monkeypatch, True, **fit_options)
    without, expected = _fit(monkeypatch, False, **fit_options)
    assert [h.n_iter for h in histories] == [h.n_iter for h in expected]
    if "tol" in fit_options:
        assert histories[0].n_iter < fit_options["epochs"]
    for a, b in zip(with_ahead, without):
        for p, q in zip(a.weights + a.biases, b.weights + b.biases):
            np.testing.assert_array_equal(p, q)
        # the next fit draws the same orders too
        assert a._shuffle_rng.bit_generator.state == b._shuffle_rng.bit_generator.state
