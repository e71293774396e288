"""fesaug.FESampler: imbalanced-learn's fit_resample over arrays of faces. Shapes, dtypes and
layouts; every form of sampling_strategy; provenance and weights; reproducibility; the same
sources as ``fesaug balance``; bad input; and imbalanced-learn's own sampler checks, run on
images. A tiny FERSNet trained for one epoch stands in for a real generator (the gate is opened
with min_confidence=0 where counts matter)."""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone

import fesaug
from fesaug.balance import BalanceConfig, balance
from fesaug.data.datasets import ManifestDataset
from fesaug.data.manifest import read_manifest
from fesaug.utils.errors import FesaugError, InvalidValue

from .conftest import REPO, SMALL_COUNTS

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = SMALL_COUNTS


@pytest.fixture(scope="module")
def demo(small_demo: Path) -> Path:
    return small_demo


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint: Path) -> Path:
    return small_checkpoint


@pytest.fixture(scope="module")
def faces(demo: Path) -> ManifestDataset:
    return ManifestDataset(demo)


@pytest.fixture(scope="module")
def sampler(checkpoint: Path) -> functools.partial:
    """FESampler with the gate open, on the CPU, seeded."""
    return functools.partial(fesaug.FESampler, checkpoint, min_confidence=0.0, random_state=0, device="cpu")


def _arrays(faces: ManifestDataset) -> tuple[np.ndarray, np.ndarray]:
    return faces.pixels[:, 0].numpy(), faces.labels


# ---------------------------------------------------------------------------- shapes and provenance


def test_fit_resample_returns_the_input_then_synthetic_faces_up_to_the_largest_class(sampler, faces) -> None:
    X, y = _arrays(faces)
    s = sampler()
    X_res, y_res = s.fit_resample(X, y, groups=faces.subjects)
    assert X_res.dtype == np.uint8 and X_res.shape == (7 * 10, 32, 32) and y_res.dtype == y.dtype
    assert np.bincount(y_res).tolist() == [10] * 7  # auto: every class up to the largest
    assert s.sampling_strategy_ == {k: 10 - n for k, n in enumerate(COUNTS.values()) if n < 10}
    n = len(X)
    assert np.array_equal(X_res[:n], X) and np.array_equal(y_res[:n], y)
    assert np.array_equal(s.sample_indices_, np.arange(n))  # every synthetic: no repeats
    assert s.is_synthetic_.tolist() == [False] * n + [True] * (len(X_res) - n)
    assert np.array_equal(s.synthetic_targets_, y_res[n:])
    # Each synthetic face was made from a face of another class, and differs from it.
    parents = s.parent_indices_
    assert len(parents) == len(X_res) - n and (y[parents] != y_res[n:]).all()
    assert all(not np.array_equal(X_res[n + i], X[p]) for i, p in enumerate(parents))
    assert ((s.confidences_ >= 0) & (s.confidences_ <= 1)).all() and len(s.source_transforms_) == len(parents)
    assert np.allclose(s.sample_weight_, 1.0) and len(s.sample_weight_) == len(X_res)
    assert s.provenance_["checkpoint_sha256"] == s.generator_.checkpoint_sha256 and s.provenance_["seed"] == 0
    assert s.shortfall_ == dict.fromkeys(range(7), 0)


def test_sources_spread_over_subjects_before_any_is_used_twice(sampler, faces) -> None:
    X, y = _arrays(faces)
    s = sampler(sampling_strategy={1: 8})  # contempt: 4 more images, from 8 subjects
    s.fit_resample(X, y, groups=faces.subjects)
    assert len({faces.subjects[p] for p in s.parent_indices_}) == 4


def test_layouts_and_dtypes_come_back_as_they_went_in(sampler, faces) -> None:
    X, y = _arrays(faces)
    X_res, y_res = sampler().fit_resample(X, y)
    channels_last, y_32 = sampler().fit_resample(X[..., None], y.astype(np.int32))
    assert channels_last.shape == (*X_res.shape, 1) and y_32.dtype == np.int32
    as_float, _ = sampler().fit_resample(X.astype(np.float32) / 255, y)
    assert as_float.dtype == np.float32 and 0 <= as_float.min() <= as_float.max() <= 1
    assert np.array_equal(as_float[: len(X)], X.astype(np.float32) / 255)
    as_lists = sampler().fit_resample(X.tolist(), y.tolist())
    assert isinstance(as_lists[0], list) and np.array_equal(np.asarray(as_lists[0]), X_res)
    # Faces at another size than the generator's are synthesized at its size and come back at theirs.
    big, _ = sampler().fit_resample(np.repeat(np.repeat(X, 2, axis=1), 2, axis=2), y)
    assert big.shape == (len(X_res), 64, 64)


