"""The hot/cold scheduler: a permutation per epoch, run lengths, adaptation, state."""

from __future__ import annotations

from collections import Counter

import pytest

from trainer.data import BatchRef
from trainer.errors import TrainerError
from trainer.schedule import HotColdSchedule, ScheduleConfig

HOT = [BatchRef(0, g) for g in range(13)]
COLD = [BatchRef(1, g) for g in range(29)]


def drain(s: HotColdSchedule, losses: list[float] | None = None) -> list[tuple[int, BatchRef, str]]:
    out, probes = [], iter(losses or [])
    while True:
        if s.needs_probe():
            s.report(next(probes, 1.0))
            continue
        item = s.next()
        if item is None:
            return out
        out.append(item)


def runs(items: list[tuple[int, BatchRef, str]]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for _, _, kind in items:
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + 1)
        else:
            out.append((kind, 1))
    return out


@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_every_minibatch_exactly_once_per_epoch(mode: str) -> None:
    s = HotColdSchedule(HOT, COLD, ScheduleConfig(mode, switch_every=4, adapt_every=5), epochs=3)
    items = drain(s, [1.0, 0.9, 0.95, 2.0, 0.5, 0.5, 0.5, 3.0] * 5)
    for epoch in range(3):
        seen = Counter(ref for e, ref, _ in items if e == epoch)
        assert set(seen) == set(HOT) | set(COLD)
        assert set(seen.values()) == {1}
    assert [e for e, _, _ in items] == sorted(e for e, _, _ in items)
    kinds = {ref: kind for _, ref, kind in items}
    assert all(kinds[r] == "hot" for r in HOT) and all(kinds[r] == "cold" for r in COLD)
    assert s.next() is None and s.done


def test_fixed_runs_are_bounded_and_orders_are_seeded() -> None:
    cfg = ScheduleConfig("fixed", switch_every=5, seed=3)
    items = drain(HotColdSchedule(HOT, COLD, cfg, epochs=2))
    assert max(n for _, n in runs(items)) <= 5
    assert len(runs(items)) >= 2 * 29 // 5
    again = drain(HotColdSchedule(HOT, COLD, cfg, epochs=2))
    assert again == items
    other = drain(HotColdSchedule(HOT, COLD, ScheduleConfig("fixed", 5, seed=4), epochs=2))
    assert other != items
    epoch0 = [r for e, r, _ in items if e == 0]
    epoch1 = [r for e, r, _ in items if e == 1]
    assert epoch0 != epoch1  # reshuffled every epoch


def test_adaptive_lengthens_runs_while_loss_holds_and_shortens_when_not() -> None:
    cfg = ScheduleConfig("adaptive", adapt_min=1, adapt_max=8, adapt_every=3, tolerance=0.05)
    s = HotColdSchedule(HOT * 10, COLD * 10, cfg, epochs=1)
    lengths = []
    for loss in [1.0, 1.01, 0.99, 0.98, 0.97, 0.97, 1.5, 1.5]:
        while not s.needs_probe():
            assert s.next() is not None
        s.report(loss)
        lengths.append(s.run_length)
    assert lengths == [1, 2, 4, 8, 8, 8, 4, 2]
    assert s.reference == pytest.approx(0.97)
    while not s.needs_probe():
        s.next()
    with pytest.raises(RuntimeError, match="held-out loss is due"):
        s.next()


def test_single_kind_and_state_round_trip() -> None:
    only_cold = drain(HotColdSchedule([], COLD, ScheduleConfig(), epochs=1))
    assert {k for _, _, k in only_cold} == {"cold"} and len(only_cold) == len(COLD)
    cfg = ScheduleConfig("adaptive", adapt_every=4)
    a = HotColdSchedule(HOT, COLD, cfg, epochs=2)
    head = [a.next() for _ in range(3)]
    state = a.state_dict()
    b = HotColdSchedule(HOT, COLD, cfg, epochs=2)
    b.load_state_dict(state)
    losses = [1.0, 0.9, 1.2, 0.8] * 10
    assert drain(b, losses) == drain(a, losses)
    assert None not in head


def test_bad_schedule_options() -> None:
    with pytest.raises(TrainerError, match="schedule 'often' unknown"):
        ScheduleConfig("often")
    with pytest.raises(TrainerError, match=r"switch_every \(0\) must be >= 1"):
        ScheduleConfig(switch_every=0)
    with pytest.raises(TrainerError, match="no training minibatches"):
        HotColdSchedule([], [], ScheduleConfig(), epochs=1)


@pytest.mark.parametrize("hot,cold,run", [(2, 43, 2), (3, 40, 1), (40, 3, 4), (9, 12, 1),
                                          (10, 12, 8)])
def test_the_rarer_kind_is_spread_over_the_epoch(hot: int, cold: int, run: int) -> None:
    """Each round's share was rounded up, so a scarce kind was trained first: 2 hot
    minibatches of 45 ran in the first 4 steps. Its j-th minibatch now comes where the
    other kind has reached about (j + 1/2) / count of its own."""
    h = [BatchRef(0, i) for i in range(hot)]
    c = [BatchRef(1, i) for i in range(cold)]
    items = drain(HotColdSchedule(h, c, ScheduleConfig("fixed", run), epochs=1))
    assert sorted(r for _, r, _ in items) == sorted(h + c)  # each once
    more = "cold" if hot < cold else "hot"
    n_rare, n_more = min(hot, cold), max(hot, cold)
    positions = []  # minibatches of the other kind trained before each rare one
    seen_more = 0
    for _, _, kind in items:
        if kind == more:
            seen_more += 1
        else:
            positions.append(seen_more)
    ideal = [(j + 0.5) * n_more / n_rare for j in range(n_rare)]
    assert all(abs(p - x) <= run + 1 for p, x in zip(positions, ideal)), (positions, ideal)
    assert max(n for k, n in runs(items) if k == more) <= max(run, n_more // n_rare + run)
