"""Plumbing shared by the whole lab: registries, configuration, tracking, checkpoints, data helpers."""
