"""Comparing runs: `make sweep` (a grid of training runs under one sweep id) and `make eval` (test metrics
filled in from best checkpoints, a Markdown + HTML report with the papers' numbers beside ours).

Both read and write the same MLflow store as training (`MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in
the project root) and find runs by their tags (task, attention, pooling, model, experiment, seed, sweep,
fingerprint), never by parsing run names. Like `train.py`, they are composition roots: they may import
tasks and train; `lab/` stays below them.
"""
