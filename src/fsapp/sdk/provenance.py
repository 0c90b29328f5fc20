"""What a training set is made of, attached to it when it is built
(`result.provenance`): the feature versions it read, in column order, the
service it came from, the entity keys and request columns a model needs to
look the same features up online, and where its labels came from.

`fsapp.integrations` logs this next to a model (MLflow tags, KFP artifact
metadata); it is computed from registry entries (`describe`), so the
embedded store and the HTTP client build the same record."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from fsapp.registry.catalog import output_name


@dataclass(frozen=True)
class Provenance:
    features: tuple[str, ...]  # pinned refs, "view@vN:feature", in the training set's column order
    columns: tuple[str, ...]  # the training set's column for each feature
    types: tuple[str, ...]  # the registered type of each feature (DOUBLE, BIGINT, DOUBLE[5], ...)
    keys: tuple[tuple[str, str], ...]  # (entity key column, type) the features are looked up by
    request_columns: tuple[tuple[str, str], ...]  # (column, type) on-demand features read from the request
    feature_service: str | None
    full_feature_names: bool
    label_source: str  # the entity file's path, or the in-memory type that held the label rows

    def to_dict(self) -> dict:
        return {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, doc: dict) -> Provenance:
        return cls(features=tuple(doc["features"]), columns=tuple(doc["columns"]), types=tuple(doc["types"]),
                   keys=tuple(tuple(k) for k in doc["keys"]),
                   request_columns=tuple(tuple(c) for c in doc["request_columns"]),
                   feature_service=doc.get("feature_service"), full_feature_names=bool(doc["full_feature_names"]),
                   label_source=doc.get("label_source", ""))


def label_source_of(entity_df) -> str:
    if entity_df is None:  # no training set (a model logged with a feature service alone)
        return ""
    if isinstance(entity_df, (str, os.PathLike)):
        return os.path.abspath(os.fspath(entity_df))
    kind = type(entity_df)
    return f"{kind.__module__.split('.')[0]}.{kind.__name__}" if kind.__module__ != "builtins" else kind.__name__


def training_provenance(features: list[str], feature_service: str | None, full_feature_names: bool, entity_df,
                        describe) -> Provenance:
    """The provenance of a training set built from `features` ("view:feature",
    "view:*" or "view@vN:feature"; a service's already expanded).
    `describe(name, version)` returns a registry entry as a dict."""
    entries: dict[tuple[str, int | None], dict] = {}

    def entry(view: str, version: int | None) -> dict:
        if (view, version) not in entries:
            entries[(view, version)] = describe(view if version is None else f"{view}@v{version}")
        return entries[(view, version)]

    refs, columns, types = [], [], []
    keys: dict[str, str] = {}
    request: dict[str, str] = {}
    for text in features:
        view_part, _, feature = text.partition(":")
        view, _, ver = view_part.partition("@v")
        e = entry(view, int(ver) if ver.isdigit() else None)
        registered = dict((n, t) for n, t in e["resolved"]["features"])
        names = list(registered) if feature == "*" else [feature]
        for name in names:
            refs.append(f"{view}@v{e['version']}:{name}")
            columns.append(output_name(view, name, full_feature_names))
            types.append(registered.get(name, "UNKNOWN"))
        keys.update((k, t) for k, t in e["resolved"].get("keys", []))
        request.update((c, t) for c, t in e["resolved"].get("request", []))
    return Provenance(tuple(refs), tuple(columns), tuple(types), tuple(keys.items()), tuple(request.items()),
                      feature_service, bool(full_feature_names), label_source_of(entity_df))
