"""One counters object for the llama engine: written by the loop thread, read anywhere."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counters"]


@dataclass(slots=True)
class Counters:
    """Running totals of the batch loop (plain ints and floats: reads need no lock)."""

    steps: int = 0
    batch_tokens: int = 0
    generating: int = 0  # generating sequences summed over steps
    seqs_in_steps: int = 0  # sequences (generating + prefilling) summed over steps
    generated: int = 0
    prompt: int = 0
    prefix_hits: int = 0
    prefix_tokens: int = 0
    completed: int = 0
    failed: int = 0
    preempted: int = 0
    kv_full: int = 0  # decodes that found no KV room
    kv_requeued: int = 0  # sequences requeued to make room
    reloads: int = 0
    busy_slots: int = 0
    waiting: int = 0
    busy_s: float = 0.0
    decode_s: float = 0.0
    sample_s: float = 0.0
    logprob_s: float = 0.0
    python_s: float = 0.0  # pass wall time outside llama_decode (Python, sampling, logprobs)
    python_cpu_s: float = 0.0  # the same as CPU time of the loop thread (ignores preemption)
    compute_s: float = 0.0  # step time attributed to the requests that completed
    tps_ema: float = 0.0
    # Per-step CPU overhead split by batch size (1 sequence vs several).
    py_single_s: float = 0.0
    py_single_n: int = 0
    py_multi_s: float = 0.0
    py_multi_n: int = 0
    py_multi_seqs: int = 0

    def add_step(
        self,
        *,
        n_tokens: int,
        n_gen: int,
        n_seqs: int,
        produced: int,
        step_s: float,
        decode_s: float,
        sample_s: float,
        logprob_s: float,
        overhead_cpu_s: float,
    ) -> None:
        """Account one decode step."""
        self.steps += 1
        self.batch_tokens += n_tokens
        self.generating += n_gen
        self.seqs_in_steps += n_seqs
        self.generated += produced
        self.busy_s += step_s
        self.decode_s += decode_s
        self.sample_s += sample_s
        self.logprob_s += logprob_s
        self.python_s += max(0.0, step_s - decode_s)
        self.python_cpu_s += overhead_cpu_s
        py = overhead_cpu_s
        if n_seqs == 1:
            self.py_single_s += py
            self.py_single_n += 1
        else:
            self.py_multi_s += py
            self.py_multi_n += 1
            self.py_multi_seqs += n_seqs
        if step_s > 0:
            self.tps_ema = 0.9 * self.tps_ema + 0.1 * (produced / step_s)

    def overhead_us(self) -> dict[str, float]:
        """Mean CPU µs per step the loop thread spends outside ``llama_decode``.

        Python, C-side sampling and log-probabilities; thread CPU time, so a neighbour that
        takes the core away does not inflate it.
        """
        single = 1e6 * self.py_single_s / self.py_single_n if self.py_single_n else 0.0
        multi = 1e6 * self.py_multi_s / self.py_multi_n if self.py_multi_n else 0.0
        seqs = self.py_multi_seqs / self.py_multi_n if self.py_multi_n else 0.0
        return {
            "step_overhead_us_1seq": round(single, 1),
            "step_overhead_us_multi": round(multi, 1),
            "step_overhead_multi_mean_seqs": round(seqs, 2),
        }

    def as_dict(self) -> dict[str, float | int]:
        """The counters as /admin/stats shows them."""
        s = self.steps
        return {
            "steps": s,
            "mean_batch_tokens": self.batch_tokens / s if s else 0.0,
            "mean_batch_size": self.generating / s if s else 0.0,
            "mean_seqs_per_step": self.seqs_in_steps / s if s else 0.0,
            "tokens_generated": self.generated,
            "prompt_tokens": self.prompt,
            "tokens_per_s": round(self.tps_ema, 2),
            "tokens_per_busy_s": self.generated / self.busy_s if self.busy_s else 0.0,
            "decode_s": round(self.decode_s, 3),
            "sample_s": round(self.sample_s, 3),
            "logprob_s": round(self.logprob_s, 3),
            "python_s": round(self.python_s, 6),
            "python_cpu_s": round(self.python_cpu_s, 6),
            "seqs_in_steps": self.seqs_in_steps,
            "busy_s": round(self.busy_s, 3),
            "compute_s": round(self.compute_s, 3),
            "prefix_cache_hits": self.prefix_hits,
            "prefix_tokens_reused": self.prefix_tokens,
            "requests_completed": self.completed,
            "requests_failed": self.failed,
            "preemptions": self.preempted,
            "kv_full_events": self.kv_full,
            "kv_full_requeued": self.kv_requeued,
            "reloads": self.reloads,
            **self.overhead_us(),
        }
