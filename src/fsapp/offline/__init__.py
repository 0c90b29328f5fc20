"""The offline store: a Parquet event log, point-in-time training sets and
materialization into the online store, all computed by DuckDB.

    store = OfflineStore("repo/data/offline")
    store.log.append("transactions", rows, timestamp="ts", created_ts=now)
    view = ViewDef.windowed("user_txn", "transactions", ["user_id"], sliding("1h", "5m"),
                            ["count(*)", "sum(amount)"])
    store.get_historical_features(entity_df, [view]).to_df()
    store.materialize([view], start, end, online_table)

docs/offline.md has the layout and the SQL behind each rule.
"""
from fsapp.offline.eventlog import EventLog
from fsapp.offline.historical import HistoricalResult, get_historical_features
from fsapp.offline.materialize import materialize, materialize_incremental, online_schema
from fsapp.offline.store import OfflineStore
from fsapp.offline.views import SourceDef, ViewDef, WindowedAgg, from_registry

__all__ = ["EventLog", "HistoricalResult", "OfflineStore", "SourceDef", "ViewDef", "WindowedAgg",
           "from_registry", "get_historical_features", "materialize", "materialize_incremental",
           "online_schema"]
