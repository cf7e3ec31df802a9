"""The estimators follow scikit-learn's contract: ``__init__`` stores, ``fit`` validates and
sets ``*_`` attributes, the rest refuses to run unfitted (``check_estimator``)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from semdistill.semantics.pca import PCAReducer
from semdistill.student.inputs import LayerInputs
from semdistill.training.probes import CorrectnessProbe, SemanticEntropyProbe

# PCP's labels are 0/1 with 1 = "the default answer is incorrect"; it refuses other label sets
# (strings, {1, 2}, ...) rather than guess which class is the risk
_LABELS_ARE_0_1 = "labels must be 0/1 (1 = incorrect); this check fits other label sets"
EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    "PCAReducer": {},
    "SemanticEntropyProbe": {},
    "CorrectnessProbe": {
        "check_classifiers_classes": _LABELS_ARE_0_1,
        "check_classifier_data_not_an_array": _LABELS_ARE_0_1,
        "check_estimators_dtypes": _LABELS_ARE_0_1,
        "check_fit2d_1feature": _LABELS_ARE_0_1,
    },
}


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """The checks fit tiny problems, where BLAS threads only add overhead."""
    with threadpool_limits(1):
        yield


def _expected_failures(estimator: object) -> dict[str, str]:
    return EXPECTED_FAILURES[type(estimator).__name__]


@parametrize_with_checks(
    [
        PCAReducer(n_components=2),
        # one C and two folds keep every fit's grid search small
        CorrectnessProbe(Cs=(1.0,), cv=2),
        SemanticEntropyProbe(Cs=(1.0,), cv=2),
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible_estimator(estimator, check) -> None:
    check(estimator)


# LayerInputs reads (n, layers, hidden) states: check_estimator's data checks feed 2-D X and
# are skipped by its input tags, so only the API checks run, plus the contract on 3-D data.
LAYER_INPUTS_API_CHECKS = (
    "check_estimator_cloneable",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_mixin_order",
)


@pytest.mark.parametrize("check", LAYER_INPUTS_API_CHECKS)
@pytest.mark.parametrize("n_components", [None, 2])
def test_layer_inputs_api(check: str, n_components: int | None) -> None:
    getattr(estimator_checks, check)("LayerInputs", LayerInputs([1, 3], n_components))


@pytest.mark.parametrize("n_components", [None, 2])
def test_layer_inputs_fit_contract(n_components: int | None) -> None:
    states = np.random.default_rng(0).normal(size=(30, 2, 6))
    inputs = LayerInputs([1, 3], n_components)
    with pytest.raises(NotFittedError):
        inputs.transform(states)
    params = inputs.get_params()
    assert inputs.fit(states) is inputs and inputs.get_params() == params
    assert inputs.layers_ == (1, 3)
    first = inputs.transform(states)
    np.testing.assert_array_equal(clone(inputs).fit(states).transform(states), first)
    np.testing.assert_array_equal(inputs.fit(states).transform(states), first)  # idempotent
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(inputs)).transform(states), first)
    with pytest.raises(ValueError, match="NaN"):
        inputs.fit(np.where(states > 2, np.nan, states))


def test_constructors_only_store_parameters() -> None:
    # invalid values are accepted by __init__ and refused by fit, as in scikit-learn
    states = np.zeros((4, 2, 3))
    for estimator, X, y in (
        (PCAReducer(0), states[:, 0], None),
        (LayerInputs([2, 2]), states, None),
        (LayerInputs([1, 2], n_components=0), states, None),
        (CorrectnessProbe(Cs=()), states[:, 0], np.array([0, 1, 0, 1])),
        (SemanticEntropyProbe(cv=1), states[:, 0], np.arange(4.0)),
    ):
        assert not [name for name in vars(estimator) if name.endswith("_")]
        with pytest.raises(ValueError):
            estimator.fit(X, y)


def test_loaders_build_fitted_estimators() -> None:
    rng = np.random.default_rng(1)
    pca = PCAReducer.from_arrays(np.eye(3)[:2], np.zeros(3), np.array([0.6, 0.4]))
    assert pca.n_components == 2 and pca.n_features_in_ == 3
    np.testing.assert_array_equal(pca.transform(np.eye(3)), np.eye(3)[:, :2])
    raw = LayerInputs.from_arrays([4])
    assert raw.layers == (4,) and raw.components_ is None
    assert raw.transform(np.ones((2, 1, 3))).shape == (2, 3)
    probe = CorrectnessProbe.from_arrays(
        np.zeros(3), np.ones(3), np.array([[1.0, 0.0, 0.0]]), np.zeros(1), C=1.0
    )
    H = rng.normal(size=(5, 3))
    np.testing.assert_allclose(probe.predict_risk(H), 1 / (1 + np.exp(-H[:, 0])))
    np.testing.assert_array_equal(probe.predict(H), (H[:, 0] > 0).astype(int))
    with pytest.raises(ValueError, match="inconsistent"):
        LayerInputs.from_arrays([1, 2], np.zeros((2, 3)), np.ones((2, 3)), np.zeros((1, 2, 3)))
