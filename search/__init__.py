"""The orchestrator: study files, the sweep driver on Ray, the Optuna record, status and export.

``python -m search run studies/quickstart.yaml`` runs a study; see ``search.cli`` for the commands.
``search.load_model(path)`` rebuilds an exported front member's deploy-form network;
``search.load_exported(path)`` gives it with its input contract (``prepare``, ``predict``).
"""
from __future__ import annotations

__all__ = ["load_model", "load_exported"]


def load_model(json_path):
    """Rebuild an exported front member (``models/trial_<n>.json``) as an eval-mode nn.Module."""
    from search.export import load_model as _load

    return _load(json_path)


def load_exported(json_path):
    """An exported front member with its input contract: ``.model``, ``.prepare(images)``,
    ``.predict(images)`` (uint8 images of any size, NCHW or NHWC; see search.export.ExportedModel)."""
    from search.export import load_exported as _load

    return _load(json_path)
