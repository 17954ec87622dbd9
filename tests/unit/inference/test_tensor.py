"""Tensor models: the contract read from the graph, requests checked, batches split back."""

from __future__ import annotations

import numpy as np
import pytest

from inference.bundled import BUNDLE_ROOT, read_bundle
from inference.tensor import TensorInputError, TensorModel


@pytest.fixture(scope="module")
def fusion() -> TensorModel:
    return TensorModel.load(read_bundle(BUNDLE_ROOT / "fusion").model_path)


def request(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sensors": rng.normal(0, 1, (rows, 256, 6)).astype(np.float32),
        "defect_rate": rng.uniform(0, 0.1, (rows, 1)).astype(np.float32),
    }


def test_signature_comes_from_the_graph(fusion):
    assert [s.as_dict() for s in fusion.inputs] == [
        {"name": "sensors", "datatype": "FP32", "shape": [-1, 256, 6]},
        {"name": "defect_rate", "datatype": "FP32", "shape": [-1, 1]},
    ]
    assert [s.name for s in fusion.outputs] == ["state_probs", "anomaly_score"]
    assert fusion.batched
    assert fusion.max_batch is None
    assert fusion.labels[0] == "normal"
    assert len(fusion.labels) == 5


def test_batched_requests_give_the_same_answers_as_single_runs(fusion):
    reqs = [request(1, 1), request(3, 2), request(2, 3)]
    together = fusion.infer([fusion.validate(r) for r in reqs])
    for req, out in zip(reqs, together, strict=True):
        (alone,) = fusion.infer([fusion.validate(req)])
        assert out["state_probs"].shape == (len(req["sensors"]), 5)
        np.testing.assert_allclose(out["state_probs"], alone["state_probs"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["anomaly_score"], alone["anomaly_score"], rtol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("defect_rate"), "do not match"),
        (lambda r: r.update(extra=np.zeros(1, np.float32)), "do not match"),
        (lambda r: r.update(sensors=r["sensors"].astype(np.float64)), "must be FP32"),
        (lambda r: r.update(sensors=r["sensors"][:, :128]), "has shape [2, 128, 6]"),
        (lambda r: r.update(sensors=r["sensors"][0]), "has shape [256, 6]"),
        (lambda r: r.update(defect_rate=np.zeros((3, 1), np.float32)), "same batch size"),
        (lambda r: r.update(sensors=np.zeros((0, 256, 6), np.float32)), "has shape [0, 256, 6]"),
    ],
)
def test_requests_that_break_the_contract_are_refused_by_name(fusion, change, message):
    req = request(2)
    change(req)
    with pytest.raises(TensorInputError) as err:
        fusion.validate(req)
    assert message in err.value.message


def test_warmup_runs(fusion):
    fusion.warmup(4)
