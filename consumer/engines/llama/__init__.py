"""The ``llama`` engine: continuous batching on one model and one llama.cpp context.

One dedicated thread (:mod:`.loop`) owns the model, the context and every sequence
("slot"), like llama.cpp server's ``update_slots``; :mod:`.plan` holds its pure decisions
(admission, preemption, prompt chunking, KV-full recovery, reload order), :mod:`.native`
the llama.cpp handles and batch memory, :mod:`.sampling` C-side sampling, log-probabilities
and stop matching, :mod:`.counters` its counters, and :mod:`.engine` the asyncio facade.

Each sequence has its own KV stream (``kv_unified`` off, like llama-server's slots): the
prompt prefix of each profile is evaluated once into a reserved sequence and
``llama_memory_seq_cp`` copies it into each new sequence instead of re-evaluating it.
"""

from __future__ import annotations

from consumer.engines.llama.engine import LlamaEngine
from consumer.engines.llama.plan import choose_admissions, choose_preemption, default_threads

__all__ = ["LlamaEngine", "choose_admissions", "choose_preemption", "default_threads"]
