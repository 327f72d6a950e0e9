"""The run: runner, artifacts, lineage, settings, config, errors, progress, queries."""
