from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioqueue import RetryPolicy

policies = st.builds(
    RetryPolicy,
    base=st.floats(min_value=0, max_value=100),
    factor=st.floats(min_value=1, max_value=10),
    max_delay=st.floats(min_value=0, max_value=10_000),
    jitter=st.floats(min_value=0, max_value=1),
)


def test_exact_delays_without_jitter() -> None:
    p = RetryPolicy(base=1.0, factor=2.0, max_delay=300.0, jitter=0.0)
    assert [p.delay(n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]


def test_jitter_spreads_within_the_band() -> None:
    p = RetryPolicy(base=10.0, factor=2.0, max_delay=1000.0, jitter=0.1)
    assert p.delay(1, 0.0) == pytest.approx(9.0)
    assert p.delay(1, 0.5) == pytest.approx(10.0)
    assert p.delay(1, 0.9999999) == pytest.approx(11.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base": -1.0}, "base"),
        ({"factor": 0.5}, "retry_factor"),
        ({"jitter": 2.0}, "retry_jitter"),
        ({"max_delay": float("inf")}, "max_delay"),
        # A retry due past any date: its job could not be shown (HTTP 500).
        ({"max_delay": 1e300}, "max_delay: at most 316224000 seconds"),
    ],
)
def test_bad_policy_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)


def test_attempt_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay(0)


def uncapped(policy: RetryPolicy, attempt: int) -> float:
    try:
        return min(policy.max_delay, policy.base * policy.factor ** (attempt - 1))
    except OverflowError:
        return 0.0 if policy.base == 0 else policy.max_delay


@given(
    policies,
    st.integers(min_value=1, max_value=10_000),
    st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_delay_is_bounded(policy: RetryPolicy, attempt: int, rand: float) -> None:
    d = policy.delay(attempt, rand)
    assert 0.0 <= d <= policy.max_delay
    exact = uncapped(policy, attempt)
    assert d >= exact * (1 - policy.jitter) - 1e-9 * max(1.0, exact)
    assert d <= exact * (1 + policy.jitter) + 1e-9 * max(1.0, exact)


@given(policies, st.integers(min_value=1, max_value=200))
def test_without_jitter_delays_never_shrink(policy: RetryPolicy, attempt: int) -> None:
    exact = RetryPolicy(
        base=policy.base, factor=policy.factor, max_delay=policy.max_delay, jitter=0
    )
    assert exact.delay(attempt + 1) >= exact.delay(attempt)
