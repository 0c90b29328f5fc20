"""Kubeflow Pipelines (KFP v2) components over fstore: lightweight Python
components whose bodies call fsapp.integrations.steps.

    from fsapp.integrations.kfp import materialize, training_set, push_parquet

- `materialize(store, start, end, views)` -> the materialize answer (JSON text)
- `training_set(store, entities, feature_service | features, label)` ->
  `training_set`: a Parquet Dataset whose artifact metadata is the lineage
  record (pinned feature versions, service, label, time range, rows, schema)
- `push_parquet(store, stream, events)` -> {"accepted", "late"} (JSON text)

`store` is an `fstore serve` URL (what a pipeline on a cluster uses) or a
repo path (a local run). The components run in `FSTORE_KFP_IMAGE` (default
python:3.11) after `pip install` of `FSTORE_KFP_PACKAGES` (comma-separated,
default "fstore[kfp]"; empty: an image that has fstore already, and KFP's own
package is not installed either); `make_components(...)` builds them with
other settings. The sample pipeline is fsapp.integrations.kfp_sample."""
# no `from __future__ import annotations`: KFP reads the components' annotations as types

import os
from types import SimpleNamespace

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

DEFAULT_IMAGE = "python:3.11"
DEFAULT_PACKAGES = "fstore[kfp]"


def settings_from_env() -> dict:
    """base_image / packages_to_install / install_kfp_package from
    $FSTORE_KFP_IMAGE and $FSTORE_KFP_PACKAGES."""
    packages = [p.strip() for p in os.environ.get("FSTORE_KFP_PACKAGES", DEFAULT_PACKAGES).split(",") if p.strip()]
    return {"base_image": os.environ.get("FSTORE_KFP_IMAGE", DEFAULT_IMAGE), "packages_to_install": packages,
            "install_kfp_package": bool(packages)}


def fstore_materialize(store: str, start: str = "", end: str = "now", views: str = "") -> str:
    """Recompute online values as of `end` from fstore's offline log."""
    import json

    from fsapp.integrations.steps import materialize

    return json.dumps(materialize(store, start, end, views))


def fstore_training_set(store: str, entities: Input[Dataset], training_set: Output[Dataset], feature_service: str = "",
                  features: str = "", label: str = "", full_feature_names: bool = False):
    """Build a point-in-time training set to Parquet; its lineage becomes the artifact's metadata."""
    from fsapp.integrations.steps import build_training_set

    record = build_training_set(store, entities.path, training_set.path, feature_service=feature_service,
                                features=features, label=label, full_feature_names=full_feature_names)
    training_set.metadata.update({k: v for k, v in record.items() if v is not None})


def fstore_push_parquet(store: str, stream: str, events: Input[Dataset]) -> str:
    """Push the events of a Parquet artifact to an fstore stream."""
    import json

    from fsapp.integrations.steps import push_parquet

    return json.dumps(push_parquet(store, stream, events.path))


def make_components(base_image: str | None = None, packages_to_install: list[str] | None = None,
                    install_kfp_package: bool | None = None) -> SimpleNamespace:
    """The three components built with these settings (None: from the environment)."""
    opts = settings_from_env()
    given = {"base_image": base_image, "packages_to_install": packages_to_install,
             "install_kfp_package": install_kfp_package}
    opts.update({k: v for k, v in given.items() if v is not None})
    return SimpleNamespace(materialize=dsl.component(fstore_materialize, **opts),
                           training_set=dsl.component(fstore_training_set, **opts),
                           push_parquet=dsl.component(fstore_push_parquet, **opts))


_default = make_components()
materialize = _default.materialize
training_set = _default.training_set
push_parquet = _default.push_parquet
