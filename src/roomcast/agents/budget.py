"""What one agent spends per room and day (UTC), against the ``budget_tokens`` and
``budget_usd`` of its config: an agent over budget says so once per trigger instead of
answering."""

from __future__ import annotations

import time
from typing import Any

from roomcast.agents.config import AgentConfig
from roomcast.agents.providers.base import Usage, cost_usd


class DailySpend:
    """Tokens and USD one agent spent, by (room, day); kept in memory, per process."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._spend: dict[tuple[str, str], tuple[int, float]] = {}  # (room, day) → usage

    def _day_key(self, channel: str) -> tuple[str, str]:
        return channel, time.strftime("%Y-%m-%d", time.gmtime())

    def over_budget(self, channel: str) -> bool:
        """Whether today's spend in ``channel`` reached either budget."""
        tokens, usd = self._spend.get(self._day_key(channel), (0, 0.0))
        budget_tokens, budget_usd = self.config.budget_tokens, self.config.budget_usd
        return (budget_tokens is not None and tokens >= budget_tokens) or (
            budget_usd is not None and usd >= budget_usd
        )

    def record(self, channel: str, usage: Usage) -> dict[str, Any]:
        """Add ``usage`` to today's spend in ``channel``; the ``usage`` extras of the answer."""
        config = self.config
        cost = cost_usd(usage, config.price_per_mtok_in, config.price_per_mtok_out)
        key = self._day_key(channel)
        tokens, usd = self._spend.get(key, (0, 0.0))
        self._spend[key] = (tokens + usage.input_tokens + usage.output_tokens, usd + cost)
        return {
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cost_usd": round(cost, 6),
            }
        }


__all__ = ["DailySpend"]
