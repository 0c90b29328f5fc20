# Python face of fscore.wal (writer) and fscore.walread (reader); C types in comments.
import enum
from typing import Callable, Iterable, Iterator

HEADER_BYTES: int  # 17
MAX_PAYLOAD: int  # 2**30
DEFAULT_SEGMENT_BYTES: int  # 64 MiB

class RecoveryPolicy(enum.Enum):
    TOLERATE_TAIL = "tolerate_tail"
    ABSOLUTE = "absolute"
    POINT_IN_TIME = "point_in_time"

def segment_name(first_lsn: int) -> str: ...
def list_segments(path: str) -> list[tuple[int, str]]: ...
def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int: ...  # uint32
def encode_record(rtype: int, lsn: int, payload: bytes) -> bytes: ...  # rtype uint8 1..255, lsn uint64
def decode_record(data: bytes, offset: int = 0) -> tuple[str, int | None, int | None, bytes | None, int]: ...
def read_log(dir: str, after_lsn: int = 0,
             policy: RecoveryPolicy = RecoveryPolicy.TOLERATE_TAIL) -> Iterator[tuple[int, int, bytes]]: ...

class Wal:
    dir: str
    fsync_policy: str  # "always" | "interval" | "never"
    max_syncers: int
    commit_delay_us: int
    recovery: RecoveryPolicy
    def __init__(self, dir: str, fsync: str = "always", *, interval_ms: float = 10,
                 segment_bytes: int = ..., preallocate: bool = True,
                 recovery: RecoveryPolicy = RecoveryPolicy.TOLERATE_TAIL, start_lsn: int = 1,
                 fsync_fn: Callable[[int], None] | None = None,  # called with the syncing fd
                 max_syncers: int = 2,  # 1..16 fsyncs in flight at once, each on its own fd
                 commit_delay_us: int = 100) -> None: ...  # 0..100000
    def append(self, rtype: int, payload: bytes) -> int: ...  # LSN (uint64), durable per policy
    def append_many(self, records: Iterable[tuple[int, bytes]]) -> range: ...
    def sync(self) -> None: ...
    def stats(self) -> dict[str, int]: ...  # fsyncs, synced_records, writes, max_overlap, rolls, LSN marks
    def truncate_before(self, lsn: int) -> int: ...
    def segments(self) -> list[str]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Wal": ...
    def __exit__(self, *exc: object) -> None: ...
    @property
    def last_lsn(self) -> int: ...
    @property
    def durable_lsn(self) -> int: ...
    @property
    def poisoned(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
