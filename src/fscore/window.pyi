# Python face of fscore.window (the Cython module). C types in comments.
from typing import Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fscore.window_spec import (
    Agg as Agg, WindowSpec as WindowSpec, continuous as continuous, lifetime as lifetime,
    session as session, sliding as sliding, tumbling as tumbling,
)

EMPTY: int  # INT64_MIN: "no bucket / no event" marker in state arrays

class WindowView:
    spec: WindowSpec
    aggs: tuple[Agg, ...]
    agg_specs: tuple[WindowSpec, ...] | None  # per aggregation its own window; None: all `spec`
    columns: tuple[str, ...]       # input columns, in layout order
    allowed_lateness: int          # int64 µs
    hll_p: int                     # int: HyperLogLog precision, 2**hll_p registers
    max_sessions: int              # int: session cells per key
    n_slots: int                   # Py_ssize_t
    ring_len: int                  # Py_ssize_t: the most cells a key holds (a key holds only its cells with events)
    watermark: int                 # int64: max applied ts of untagged events (EMPTY before any event)
    part_watermarks: dict[int, int]  # max applied ts per part of tagged events (update(..., parts=))
    late_count: int                # int64: events reported late so far
    width: int                     # words (8 bytes) per cell
    bytes_per_slot: int            # the most a key can hold: ring_len cells
    nbytes: int                    # the view's memory: its cell pool (a reserved pool: the cells handed out),
                                   # per-key arrays and dense HLL blocks (hll_pool_bytes)
    hll_pool_bytes: int            # the dense HLL blocks' pool (a reservation: the blocks handed out)
    slot_bytes: int                # per-key arrays a slot: 13 (an int32 floor) or 17 (int64, sessions')
    slot_capacity: int             # slots the per-key arrays hold room for before grow() copies them
    live_bytes: int                # what the keys' state needs (runs, dense HLL blocks, per-key arrays), O(1)
    cells_in_use: int              # cells the keys hold
    cells_held: int                # cells in the keys' runs (run capacities)
    dense_hll_blocks: int          # approx_count_distinct columns of cells held as dense registers
    blocks_held: int               # blocks the cells own: dense HLL registers or last_k buffers past one entry
    lastk_sized_by_use: bool       # last_k buffers: one entry in the cell, more in a block (window.pxd)
    pool_waste: int                # cells below the pool's top in no key's run (what compaction gives back)

    def __init__(self, spec: WindowSpec, aggs: Sequence[Agg | str], n_slots: int = 0,
                 allowed_lateness: int | str = 0, hll_p: int = 8, max_sessions: int = 4,
                 agg_specs: Sequence[WindowSpec] | None = None) -> None:
        """agg_specs: per aggregation its own window (tumbling, sliding, continuous) of
        `spec`'s hop, `spec` the longest: the aggregations share one cell per hop."""
    def empty_like(self, n_slots: int = 0) -> "WindowView":
        """A view of the same definition with `n_slots` empty keys."""
    def grow(self, n_slots: int) -> None: ...
    def reset_slots(self, slots: npt.ArrayLike) -> None: ...
    def idle_slots(self, now: int, ttl: int | str) -> npt.NDArray[np.int64]: ...
    def update(self, slots: npt.ArrayLike, ts: npt.ArrayLike,
               columns: Mapping[str, npt.ArrayLike] | None = None,
               parts: npt.ArrayLike | None = None) -> npt.NDArray[np.bool_]:
        """Apply a batch in order; returns the late mask (late events are not applied).
        `parts`: an int per event; lateness is then judged per part."""
    def value_as_of(self, slots: npt.ArrayLike, t: int | npt.ArrayLike
                    ) -> tuple[dict[str, np.ndarray], npt.NDArray[np.bool_]]:
        """(values by aggregation name, exact mask)."""
    def key_last_ts(self) -> npt.NDArray[np.int64]: ...
    def changed_slots(self, t0: int, t1: int, start: int = 0, stop: int = -1) -> npt.NDArray[np.int64]:
        """Slots whose value may differ between t0 and t1 with no event applied between (a superset)."""
    def newest_before(self, slots: npt.ArrayLike, t: int
                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """(newest applied event before t per slot as far as the cells tell, whether a cell spans t)."""
    def meta(self) -> dict: ...
    def frozen(self) -> "WindowView":
        """A copy of the state as it is now (one memcpy), to encode off the writer's lock."""
    def track_writes(self) -> tuple:
        """Writer, under its lock: mark every slot written from now on (for frozen_begin/frozen_end)."""
    def frozen_begin(self, track: tuple) -> tuple:
        """Any thread, no lock: copy the state track_writes() saw (the cells without the GIL)."""
    def frozen_end(self, begun: tuple) -> "WindowView":
        """Writer, under its lock: the frozen copy of the state now (the marked slots copied again)."""
    def compact_begin(self, track: tuple) -> tuple:
        """Any thread, no lock: the cells track_writes() saw laid out back to back in a new pool."""
    def compact_end(self, begun: tuple) -> bool:
        """Writer, under its lock: the marked slots laid out again, the new pool in place, tracking
        stopped; False (unchanged) when another tracker started meanwhile."""
    def to_bytes(self) -> bytes: ...
    def snapshot(self, chunk_slots: int = 65536, chunk_bytes: int = 4 << 20) -> Any:
        """to_bytes() streamed: `.nbytes`, then `.chunks()` (bytes-like) a slot range at a time."""
    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> "WindowView": ...
    def export_slots(self, slots: npt.ArrayLike) -> dict[str, np.ndarray]:
        """{"lens": cells per slot, "floor": per slot, "cells": (sum(lens), width) int64}."""
    def import_slots(self, slots: npt.ArrayLike, state: Mapping[str, np.ndarray]) -> None: ...
    def merge_from(self, other: "WindowView") -> int: ...

def hash_array(values: npt.ArrayLike) -> npt.NDArray[np.uint64]: ...
def _floor32(on: bool) -> bool:
    """Tests: whether views made from now on start with int32 floors; returns the previous."""
def _hll_reserve_from(nbytes: int) -> int:
    """Tests: the HLL block pool size past which it moves into its reservation; returns the previous."""
