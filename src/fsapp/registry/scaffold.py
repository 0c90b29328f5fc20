"""`fstore init DIR`: a realistic starter repo (card-fraud features) that
plans and applies as it is, showing both the SQL DSL and the Python API, with
the data its batch source names (`data/user_profiles.parquet`), so every
command works on it as created."""
from __future__ import annotations

import time
from pathlib import Path

from fsapp.registry.errors import RepoError

FSTORE_YAML = """\
# fstore repository configuration (YAML).
project: {project}
# Registry (SQLite, WAL mode) and data directory, relative to this file.
registry: data/registry.db
data_dir: data
# `fstore serve` (each setting is also a flag, which wins; see `fstore serve --help`).
online:
  port: 9094
  workers: 2
  fsync: always            # always | interval | never
# API keys live in a file, never here: one 'TOKEN SCOPE[,SCOPE]' a line (read, write, admin).
# auth:
#   api_keys_file: secrets/api_keys.txt
"""

FEATURES_SQL = """\
-- Card transactions: who pays, where, how much. Definitions are DuckDB SQL;
-- see docs/dsl.md for the grammar.

CREATE ENTITY card_user (user_id BIGINT) WITH (description = 'A card holder');

CREATE ENTITY merchant (merchant_id VARCHAR) WITH (description = 'A shop accepting card payments');

-- Past transactions as Parquet files, used to backfill the stream's windows.
CREATE SOURCE transactions_history (
    user_id BIGINT, merchant_id VARCHAR, amount DOUBLE, currency VARCHAR,
    country VARCHAR, is_online BOOLEAN, ts TIMESTAMP
) WITH (path = 'data/transactions/*.parquet', format = 'parquet', timestamp = 'ts');

-- Live transactions from Kafka (and POST /api/v1/push); events up to 5 minutes
-- late still count online.
CREATE STREAM transactions (
    user_id BIGINT, merchant_id VARCHAR, amount DOUBLE, currency VARCHAR,
    country VARCHAR, is_online BOOLEAN, ts TIMESTAMP
) WITH (topic = 'card-transactions', timestamp = 'ts', allowed_lateness = '5m',
        batch_source = 'transactions_history',
        description = 'One row per authorised card payment');

-- Per-user spending patterns over several window shapes.
CREATE FEATURE VIEW user_txn AS
SELECT user_id,
       count(*) OVER sliding('1h', '5m') AS txn_count_1h,
       sum(amount) OVER continuous('24h', '1h') AS amount_24h,
       mean(amount) OVER tumbling('1d') AS avg_amount_1d,
       max(amount) OVER sliding('7d', '1h') AS max_amount_7d,
       stddev_samp(amount) OVER sliding('7d', '1h') AS amount_stddev_7d,
       approx_count_distinct(merchant_id) OVER sliding('1d', '1h') AS distinct_merchants_1d,
       sum(is_online::INTEGER) OVER sliding('1d', '1h') AS online_txn_count_1d,
       count(*) OVER session('30m') AS session_txn_count,
       last_k(amount, 5) OVER lifetime() AS last_5_amounts
FROM transactions
WHERE amount > 0;

-- Per-merchant volume: a sudden spike is a fraud signal too. Feature names are
-- unique across the repo, so a service can read both views with short names.
CREATE FEATURE VIEW merchant_txn AS
SELECT merchant_id,
       count(*) OVER sliding('1h', '5m') AS merchant_txn_count_1h,
       sum(amount) OVER tumbling('1d') AS volume_1d,
       approx_count_distinct(user_id) OVER sliding('1d', '1h') AS distinct_users_1d,
       sum(CASE WHEN country <> 'US' THEN 1 ELSE 0 END) OVER sliding('1d', '1h') AS foreign_txn_count_1d
FROM transactions
WHERE amount > 0;

-- The transaction being scored, known only at request time: a read passes it
-- beside the keys ({"user_id": 1, "amount": 60.0}); a training set reads it
-- from the label rows' columns.
CREATE REQUEST SOURCE txn_request (amount DOUBLE);

-- On-demand features: computed at read time from the request and stored
-- features, with the same definition online and in training sets.
CREATE ON DEMAND FEATURE VIEW txn_context AS
SELECT amount / user_txn.amount_24h AS share_of_24h_spend,
       amount > 3 * coalesce(user_txn.avg_amount_1d, amount) AS above_3x_daily_mean
FROM txn_request, user_txn;
"""

