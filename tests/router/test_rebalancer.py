"""Rebalancing decisions with a fake clock: the load pairs of before (`expected`, `usage`), and
freeness (the default)."""
from __future__ import annotations

import random

from shunter.clock import FakeClock
from shunter.router.routing import LoadReport, RequestLoad, imbalanced
from shunter.router.routing.rebalancer import Migration, Rebalancer


def report(rid: str, blocks: list[int], large: bool = False, decoding: bool = True) -> LoadReport:
    reqs = [RequestLoad(f"{rid}-{i}", b, decoding) for i, b in enumerate(blocks)]
    return LoadReport(rid, kv_blocks_in_use=sum(blocks), requests=reqs, large_cache=large)


def pairs(**settings) -> Rebalancer:
    """The load pairs of before (`measure="expected"`)."""
    return Rebalancer(FakeClock(), measure="expected", **settings)


def test_due_once_per_interval():
    clock = FakeClock()
    reb = Rebalancer(clock, interval_s=1.0)
    assert not reb.due()
    clock.advance(0.5)
    assert not reb.due()
    clock.advance(0.6)
    assert reb.due() and not reb.due()


def test_moves_from_most_to_least_loaded_until_within_threshold():
    reb = pairs(abs_threshold=8, rel_threshold=1.2, max_per_round=10)
    moves = reb.plan([report("a", [10, 10, 10, 10]), report("b", [5]), report("c", [20])])
    assert moves and all(m.source == "a" and m.target == "b" for m in moves)
    # a: 40 -> 30 -> 20, b: 5 -> 15 -> 25: the gap shrinks 35 -> 15 -> 5 and then it stops.
    assert [m.request_id for m in moves] == ["a-0", "a-1"]


def test_converges_randomized():
    """Repeated rounds never oscillate and end balanced (a 1,000-iteration style check)."""
    rng = random.Random(0)
    for trial in range(200):
        reb = pairs(abs_threshold=8, rel_threshold=1.2, max_per_round=3)
        loads = {f"r{i}": [rng.randrange(1, 8) for _ in range(rng.randrange(0, 12))] for i in range(rng.randrange(2, 6))}
        for _ in range(100):
            reports = [report(k, v) for k, v in loads.items()]
            moves = reb.plan(reports)
            if not moves:
                break
            for m in moves:
                idx = int(m.request_id.rsplit("-", 1)[1])
                blocks = loads[m.source][idx]
                loads[m.source][idx] = 0  # moved out (kept as 0 to keep ids stable)
                loads[m.target].append(blocks)
        else:
            raise AssertionError(f"trial {trial}: still moving after 100 rounds")
        totals = sorted(sum(v) for v in loads.values())
        biggest = max((b for v in loads.values() for b in v), default=0)
        assert not imbalanced(totals[-1], totals[0] + biggest, 8, 1.2), totals


def test_prefill_requests_are_not_migrated():
    reb = pairs(abs_threshold=4, rel_threshold=1.1)
    assert reb.plan([report("a", [50], decoding=False), report("b", [])]) == []


def test_single_or_unhealthy_replicas_plan_nothing():
    reb = pairs(abs_threshold=4, rel_threshold=1.1)
    dead = report("b", [])
    dead.healthy = False
    assert reb.plan([report("a", [50, 50]), dead]) == []


def test_cache_size_specialization_moves_big_requests_to_large_replicas():
    reb = pairs(abs_threshold=1000, size_threshold_blocks=20)
    moves = reb.plan([report("small", [30, 5]), report("big1", [1], large=True), report("big2", [50], large=True)])
    assert [(m.request_id, m.target) for m in moves] == [("small-0", "big1")]


def test_specialization_spreads_big_requests_over_the_large_replicas_by_load():
    reb = pairs(abs_threshold=1000, size_threshold_blocks=20)
    moves = reb.plan([report("small", [30, 25]), report("big1", [1], large=True), report("big2", [10], large=True)])
    # small-0 makes big1 31 blocks, so small-1 goes to big2 (10).
    assert [(m.request_id, m.target) for m in moves] == [("small-0", "big1"), ("small-1", "big2")]


def test_load_pairs_never_move_a_big_request_back_to_a_small_replica():
    reb = pairs(abs_threshold=8, rel_threshold=1.2, size_threshold_blocks=20)
    assert reb.plan([report("big", [40, 40, 3], large=True), report("small", [])]) == [
        Migration("big-2", "big", "small")]
    # Without a large replica to keep them, big requests balance like any other.
    assert pairs(abs_threshold=8, rel_threshold=1.2, size_threshold_blocks=20).plan(
        [report("a", [40, 40]), report("b", [])]) == [Migration("a-0", "a", "b")]


