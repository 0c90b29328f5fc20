"""fscore: the hot paths of fstore, in Cython/C over numpy buffers.

- `fscore.table`  TTL hash table (online store), optionally in shared memory
- `fscore.wal`    write-ahead log, checkpoints and recovery
- `fscore.window` streaming window aggregation kernels

Each fast structure has a pure-Python twin (`*_ref` modules) used as the test
oracle. fscore imports nothing from fsapp: no HTTP, no Kafka, no DuckDB.
"""
from fscore.errors import FStoreError

__all__ = ["FStoreError"]
