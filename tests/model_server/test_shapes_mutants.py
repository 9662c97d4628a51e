"""Shape-plan rules that mutmut's survivors showed untested (``make mutate``).

The existing tests divide budgets exactly and plan uniform lengths; these use a budget that
leaves a remainder and mixed lengths whose padded buckets differ, so an off-by-one or a float
division changes the plan.
"""

from __future__ import annotations

from model_server.shapes import ForwardBatch, ShapePlan


def test_rows_for_rounds_a_budget_with_a_remainder_down_to_whole_rows() -> None:
    plan = ShapePlan(max_rows=8, max_tokens=100, lengths=(30,))
    rows = plan.rows_for(30)
    assert (rows, type(rows)) == (3, int)  # 100 // 30, not 3.33
    assert plan.rows_for(101) == 1  # longer than the budget: still one row
    assert plan.rows_for(12) == 8  # the row cap, not 100 // 12 = 8.33


def test_plan_of_mixed_lengths_groups_by_the_budget_of_the_longest_row() -> None:
    """Sorted: 5, 6, 7 (bucket 8), 12 (bucket 16), 30 (bucket 32, two rows at most)."""
    plan = ShapePlan(max_rows=4, max_tokens=64, lengths=(8, 16, 32))
    assert plan.plan([30, 5, 12, 7, 6]) == [
        ForwardBatch(indices=(1, 4, 3, 2), rows=4, length=16),
        ForwardBatch(indices=(0,), rows=1, length=32),
    ]
