"""`python -m search evaluate MODEL.json STUDY.yaml`: an exported model's accuracy on the study's data.

The images go through the model's own input contract (``ExportedModel.prepare``: resize, channels,
normalisation), so the figure checks the exported files as a user would feed them, not the trainer.
"""
from __future__ import annotations

from pathlib import Path

from search.config import StudyConfig
from search.exceptions import ExportError

__all__ = ["evaluate_exported"]


def evaluate_exported(model_json: str | Path, cfg: StudyConfig, split: str = "test") -> dict:
    """Accuracy of the exported model on ``split`` ("test" or "val") of the study's data.

    Raises:
        ExportError: the model cannot be read, or predicts another number of classes than the data has.
        DataError: the study's data cannot be loaded.
    """
    from search.export import load_exported
    from search.sweep import load_study_data

    exported = load_exported(model_json)
    data = load_study_data(cfg)
    if exported.num_classes != data.num_classes:
        raise ExportError(f"{model_json}: the model predicts {exported.num_classes} classes but the data of "
                          f"{cfg.path} has {data.num_classes}; evaluate it with the study it was exported from")
    x, y = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
    if len(y) == 0:
        raise ExportError(f"{cfg.path}: the {split} split is empty; set data.test_size")
    correct = int((exported.predict(x) == y).sum())
    return {"model": str(model_json), "study": cfg.study, "split": split, "images": len(y), "correct": correct,
            "accuracy": correct / len(y), "trial": exported.description.get("trial"),
            "validation_accuracy_recorded": exported.description.get("accuracy")}