def test_specialization_and_load_pairs_settle_randomized():
    """With large-cache replicas, rounds of both kinds of move stop, and every big request ends
    on a large replica (no request bounces between a small and a large one)."""
    rng = random.Random(1)
    threshold = 12
    for trial in range(200):
        reb = pairs(abs_threshold=8, rel_threshold=1.2, max_per_round=3,
                         size_threshold_blocks=threshold)
        n = rng.randrange(2, 6)
        large = set(rng.sample(range(n), rng.randrange(1, n)))
        loads = {f"r{i}": [rng.randrange(1, 30) for _ in range(rng.randrange(0, 10))] for i in range(n)}
        for _ in range(100):
            moves = reb.plan([report(k, v, large=int(k[1:]) in large) for k, v in loads.items()])
            if not moves:
                break
            for m in moves:
                idx = int(m.request_id.rsplit("-", 1)[1])
                blocks, loads[m.source][idx] = loads[m.source][idx], 0
                assert blocks <= threshold or int(m.target[1:]) in large, (trial, m, blocks)
                loads[m.target].append(blocks)
        else:
            raise AssertionError(f"trial {trial}: still moving after 100 rounds")
        assert all(b <= threshold for k, v in loads.items() if int(k[1:]) not in large for b in v), (trial, loads)


def test_usage_sees_the_replica_whose_requests_hold_more_where_expected_sees_them_alike():
    """Four requests each, all expected to end at 130 blocks (max_tokens): `expected` finds the two
    replicas equal; `usage` finds a's long answers holding 100 blocks each against b's 10, and
    moves them until the gap stops shrinking."""
    def replica(rid: str, held: int) -> LoadReport:
        reqs = [RequestLoad(f"{rid}-{i}", 130, True, held) for i in range(4)]
        return LoadReport(rid, kv_blocks_in_use=4 * held, blocks_expected_growth=4 * (130 - held), requests=reqs)

    pair = [replica("a", 100), replica("b", 10)]
    assert pairs(max_per_round=4).plan(pair) == []
    moves = Rebalancer(FakeClock(), max_per_round=4, measure="usage").plan(pair)
    assert moves == [Migration("a-0", "a", "b"), Migration("a-1", "a", "b")]  # 400/40 -> 300/140 -> 200/240


def test_an_unknown_measure_is_named():
    import pytest

    with pytest.raises(ValueError, match="measure: must be one of freeness, expected, usage"):
        Rebalancer(FakeClock(), measure="kv")


def test_a_round_planned_while_a_move_is_in_flight_counts_it_and_does_not_overshoot():
    """a holds two 40-block requests, b none: the first round moves one. The next round, planned
    before the reports show it, must count it as done (a 40, b 40) and move nothing; counting
    it neither way, it would send the other one too (a 0, b 80)."""
    reb = pairs(abs_threshold=8, rel_threshold=1.2, max_per_round=1)
    reports = [report("a", [40, 40]), report("b", [])]
    assert reb.plan(reports) == [Migration("a-0", "a", "b")]
    assert reb.plan(reports, {"a-0": ("a", "b")}) == []
    # The move in flight is counted where the reports put the request: once it shows on the target, the same.
    after = [report("a", [40]), LoadReport("b", kv_blocks_in_use=0, requests=[RequestLoad("a-0", 40)])]
    assert reb.plan(after, {"a-0": ("a", "b")}) == []


def test_specialization_counts_the_big_requests_already_moving_to_a_large_replica():
    reb = pairs(abs_threshold=1000, size_threshold_blocks=20)
    reports = [report("small", [30, 25]), report("big1", [1], large=True), report("big2", [10], large=True)]
    # small-0 (30 blocks) is on its way to big1 already: small-1 goes to big2, and small-0 is not planned again.
    assert reb.plan(reports, {"small-0": ("small", "big1")}) == [Migration("small-1", "small", "big2")]


# ---- freeness (the default) ------------------------------------------------------------------------
def replica(rid: str, held: list[int], total: int = 100, waiting: int = 0, large: bool = False) -> LoadReport:
    """A replica of `total` blocks running one decoding request per entry of `held` (its blocks),
    with `waiting` blocks of prompts queued."""
    reqs = [RequestLoad(f"{rid}-{i}", h, True, h) for i, h in enumerate(held)]
    return LoadReport(rid, kv_blocks_total=total, kv_blocks_in_use=sum(held), blocks_waiting=waiting,
                      num_running=len(held), num_waiting=int(waiting > 0), requests=reqs, large_cache=large)


def test_a_replica_about_to_preempt_gives_requests_to_one_with_room_where_the_load_pairs_see_balance():
    """a: 30 requests hold 90 of 100 blocks, 10 free: a third of a block each before it must
    preempt. b: 2 requests hold 80, 20 free. Blocks held are 90 against 80 (within the load pairs'
    16-block threshold), but a is about to preempt and b has room: freeness moves requests from a
    to b, one by one, until one more would leave b under pressure (2 blocks a request) itself."""
    pressed, roomy = replica("a", [3] * 30), replica("b", [40, 40])
    assert pairs().plan([pressed, roomy]) == []
    assert Rebalancer(FakeClock(), measure="usage").plan([pressed, roomy]) == []
    moves = Rebalancer(FakeClock()).plan([pressed, roomy])
    # b: 20 free for 2 -> 17/3, 14/4, 11/5 = 2.2; a fourth would leave it 8/6 (under 2).
    assert [(m.source, m.target) for m in moves] == [("a", "b")] * 3


