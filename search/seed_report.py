"""How a study's seeds fared: for each, its trial, objective values and the front member that
dominates it (read from the database alone; `status` and `export` report it). The seeds themselves
are defined and checked in ``search.seeds``."""
from __future__ import annotations

from search.pareto import dominates, objectives_of
from search.record import TrialStatus, read_record, trial_status
from search.seeds import SEED_ATTR

__all__ = ["seed_entries"]


def seed_entries(study, front, trials: list | None = None) -> list[dict]:
    """One entry per seed the study holds (read from the database alone): its trial, status,
    objective values and the front member that dominates it (the cheapest one), or None.

    A seed whose architecture had been trained already (a duplicate) points at that trial."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    by_number = {t.number: t for t in trials}
    latest: dict[str, object] = {}
    for t in trials:  # a retried seed is the last trial of its lineage
        name = t.user_attrs.get(SEED_ATTR)
        if name is not None:
            latest[name] = t
    names = objectives_of(study)
    signs = [1 if d.name == "MAXIMIZE" else -1 for d in study.directions]
    entries = []
    for name, t in latest.items():
        rec, status = read_record(t), trial_status(t)
        trained = t
        if status == TrialStatus.DUPLICATE and rec.duplicate_of in by_number:
            trained = by_number[rec.duplicate_of]
        status_trained = trial_status(trained)
        values = list(trained.values) if trained.values and isinstance(status_trained, TrialStatus) \
            and status_trained.may_join_front else None
        beaten_by = [m for m in front if values is not None and dominates(list(m.values.values()), values, signs)]
        entries.append({"name": name, "trial": t.number, "trained_in": trained.number, "family": rec.family,
                        "status": str(status), "values": dict(zip(names, values)) if values else None,
                        "dominated_by": beaten_by[0].number if beaten_by else None,
                        "n_dominating": len(beaten_by)})
    return entries
