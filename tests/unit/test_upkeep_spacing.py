"""How often each engine looks for dead peers: every heartbeat in a small cluster, less often
in a large one, so that the whole cluster makes about the same number of passes per beat."""

from __future__ import annotations

import random
import statistics

from enginefarm.worker.liveness import UPKEEPS_PER_BEAT, upkeep_spacing


def test_a_small_cluster_passes_every_beat():
    rng = random.Random(1)
    assert all(upkeep_spacing(2.0, n, rng) == 0.0 for n in range(UPKEEPS_PER_BEAT + 1))


def test_the_cluster_wide_rate_stays_flat_as_engines_are_added():
    rng = random.Random(2)
    for engines in (10, 50, 200, 1000):
        spacings = [upkeep_spacing(1.0, engines, rng) for _ in range(4000)]
        passes_per_beat = engines / statistics.mean(spacings)
        assert abs(passes_per_beat - UPKEEPS_PER_BEAT) < 0.5, (engines, passes_per_beat)


def test_passes_are_jittered_so_engines_do_not_move_in_step():
    rng = random.Random(3)
    spacings = [upkeep_spacing(1.0, 200, rng) for _ in range(1000)]
    mean = 200 / UPKEEPS_PER_BEAT
    assert min(spacings) >= 0.5 * mean and max(spacings) <= 1.5 * mean
    assert statistics.pstdev(spacings) > 0.2 * mean
