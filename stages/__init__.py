"""GPO stages: an importable library; the `gpo` CLI (gpo_cli) is a thin layer over it."""
