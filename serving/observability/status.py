"""What ``cascade status`` shows of a router replica, typed: :class:`RouterStatus` (the Router builds
it, the CLI prints it as lines or JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass
class RouterStatus:
    replica: str
    inflight: int
    recent_requests: int
    deferral_share: Optional[float]  # over the recent cascade requests (None: none yet)
    degraded_share: Optional[float]
    requests_by_code: dict[str, int] = field(default_factory=dict)
    breakers: dict[str, str] = field(default_factory=dict)  # tier -> closed | open | half_open
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)  # tier -> one replica's EngineStats (or error)
    costs: dict[str, Any] = field(default_factory=dict)  # CostTotals.as_dict()
    tier_inflight: dict[str, int] = field(default_factory=dict)
    shadow: dict[str, dict[str, Any]] = field(default_factory=dict)  # accepting tier -> its tally

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The human form (``cascade status``)."""
        share = lambda x: "n/a" if x is None else f"{x:.3f}"
        out = [
            f"  router replica {self.replica}: last {self.recent_requests} requests: deferral share "
            f"{share(self.deferral_share)}, degraded {share(self.degraded_share)}; in flight {self.inflight}; "
            f"breakers {', '.join(f'{k} {v}' for k, v in self.breakers.items())}"
        ]
        if c := self.costs:
            ratio = f"{c['strong_only'] / c['total']:.2f}x" if c["total"] else "n/a"
            out.append(
                f"  costs over {c['requests']} answered requests: total {c['total']:.6g} "
                f"({', '.join(f'{k} {v:.6g}' for k, v in c['by_tier'].items()) or 'no tier priced'}); "
                f"strong-only {c['strong_only']:.6g} ({ratio} the total), saved {c['saved']:.6g}; "
                f"in flight per tier {self.tier_inflight}"
            )
        for tier, sh in self.shadow.items():
            est = (
                "no completed samples yet"
                if sh["agreement"] is None
                else f"agreement {sh['agreement']:.3f} [95% {sh['interval'][0]:.3f}, {sh['interval'][1]:.3f}] "
                f"over {sh['completed']}"
            )
            out.append(
                f"  shadow {tier}->{sh['next_tier']} ({sh['rule']}, {sh['metric']}): {est}; sampled "
                f"{sh['sampled']}, dropped {sh['dropped_busy']} busy + {sh['dropped_full']} full, failed "
                f"{sh['failed']}, running {sh['running']}"
            )
        for tier, e in self.engines.items():
            if "error" in e:
                out.append(f"  engine {tier:<8} no answer ({e['error']})")
                continue
            out.append(
                f"  engine {tier:<8} {e['engine']}: running {e['running']}, waiting {e['waiting']}, "
                f"KV cache {e['kv_cache_usage']:.0%}, {e['tokens_per_s']:.1f} tokens/s, "
                f"{e['requests']} requests"
                + (f", {e['cached_tokens']} prompt tokens from its prefix cache" if e.get("cached_tokens") else "")
                + (
                    f", draft tokens accepted {e['accepted_draft_tokens']} of {e['draft_tokens']}"
                    if e.get("draft_tokens")
                    else ""
                )
                + f" (replica {e['replica']})"
            )
        return out
