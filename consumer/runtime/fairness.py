"""The scheduler as Settings configure fair share between sources (FAIR_SHARE, SOURCE_*)."""

from __future__ import annotations

from typing import TypeVar

from consumer.config import TIERS, Settings
from consumer.core.fairshare import parse_weights, share_cap
from consumer.core.scheduler import TierScheduler

__all__ = ["fair_scheduler"]

T = TypeVar("T")


def fair_scheduler(s: Settings) -> TierScheduler[T]:
    """MAX_QUEUE_SIZE split across tiers, with the fair-share settings applied."""
    per_tier = max(1, s.max_queue_size // len(TIERS))
    return TierScheduler(
        tiers=len(TIERS),
        capacity_per_tier=per_tier,
        aging_s=s.aging_s,
        fair=s.fair_share,
        weights=parse_weights(s.source_weights),
        max_running_per_origin=(
            None
            if s.source_max_slot_share >= 1
            else share_cap(s.source_max_slot_share, s.max_concurrent_requests)
        ),
        max_buffered_per_origin=(
            None
            if s.source_max_buffer_share >= 1
            else share_cap(s.source_max_buffer_share, per_tier)
        ),
        refuse_over_share=s.source_over_share == "reject",
    )