def test_string_labels_name_classes_in_any_spelling_and_label_names_map_integers(sampler, faces) -> None:
    X, y = _arrays(faces)
    spelled = np.array(["angry", "contempt", "disgusted", "afraid", "happiness", "sad", "surprised"])[y]
    s = sampler()
    _, y_res = s.fit_resample(X, spelled)
    assert Counter(y_res.tolist()) == dict.fromkeys(spelled.tolist(), 10)
    # FER2013-style integer codes: label_names says which class each integer is.
    codes = np.array([0, 7, 1, 2, 3, 4, 5])[y]  # contempt gets code 7
    names = {0: "anger", 1: "disgust", 2: "fear", 3: "happy", 4: "sadness", 5: "surprise", 7: "contempt"}
    s2 = sampler(label_names=names)
    X_res, y_res = s2.fit_resample(X, codes)
    assert Counter(y_res.tolist()) == dict.fromkeys(names, 10)
    # A face synthesized for code 7 is the generator's contempt face of its parent.
    i = next(
        i for i, (c, how) in enumerate(zip(s2.synthetic_targets_, s2.source_transforms_)) if c == 7 and how == "none"
    )
    again = s2.generator_.synthesize(torch.from_numpy(X[s2.parent_indices_[i]][None]), "contempt")[0].numpy()
    assert np.abs(X_res[len(X) + i].astype(int) - again).max() <= 1


# ---------------------------------------------------------------------------- strategies


def test_every_form_of_sampling_strategy(sampler, faces) -> None:
    X, y = _arrays(faces)
    counts = np.bincount(y)  # 6 4 7 4 9 5 10

    def resampled(strategy, X=X, y=y):
        return np.bincount(sampler(sampling_strategy=strategy).fit_resample(X, y)[1], minlength=7)

    assert resampled("minority").tolist() == [6, 10, 7, 4, 9, 5, 10]  # ties go to the first class
    assert resampled("not minority").tolist() == [10, 4, 10, 10, 10, 10, 10]
    assert resampled("all").tolist() == [10] * 7
    assert resampled({0: 8, 3: 5}).tolist() == [8, 4, 7, 5, 9, 5, 10]  # other classes untouched
    assert resampled(lambda labels: {1: int((labels == 6).sum())}).tolist() == [6, 10, 7, 4, 9, 5, 10]
    # A ratio, for two classes: the minority up to int(ratio x the majority's count).
    two = np.isin(y, [1, 6])  # contempt 4, surprise 10
    assert resampled(0.8, X[two], y[two])[[1, 6]].tolist() == [8, 10]
    assert resampled(1.0, X[two], y[two])[[1, 6]].tolist() == [10, 10]
    assert counts.tolist() == [6, 4, 7, 4, 9, 5, 10]


def test_synthetic_share_and_weight_fill_the_rest_with_repeats_and_keep_weights_balanced(sampler, faces) -> None:
    X, y = _arrays(faces)
    s = sampler(synthetic_share=0.5, synthetic_weight=0.5)
    X_res, y_res = s.fit_resample(X, y)
    assert np.bincount(y_res).tolist() == [10] * 7
    n_syn = np.bincount(y_res[s.is_synthetic_], minlength=7)
    assert n_syn.tolist() == [round(0.5 * (10 - c)) for c in COUNTS.values()]
    repeats = s.sample_indices_[len(X) :]
    assert (
        np.array_equal(X_res[len(X) : len(s.sample_indices_)], X[repeats])
        and (y[repeats] == y_res[len(X) : len(s.sample_indices_)]).all()
    )
    # Synthetic rows count 0.5; each class's weights still sum to its target.
    assert np.allclose(s.sample_weight_[s.is_synthetic_], 0.5)
    assert np.allclose(np.bincount(y_res, weights=s.sample_weight_), 10)


