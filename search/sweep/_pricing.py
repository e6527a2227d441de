"""Pricing a proposal: its exact costs, the study's constraint values and its zero-cost proxy scores."""
from __future__ import annotations

from search.config import StudyConfig

__all__ = ["PriceFunction"]


class PriceFunction:
    """Costs, constraint values and zero-cost proxy scores of an architecture, by family and JSON
    knobs, for the study's data (picklable: it runs on the backend's pricer, with its batch)."""

    def __init__(self, cfg: StudyConfig, data_meta: dict, batch=None):
        self.cfg, self.data_meta, self.batch = cfg, data_meta, batch

    def __call__(self, family: str, knobs: dict) -> tuple[dict, dict, dict]:
        from search.feasibility import price
        from space.registry import get_family

        knobs_dc = get_family(family).knobs_from_dict(knobs)
        cost, constraints = price(self.cfg, family, knobs_dc, self.data_meta)
        return cost, constraints, self._proxies(family, knobs_dc, cost)

    def _proxies(self, family: str, knobs, cost: dict) -> dict:
        names = list(self.cfg.proxies.names)
        if not names or self.batch is None:
            return {}
        if cost["macs"] > self.cfg.proxies.max_macs:  # scoring it would cost minutes
            return {n: None for n in names}
        from trainers.proxies import finite_or_none, score_architecture

        x, y = self.batch
        try:
            scores = score_architecture(family, knobs, x, y, self.data_meta["num_classes"], names,
                                        seed=self.cfg.train.seed)
        except Exception:  # a proxy that cannot score this network says nothing about it
            return {n: None for n in names}
        return {n: finite_or_none(v) for n, v in scores.items()}

    @classmethod
    def for_study(cls, cfg: StudyConfig, data, data_meta: dict) -> "PriceFunction":
        """With the proxy batch drawn from ``data`` when the study scores proxies."""
        batch = None
        if cfg.proxies.names:
            from trainers.proxies import proxy_batch

            batch = proxy_batch(data, cfg.proxies.batch_size, seed=cfg.train.seed)
        return cls(cfg, data_meta, batch)
