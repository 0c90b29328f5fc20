"""The registry: feature definitions (SQL DSL or Python API), their versions
and lineage, stored in one SQLite file that many processes read safely.

    from fsapp.registry import Repo, Registry
    plan, apply_id = Repo("my_repo").apply()
    reg = Registry(Repo("my_repo").registry_path)
    view = reg.feature_view("user_txn")          # latest; feature_view("user_txn", 1) for v1
    view.online_schema(), view.window_groups(), reg.resolve_features(feature_service="fraud_v1")
"""
from fsapp.registry.catalog import FeatureViewInfo, Registry
from fsapp.registry.dsl import parse
from fsapp.registry.errors import (
    DefinitionError, DslSyntaxError, IncompatibleChange, NotFoundError, RegistryConflict, RegistryError, RepoError,
)
from fsapp.registry.lineage import lineage, render_lineage
from fsapp.registry.plan import Plan, make_plan
from fsapp.registry.render import script_sql, to_sql
from fsapp.registry.repo import Repo
from fsapp.registry.resolve import resolve
from fsapp.registry.scaffold import init_repo
from fsapp.registry.store import Entry, RegistryStore, Snapshot

__all__ = ["Registry", "FeatureViewInfo", "Repo", "RegistryStore", "Entry", "Snapshot", "Plan", "make_plan",
           "parse", "to_sql", "script_sql", "resolve", "lineage", "render_lineage", "init_repo",
           "RegistryError", "DslSyntaxError", "DefinitionError", "NotFoundError", "RegistryConflict",
           "IncompatibleChange", "RepoError"]