PROFILES_PY = '''\
"""User profiles (a plain feature view over Parquet files) and the fraud
model's feature service, written with the Python API."""
from fsapp.registry.python_api import (
    Bool, FeatureService, FeatureView, Field, FileSource, Int64, String, UnixTimestamp,
)

user_profiles = FileSource(
    name="user_profiles",
    path="data/user_profiles.parquet",
    schema=[Field("user_id", Int64), Field("age", Int64), Field("country", String),
            Field("segment", String), Field("is_verified", Bool), Field("updated_at", UnixTimestamp)],
    timestamp_field="updated_at",
)

user_profile = FeatureView(
    name="user_profile",
    source=user_profiles,
    entities=["card_user"],
    features=["age", "country", "lower(segment) AS segment", "is_verified"],
    ttl="30d",
    description="Slowly changing facts about a card holder",
)

fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[
        "user_txn:txn_count_1h", "user_txn:amount_24h", "user_txn:distinct_merchants_1d",
        "user_txn:last_5_amounts", "merchant_txn:merchant_txn_count_1h", "merchant_txn:foreign_txn_count_1d",
        user_profile[["age", "country", "is_verified"]],
    ],
    description="Features of the card fraud model",
)
'''


PROFILES_PARQUET = "data/user_profiles.parquet"
STARTER_USERS = 1_000
_DAY_US = 86_400_000_000


def write_user_profiles(path: str | Path, users: int = STARTER_USERS, now: int | None = None, seed: int = 19) -> Path:
    """The `user_profiles` source's Parquet file: one row per card holder
    1..users (age, country, segment, is_verified), each last updated within
    the 5 days before `now` (µs; default the wall clock): `fstore materialize
    now-7d now` loads them all, and the view's 30-day TTL keeps them readable
    for more than three weeks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    now = time.time_ns() // 1000 if now is None else int(now)
    rng = np.random.default_rng(seed)
    countries = np.array(["US", "DE", "FR", "GB", "BR", "IN"], dtype=object)
    segments = np.array(["Retail", "Premium", "Business"], dtype=object)  # the view lowercases them
    table = pa.table({
        "user_id": np.arange(1, users + 1, dtype=np.int64),
        "age": np.clip(np.round(rng.normal(41, 13, users)), 18, 90).astype(np.int64),
        "country": countries[rng.choice(len(countries), users, p=[.5, .12, .1, .1, .1, .08])],
        "segment": segments[rng.choice(len(segments), users, p=[.7, .2, .1])],
        "is_verified": rng.random(users) < 0.85,
        "updated_at": pa.array(now - rng.integers(3_600_000_000, 5 * _DAY_US, users), pa.timestamp("us")),
    })
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))
    return path


def init_repo(path: str | Path, project: str | None = None) -> list[Path]:
    """Create the starter repo in `path` (created if missing), with its
    profile data; refuses to overwrite an existing fstore.yaml. Returns the
    files written."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise RepoError(f"{root} exists and is not a directory; name a new or an existing directory")
    try:
        return _write_repo(root, project)
    except OSError as e:  # a parent that does not exist (and cannot be made), no permission, a full disk
        raise RepoError(f"cannot create the repo in {root}: {e.strerror or e}"
                        + (f" ({e.filename})" if e.filename and str(e.filename) != str(root) else "")) from None


def _write_repo(root: Path, project: str | None) -> list[Path]:
    if (root / "fstore.yaml").exists():
        raise RepoError(f"{root} already has an fstore.yaml; init only creates new repos")
    project = project or root.resolve().name.replace("-", "_") or "features"
    files = {"fstore.yaml": FSTORE_YAML.format(project=project), "features.sql": FEATURES_SQL,
             "profiles.py": PROFILES_PY, "data/.gitignore": "*\n!.gitignore\n"}
    for rel in [*files, PROFILES_PARQUET]:
        if (root / rel).exists():
            raise RepoError(f"{root / rel} already exists; init only creates new repos")
    written = []
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        written.append(p)
    written.append(write_user_profiles(root / PROFILES_PARQUET))
    return written
