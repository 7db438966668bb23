"""Training's encoder (`training.data`) and the service's (`service.features`) turn the same rows into the same
matrix: raw categorical values, categories unseen in training, named one-hot columns and positional vectors.

Two encoders exist on purpose (the service never imports training code, and its fast paths work on decoded
JSON, not data frames); this test is what keeps them one encoding.
"""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

import service.artifact
import training.export
from service.features import FeatureEncoder
from training.config import DatasetConfig
from training.data import fit_encoding, logs_from_frame
from training.export import export_artifact
from training.network import NetworkConfig, OutcomeNet

CONFIG = DatasetConfig(
    features=("age", "spend"), categorical=("city", "tier"), treatment="arm", treatments=("none", "coupon"),
    revenue="revenue", cost="cost", min_rows_per_arm=0,
)  # fmt: skip


def frame(rng: np.random.Generator, n: int, cities: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, n).astype(float),
            "spend": rng.gamma(2.0, 10.0, n),
            "city": rng.choice(cities, n),
            "tier": rng.choice(["1", "2", "gold"], n),
            "arm": rng.choice(["none", "coupon"], n),
            "revenue": rng.gamma(2.0, 5.0, n),
            "cost": rng.uniform(0, 1, n),
        }
    )


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, np.ndarray, FeatureEncoder]:
    rng = np.random.default_rng(0)
    train = frame(rng, 300, ["north", "south", "east"])
    encoding = fit_encoding(train, CONFIG)
    scoring = frame(rng, 120, ["north", "south", "east", "west"])  # "west" never seen in training
    expected = logs_from_frame(scoring, CONFIG, encoding).features  # training's encoding of the scoring rows
    names = list(encoding.feature_names)
    net = OutcomeNet(NetworkConfig(n_features=len(names), n_treatments=2, hidden=(4,), binary_revenue=False,
                                   binary_cost=False)).eval()  # fmt: skip
    manifest = export_artifact(
        net, tmp_path_factory.mktemp("artifact"), population=logs_from_frame(train, CONFIG, encoding).features,
        feature_names=names, treatment_names=["none", "coupon"], method="tsm", hyperparameters={},
        categorical={column: list(values) for column, values in encoding.categories.items()},
    )  # fmt: skip
    return scoring, expected, FeatureEncoder(manifest)


def test_raw_categorical_values_encode_alike_including_unseen(
    encoders: tuple[pd.DataFrame, np.ndarray, FeatureEncoder],
) -> None:
    scoring, expected, service_encoder = encoders
    rows = scoring[["age", "spend", "city", "tier"]].to_dict("records")
    matrix, unseen = service_encoder.encode(rows)
    assert np.array_equal(matrix, expected)
    assert unseen == int((scoring["city"] == "west").sum()) > 0


def test_named_one_hot_and_positional_inputs_encode_alike(
    encoders: tuple[pd.DataFrame, np.ndarray, FeatureEncoder],
) -> None:
    _, expected, service_encoder = encoders
    named = [dict(zip(service_encoder.names, map(float, row), strict=True)) for row in expected]
    assert np.array_equal(service_encoder.encode(named)[0], expected)
    positional = [list(map(float, row)) for row in expected]
    assert np.array_equal(service_encoder.encode(positional)[0], expected)
    # One irregular row sends the batch through the careful reference path: the same numbers again.
    mixed = [*positional[:-1], named[-1]]
    assert np.array_equal(service_encoder.encode(mixed)[0], expected)


def test_onnxruntime_session_options_are_written_once() -> None:
    """The export check and the service build their sessions from `service.artifact.session_options`."""
    assert "SessionOptions(" not in inspect.getsource(training.export)
    assert inspect.getsource(service.artifact).count("SessionOptions(") == 1
    assert "session_options(" in inspect.getsource(training.export.onnx_predict)
