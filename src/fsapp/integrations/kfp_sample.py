"""A sample KFP v2 pipeline: fstore training set -> train -> log model.

    python -m fsapp.integrations.kfp_sample train_pipeline.yaml   # compile to KFP IR YAML

Steps: import the label rows (a Parquet file or URI), `training_set` (the
fstore component: point-in-time features from a feature service, lineage in
the artifact's metadata), `train` (a scikit-learn logistic regression on the
feature columns, nulls filled with 0.0), `log_model` (MLflow: the training
set with its lineage, and the model wrapped so that it looks its features up
in `store` when served). The train and log steps also need scikit-learn and
the `mlflow` extra in their image. tests/integration/test_kfp.py runs it with
`kfp.local` (subprocess runner, no cluster)."""
# no `from __future__ import annotations`: KFP reads the components' annotations as types

import sys

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Model, Output

from fsapp.integrations.kfp import make_components, settings_from_env


def train(training_set: Input[Dataset], label: str, model: Output[Model]):
    """Fit a logistic regression on the training set's feature columns."""
    import pickle

    from sklearn.linear_model import LogisticRegression

    from fsapp.integrations.steps import ParquetTrainingSet
    from fsapp.integrations.training import training_data

    X, y = training_data(ParquetTrainingSet(training_set.path), label=label, fill_na=0.0)
    fitted = LogisticRegression().fit(X, y)
    with open(model.path, "wb") as f:
        pickle.dump(fitted, f)
    model.metadata.update({"framework": "scikit-learn", "features": list(X.columns), "fill_na": 0.0})


def log_model(training_set: Input[Dataset], model: Input[Model], label: str, store: str, tracking_uri: str,
              experiment: str, name: str) -> str:
    """Log the training set and the model to MLflow; returns the model URI."""
    import pickle

    import mlflow

    from fsapp.integrations import mlflow as fsmlflow
    from fsapp.integrations.steps import ParquetTrainingSet

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    train_set = ParquetTrainingSet(training_set.path)
    with open(model.path, "rb") as f:
        fitted = pickle.load(f)  # noqa: S301 - the artifact the train step just wrote
    with mlflow.start_run():
        fsmlflow.log_training_set(train_set, label=label)
        info = fsmlflow.log_model(fitted, training_set=train_set, store=store, name=name, fill_na=0.0)
    return info.model_uri


def build_pipeline(**component_settings):
    """The pipeline function, its components built with `component_settings`
    (see fsapp.integrations.kfp.make_components; default from the env)."""
    opts = {**settings_from_env(), **component_settings}
    fstore = make_components(**opts)
    train_op = dsl.component(train, **opts)
    log_op = dsl.component(log_model, **opts)

    @dsl.pipeline(name="fstore-train-log", description="fstore training set -> train -> MLflow model")
    def train_pipeline(store: str, labels_uri: str, feature_service: str, label: str, tracking_uri: str,
                       experiment: str = "fstore", model_name: str = "model") -> str:
        labels = dsl.importer(artifact_uri=labels_uri, artifact_class=Dataset, reimport=False)
        built = fstore.training_set(store=store, entities=labels.output, feature_service=feature_service,
                                    label=label)
        trained = train_op(training_set=built.outputs["training_set"], label=label)
        logged = log_op(training_set=built.outputs["training_set"], model=trained.outputs["model"], label=label,
                        store=store, tracking_uri=tracking_uri, experiment=experiment, name=model_name)
        return logged.output

    return train_pipeline


def compile_pipeline(path: str, **component_settings) -> str:
    """Writes the sample pipeline as KFP IR YAML to `path`."""
    compiler.Compiler().compile(build_pipeline(**component_settings), path)
    return path


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else "train_pipeline.yaml"))
