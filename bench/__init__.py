"""aimz benchmark suite (issue 7): ``uv run --group bench python -m bench --quick``."""