def test_a_closed_gate_is_reported_and_filled_with_repeats(checkpoint, faces) -> None:
    X, y = _arrays(faces)
    s = fesaug.FESampler(checkpoint, min_confidence=1.0, max_attempts=2, random_state=0, device="cpu")
    with pytest.warns(UserWarning, match="no candidate passed the quality gate"):
        X_res, y_res = s.fit_resample(X, y)
    assert not s.is_synthetic_.any() and np.bincount(y_res).tolist() == [10] * 7
    assert s.shortfall_ == {k: 10 - n for k, n in enumerate(COUNTS.values())}
    assert np.array_equal(X_res, X[s.sample_indices_])


def test_random_state_fixes_the_result(sampler, faces) -> None:
    X, y = _arrays(faces)
    first = sampler(random_state=3).fit_resample(X, y)
    again = sampler(random_state=3).fit_resample(X, y)
    other = sampler(random_state=4).fit_resample(X, y)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    s = sampler(random_state=np.random.RandomState(3))
    s.fit_resample(X, y)
    assert s.provenance_["seed"] == np.random.RandomState(3).randint(np.iinfo(np.int32).max)


def test_the_manifest_form_picks_the_sources_fesaug_balance_picks(sampler, demo, checkpoint, tmp_path) -> None:
    s = sampler()
    X_res, y_res = s.fit_resample(demo)  # real train rows outside the generator's held-out fold 0
    m = read_manifest(demo)
    assert (m.df["fold"].iloc[s.manifest_rows_] != 0).all() and X_res.shape[1:] == (32, 32)
    out = balance(demo, checkpoint, tmp_path / "balanced", BalanceConfig(min_confidence=0.0, seed=0), device="cpu")
    b = read_manifest(out.manifest).df
    syn = b[b["origin"] == "synthetic"]
    ids = m.df["sample_id"].to_numpy()
    ours = sorted(zip(y_res[s.is_synthetic_].tolist(), ids[s.manifest_rows_[s.parent_indices_]].tolist()))
    assert ours == sorted(zip(syn["label"].tolist(), syn["parent_id"].tolist()))
    with pytest.raises(InvalidValue, match="subject_id column; drop groups"):
        sampler().fit_resample(demo, groups=["a"] * 45)


def test_fit_resolves_without_synthesizing_and_clone_keeps_the_settings(sampler, faces) -> None:
    X, y = _arrays(faces)
    s = sampler(sampling_strategy="minority").fit(X, y)
    assert s.sampling_strategy_ == {1: 6} and not hasattr(s, "is_synthetic_")
    assert clone(s).get_params() == s.get_params()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 45 faces, raw pixels
def test_it_runs_inside_an_imbalanced_learn_pipeline(sampler, faces) -> None:
    pipeline = pytest.importorskip("imblearn.pipeline")
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import FunctionTransformer

    X, y = _arrays(faces)
    flatten = FunctionTransformer(lambda images: images.reshape(len(images), -1) / 255)
    model = pipeline.make_pipeline(sampler(), flatten, LogisticRegression(max_iter=200)).fit(X, y)
    assert model.predict(X).shape == y.shape


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda X, y: (X.reshape(len(X), -1), y), "FESampler takes images N×H×W or N×H×W×C"),
        (lambda X, y: (X[:-1], y), "X has 44 images but y has 45 labels"),
        (lambda X, y: (X[:, :, :30], y), "32x30; crop or pad the faces to squares"),
        (lambda X, y: (X.astype(np.float32), y), "float32 images must lie in [0, 1]"),
        (lambda X, y: (np.repeat(X[..., None], 3, axis=3), y), "3 channel(s), but the generator"),
        (lambda X, y: (X, np.zeros(len(y))), "a single class"),
        (lambda X, y: (X, y + 0.5), "Unknown label type"),
        (lambda X, y: (X, np.eye(7)[y] + np.eye(7)[(y + 1) % 7]), "Multilabel and multioutput targets"),
        (lambda X, y: (X, y + 1), "y has label 7, but the generator knows classes 0..6"),
        (lambda X, y: (X, np.array(["anger", "joy", "boredom"] * 15)), "'boredom' ('boredom') is not a class"),
    ],
)
def test_bad_arrays_are_one_value_error_naming_the_fix(sampler, faces, change, message) -> None:
    X, y = change(*_arrays(faces))
    with pytest.raises(InvalidValue, match=_literal(message)) as caught:
        sampler().fit_resample(X, y)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, FesaugError)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"sampling_strategy": "majority"}, "unknown sampling strategy 'majority'"),
        ({"sampling_strategy": 0.5}, "a ratio sampling_strategy (0.5) is for two classes"),
        ({"sampling_strategy": {0: 3}}, "asks for 3 images of 0, below its 6 real ones"),
        ({"sampling_strategy": {9: 30}}, "sampling_strategy names 9, a class the data do not have"),
        ({"sampling_strategy": lambda y: 12}, "must return a mapping"),
        ({"sampling_strategy": [1, 2]}, "sampling_strategy must be one of"),
        ({"synthetic_share": 0}, "--synthetic-share must lie in (0, 1]"),
        ({"min_confidence": 2}, "--min-confidence must lie in [0, 1]"),
        ({"random_state": "seven"}, "random_state must be an int"),
    ],
)
def test_bad_settings_are_value_errors_raised_by_fit(sampler, faces, settings, message) -> None:
    s = sampler(**settings)  # accepted as given, as scikit-learn's estimators do; checked by fit
    with pytest.raises(ValueError, match=_literal(message)):
        s.fit_resample(*_arrays(faces))


