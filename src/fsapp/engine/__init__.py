"""The engine: the single writer of the online tables (push → DuckDB projection
→ windows → online tables), with a write-ahead log of input batches and
checkpoints. See docs/engine.md."""
from fsapp.engine.engine import Engine, PushResult

__all__ = ["Engine", "PushResult"]
