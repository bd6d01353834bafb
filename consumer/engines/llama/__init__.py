"""The ``llama`` engine: continuous batching on one model and one llama.cpp context.

One dedicated thread (:mod:`.loop`) owns the model, the context and every sequence
("slot"), like llama.cpp server's ``update_slots``; :mod:`.plan` holds its pure decisions
(admission, preemption, prompt chunking, KV-full recovery, reload order), :mod:`.native`
the llama.cpp handles and batch memory, :mod:`.sampling` C-side sampling, log-probabilities
and stop matching, :mod:`.counters` its counters, and :mod:`.engine` the asyncio facade.

The KV cache is unified (``kv_unified``): the system-prompt prefix of each profile is
evaluated once into a reserved sequence id and ``llama_memory_seq_cp`` shares its cells with
each new sequence instead of re-evaluating it.
"""

from __future__ import annotations

from consumer.engines.llama.engine import LlamaEngine
from consumer.engines.llama.plan import choose_admissions, choose_preemption, default_threads

__all__ = ["LlamaEngine", "choose_admissions", "choose_preemption", "default_threads"]