def test_missing_y_and_a_bad_checkpoint_say_what_to_pass(faces, tmp_path) -> None:
    X, y = _arrays(faces)
    with pytest.raises(InvalidValue, match="y is missing"):
        fesaug.FESampler(tmp_path).fit_resample(X)
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FesaugError, match="x.pt"):
        fesaug.FESampler(tmp_path / "x.pt").fit_resample(X, y)


def _literal(text: str) -> str:
    import re

    return re.escape(text)


# ---------------------------------------------------------------------------- imbalanced-learn's checks

# imbalanced-learn's checks of a sampler that do not apply to one over images, and why. The
# checks of sparse, pandas, string and NaN input are not even generated: the sampler's tags say
# it takes none of them (images are dense numeric arrays).
NOT_APPLICABLE = {
    "check_samplers_fit": "its X is 30 rows of 2 random features, not images; "
    "test_fit_resolves_without_synthesizing_and_clone_keeps_the_settings checks the same on faces",
}


def _imblearn_checks() -> list:
    try:
        import imblearn.utils.estimator_checks as checks
    except ImportError:  # the dev extra installs it
        return [pytest.param(None, marks=pytest.mark.skip(reason="imbalanced-learn is not installed"))]
    instance = fesaug.FESampler("checkpoint.pt", min_confidence=0.0, random_state=0, device="cpu", batch_size=256)
    return [
        pytest.param(check, id=checks._check_name(check)) for _, check in checks.estimator_checks_generator(instance)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("check", _imblearn_checks())
def test_imbalanced_learn_sampler_checks(check, checkpoint, faces, monkeypatch) -> None:
    """imbalanced-learn's own checks, on faces: the checks draw their data from
    ``sample_dataset_generator`` (1000 rows of 3 classes, 20/30/50 %), whose rows become faces
    here (float in [0, 1], as its X is float) with its labels unchanged."""
    import imblearn.utils.estimator_checks as checks
    from imblearn.over_sampling.base import BaseOverSampler

    name = checks._check_name(check)
    if name in NOT_APPLICABLE:
        pytest.skip(NOT_APPLICABLE[name])
    # The checks hold over-samplers to their contract (every class at least the majority's count)
    # when isinstance(sampler, BaseOverSampler); FESampler is one without depending on the package.
    BaseOverSampler.register(fesaug.FESampler)
    images = faces.pixels[:, 0].numpy().astype(np.float64) / 255
    tabular = checks.sample_dataset_generator

    def face_dataset():
        _, y = tabular()
        return images[np.random.default_rng(0).integers(0, len(images), len(y))], y

    monkeypatch.setattr(checks, "sample_dataset_generator", face_dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a gate that let nothing through
        check(fesaug.FESampler(checkpoint, min_confidence=0.0, random_state=0, device="cpu", batch_size=256))


@pytest.mark.slow
def test_the_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """docs/sampler.md's example, as written: fit_resample's output trains a torchvision model."""
    text = (REPO / "docs" / "sampler.md").read_text()
    example = text.split("### Example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/sampler.md", "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out
    assert "per class: [24, 24, 24, 24, 24, 24, 24]" in printed and "balanced accuracy on fold 0:" in printed
