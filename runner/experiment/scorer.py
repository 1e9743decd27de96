"""The runner's scorer: the program that computes a held-out run's metrics in a sandbox.

It runs in a sandbox of its own, from the pinned image (so its scikit-learn is the
one every script gets), beside one file: ``task.json``, the labels and the
checked predictions as numbers (``runner.experiment.predictions.ScoringTask``).
No code of the script's is there. It prints one JSON line,
``{"success": true, "metrics": {...}}``, and exits.

Classification: ``accuracy``; ``precision``, ``recall`` and ``f1`` averaged over
the classes weighted by their support (``average="weighted"``, as the scripts
``CodeGenerator`` writes report them; ``zero_division=0``); and ``roc_auc`` when
probabilities were given: of the second class (in ``classes``' order) for two
classes, else one-vs-rest, weighted, when every class is among the test rows.
Regression: ``rmse``, ``mae`` and ``r2``. A metric that is not defined for the
rows (``r2`` of one row, ``roc_auc`` of one class) is left out.
"""

SCORER_NAME = "score.py"
TASK_NAME = "task.json"

SOURCE = r"""
import json
import math
import os

import numpy as np
from sklearn import metrics

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "task.json")) as f:
    task = json.load(f)
y_true = np.asarray(task["y_true"])
y_pred = np.asarray(task["y_pred"])
scores = {}
if task["task_type"] == "classification":
    scores["accuracy"] = metrics.accuracy_score(y_true, y_pred)
    # One call for the three (what precision_score, recall_score and f1_score each compute).
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        y_true, y_pred, average="weighted", zero_division=0
    )
    scores.update(precision=precision, recall=recall, f1=f1)
    if task["proba"] is not None:
        proba = np.asarray(task["proba"], dtype=float)
        classes = list(range(len(task["classes"])))
        present = set(y_true.tolist())
        if len(classes) == 2 and len(present) == 2:
            scores["roc_auc"] = metrics.roc_auc_score(y_true == 1, proba[:, 1])
        elif len(classes) > 2 and present == set(classes):
            scores["roc_auc"] = metrics.roc_auc_score(
                y_true, proba, multi_class="ovr", average="weighted", labels=classes
            )
else:
    scores["rmse"] = math.sqrt(metrics.mean_squared_error(y_true, y_pred))
    scores["mae"] = metrics.mean_absolute_error(y_true, y_pred)
    if len(y_true) >= 2:
        scores["r2"] = metrics.r2_score(y_true, y_pred)
scores = {k: float(v) for k, v in scores.items() if math.isfinite(float(v))}
print(json.dumps({"success": True, "metrics": scores}), flush=True)
"""