def test_the_cheapest_request_that_relieves_the_source_moves_else_the_largest():
    """a: 4 free blocks for 4 requests, under a pressure of 5 a request. Taking out w blocks leaves
    (4 + w) / 3, so it takes 11 or more to relieve it: of 6, 10, 30 and 50 blocks, the 30 moves
    (not the 50, which relieves as well but costs more, nor the 6 or 10, which do not relieve)."""
    reb = Rebalancer(FakeClock(), pressure_blocks=5)
    source = replica("a", [10, 30, 50, 6])
    assert reb.plan([source, replica("b", [], total=200)]) == [Migration("a-1", "a", "b")]
    # When no single request relieves it, the largest goes first (the most relief for one move).
    reb = Rebalancer(FakeClock(), pressure_blocks=5, max_per_round=1)
    assert reb.plan([replica("a", [8, 9, 7, 6], total=34), replica("b", [], total=200)]) == [Migration("a-1", "a", "b")]


def test_a_queue_counts_as_pressure_and_several_pairs_move_in_one_round():
    """c and d have free blocks but their queues want more than that (freeness below zero); a and
    b are nearly empty. The most pressed (d) is paired with the freest (a), c with b."""
    reb = Rebalancer(FakeClock(), max_per_round=8)
    reports = [replica("a", [10], total=200), replica("b", [10, 10], total=200),
               replica("c", [40, 40], total=100, waiting=30), replica("d", [45, 45], total=100, waiting=40)]
    moves = reb.plan(reports)
    assert {(m.source, m.target) for m in moves} == {("d", "a"), ("c", "b")}


def test_freeness_never_moves_a_request_to_a_replica_it_would_leave_under_pressure_or_less_free():
    reb = Rebalancer(FakeClock())
    # b has 12 free blocks for 1 request: taking a's 10-block request would leave it 2/2 = 1 a request.
    assert reb.plan([replica("a", [10] * 10), replica("b", [88], total=100)]) == []
    # Nothing under pressure, nothing moves, however uneven.
    assert reb.plan([replica("a", [10] * 5, total=200), replica("b", [], total=200)]) == []


def test_freeness_counts_the_moves_in_flight_and_skips_prefills_and_dead_replicas():
    reb = Rebalancer(FakeClock())
    pressed, roomy = replica("a", [3] * 30), replica("b", [40, 40])
    first = reb.plan([pressed, roomy])
    assert len(first) == 3
    # The same reports, the three moves still in flight: b counts them, so nothing more goes.
    assert reb.plan([pressed, roomy], {m.request_id: (m.source, m.target) for m in first}) == []
    prefilling = replica("a", [3] * 30)
    for q in prefilling.requests:
        q.decoding = False
    assert reb.plan([prefilling, roomy]) == []
    roomy.healthy = False
    assert reb.plan([pressed, roomy]) == []


def test_freeness_rounds_settle_randomized():
    """Rounds applied to their replicas stop within 100 rounds, no request comes back to a replica
    it left, and every move left its target out of pressure."""
    rng = random.Random(2)
    for trial in range(200):
        reb = Rebalancer(FakeClock(), max_per_round=3)
        held = {f"r{i}": {f"r{i}-{j}": rng.randrange(1, 30) for j in range(rng.randrange(0, 12))}
                for i in range(rng.randrange(2, 6))}

        def reports() -> list[LoadReport]:
            return [LoadReport(k, kv_blocks_total=150, kv_blocks_in_use=sum(v.values()), num_running=len(v),
                               requests=[RequestLoad(q, b, True, b) for q, b in v.items()]) for k, v in held.items()]

        left: dict[str, set[str]] = {}
        for _ in range(100):
            moves = reb.plan(reports())
            if not moves:
                break
            for m in moves:
                held[m.target][m.request_id] = held[m.source].pop(m.request_id)
                assert m.target not in left.setdefault(m.request_id, set()), (trial, m)
                left[m.request_id].add(m.source)
            for r in reports():
                if r.replica_id in {m.target for m in moves}:
                    assert (150 - r.kv_blocks_in_use) / r.num_running >= 2, (trial, r)
        else:
            raise AssertionError(f"trial {trial}: still moving after 100 rounds")


def test_pressure_must_be_positive():
    import pytest

    with pytest.raises(ValueError, match="pressure_blocks"):
        Rebalancer(FakeClock(), pressure_blocks=0)
