"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from hypothesis import strategies as st

from trioqueue import Priority

priorities = st.sampled_from(list(Priority))
weights = st.fixed_dictionaries(
    {p: st.integers(min_value=1, max_value=20) for p in Priority}
)
# Which priorities have waiting work at each pick.
eligibility = st.tuples(st.booleans(), st.booleans(), st.booleans())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
