"""The llama engine's batch plan: pure decisions tested with plain values, no model."""

from __future__ import annotations

from consumer.engines.llama.plan import (
    MIN_PROMPT_CHUNK,
    URGENT_RECENT_S,
    Chunk,
    KvFullAction,
    Running,
    bound_steps,
    choose_admissions,
    choose_preemption,
    default_threads,
    free_old_first,
    on_kv_full,
    plan_chunks,
    prompt_room,
)


def test_admissions_fill_free_slots_from_the_waiting_queue() -> None:
    assert choose_admissions(3, 5, draining=False, kv_hold=False) == 3
    assert choose_admissions(3, 2, draining=False, kv_hold=False) == 2
    assert choose_admissions(0, 2, draining=False, kv_hold=False) == 0


def test_no_admissions_while_draining_for_a_reload_or_while_the_kv_cache_is_full() -> None:
    assert choose_admissions(4, 4, draining=True, kv_hold=False) == 0
    assert choose_admissions(4, 4, draining=False, kv_hold=True) == 0


def test_only_an_urgent_request_preempts() -> None:
    running = [Running(3, 1, 10), Running(2, 2, 5)]
    for prio in (1, 2, 3):
        assert choose_preemption(prio, running) is None
    assert choose_preemption(None, running) is None


def test_the_least_urgent_latest_arrival_is_preempted() -> None:
    running = [Running(2, 1, 9), Running(3, 2, 9), Running(3, 5, 1), Running(1, 9, 0)]
    assert choose_preemption(0, running) == 2  # priority 3, latest of the two


def test_a_high_sequence_is_preempted_when_nothing_less_urgent_runs() -> None:
    assert choose_preemption(0, [Running(1, 4, 3), Running(0, 5, 3)]) == 0


def test_urgent_sequences_are_never_preempted() -> None:
    assert choose_preemption(0, [Running(0, 1, 3), Running(0, 2, 3)]) is None
    assert choose_preemption(0, []) is None


def test_prompt_chunks_fill_the_batch_oldest_admission_first() -> None:
    chunks = plan_chunks(3, [(0, 100), (1, 50)], n_batch=64)
    assert chunks == [Chunk(0, 61, False)]
    chunks = plan_chunks(2, [(0, 10), (1, 50), (2, 7)], n_batch=64)
    assert chunks == [Chunk(0, 10, True), Chunk(1, 50, True), Chunk(2, 2, False)]


def test_no_prompt_chunks_when_generation_fills_the_batch() -> None:
    assert plan_chunks(64, [(0, 10)], n_batch=64) == []
    assert plan_chunks(0, [(0, 0), (1, 5)], n_batch=8) == [Chunk(1, 5, True)]


def test_chunks_never_exceed_the_batch() -> None:
    for n_gen in range(0, 9):
        for lefts in ([1, 2, 3], [9, 9], [0, 4, 100]):
            chunks = plan_chunks(n_gen, list(enumerate(lefts)), n_batch=8)
            assert n_gen + sum(c.take for c in chunks) <= 8
            for c in chunks:
                assert 0 < c.take <= lefts[c.slot]
                assert c.last == (c.take == lefts[c.slot])


def test_a_full_kv_cache_requeues_the_newest_sequence() -> None:
    assert on_kv_full([4, 9, 2]) == (KvFullAction.REQUEUE_NEWEST, 1)


def test_a_single_sequence_that_does_not_fit_fails() -> None:
    assert on_kv_full([7]) == (KvFullAction.FAIL, 0)
    assert on_kv_full([]) == (KvFullAction.FAIL, None)


def test_reload_frees_the_old_model_first_only_when_both_would_not_fit() -> None:
    gib = 2**30
    assert not free_old_first(4 * gib, gib, 16 * gib)
    assert free_old_first(4 * gib, gib, 5 * gib)
    assert not free_old_first(4 * gib, gib, None)  # unknown: keep the safe order


def test_default_threads_use_every_usable_core() -> None:
    assert [default_threads(n) for n in (0, 1, 2, 4, 16)] == [1, 1, 2, 4, 16]


def test_a_cgroup_cpu_quota_caps_the_usable_cpus() -> None:
    from consumer.engines.model import cgroup_cpu_limit

    assert cgroup_cpu_limit("200000 100000\n", None, None) == 2.0
    assert cgroup_cpu_limit("max 100000\n", None, None) is None
    assert cgroup_cpu_limit(None, "150000\n", "100000\n") == 1.5
    assert cgroup_cpu_limit(None, "-1\n", "100000\n") is None
    assert cgroup_cpu_limit(None, None, None) is None
    assert cgroup_cpu_limit("garbage", None, None) is None


def test_a_kept_sequence_is_reused_up_to_the_first_differing_token() -> None:
    import numpy as np

    from consumer.engines.llama.plan import reusable_prefix

    cached = np.array([1, 2, 3, 4, 5], np.int32)
    assert reusable_prefix(cached, np.array([1, 2, 3, 9, 9, 9], np.int32)) == 3
    assert reusable_prefix(cached, np.array([1, 2, 3, 4, 5, 6, 7], np.int32)) == 5
    # The last prompt token is always decoded again: its logits start the generation.
    assert reusable_prefix(cached, np.array([1, 2, 3], np.int32)) == 2
    assert reusable_prefix(cached, np.array([7, 2, 3], np.int32)) == 0
    assert reusable_prefix(None, np.array([1, 2, 3], np.int32)) == 0


def test_urgent_sequences_step_alone_on_a_cpu() -> None:
    from consumer.engines.llama.plan import stepping

    assert stepping([3, 0, 2, 0], solo_urgent=True) == [False, True, False, True]
    assert stepping([3, 2], solo_urgent=True) == [True, True]
    assert stepping([3, 0, 2], solo_urgent=False) == [True, True, True]
    assert stepping([], solo_urgent=True) == []


def test_prompt_room_is_the_rest_of_the_batch_without_a_time_bound() -> None:
    assert prompt_room(512, 8, 0.0, 0.005) == 504
    assert prompt_room(512, 8, 0.25, 0.0) == 504  # nothing measured yet
    assert prompt_room(8, 8, 0.25, 0.005) == 0


def test_prompt_room_cuts_a_slow_step_to_the_time_bound() -> None:
    # 5 ms per token, 250 ms per step: 50 tokens, 4 of them generating.
    assert prompt_room(512, 4, 0.25, 0.005) == 46
    # A fast device: the batch binds first.
    assert prompt_room(512, 4, 0.25, 0.00001) == 508


def test_prompt_room_always_lets_a_prompt_progress() -> None:
    assert prompt_room(512, 60, 0.25, 0.005) == MIN_PROMPT_CHUNK
    assert prompt_room(20, 10, 0.25, 0.005) == 10  # but never past the batch


def test_steps_are_bounded_only_while_urgent_traffic_is_recent() -> None:
    assert not bound_steps(100.0, None, prompts_all_urgent=False)
    assert bound_steps(100.0, 90.0, prompts_all_urgent=False)
    assert bound_steps(100.0, 100.0 - URGENT_RECENT_S, prompts_all_urgent=False)
    assert not bound_steps(100.0, 99.0 - URGENT_RECENT_S, prompts_all_urgent=False)


def test_urgent_prompts_are_not_cut() -> None:
    assert not bound_steps(100.0, 99.0, prompts_all_urgent=True)
