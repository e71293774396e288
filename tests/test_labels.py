from __future__ import annotations

import pytest

from fesaug.data.labels import CANONICAL, canonical_label, canonicalize, class_list
from fesaug.utils.errors import FesaugError


@pytest.mark.parametrize(
    "raw, canon",
    [
        ("angry", "anger"),
        ("Anger", "anger"),
        ("happiness", "happy"),
        ("sad", "sadness"),
        ("Surprised", "surprise"),
        ("NE", "neutral"),
        ("AN", "anger"),
        ("disgusted", "disgust"),
        ("fearful", "fear"),
        ("4_sad", "sadness"),
    ],
)
def test_aliases_map_onto_the_canonical_vocabulary(raw: str, canon: str) -> None:
    assert canonical_label(raw) == canon


def test_every_canonical_name_maps_to_itself() -> None:
    assert all(canonical_label(c) == c for c in CANONICAL)


def test_unknown_names_are_listed_in_one_error() -> None:
    with pytest.raises(FesaugError) as info:
        canonicalize(["happy", "bored", "sleepy"], where="data/")
    assert "'bored'" in str(info.value) and "'sleepy'" in str(info.value) and "data/" in str(info.value)


def test_two_folders_meaning_the_same_class_are_an_error() -> None:
    with pytest.raises(FesaugError, match="all mean 'anger'"):
        canonicalize(["angry", "anger"], where="data/")


def test_class_order_matches_imagefolder_sorting() -> None:
    assert class_list(["surprise", "anger", "happy", "anger"]) == ["anger", "happy", "surprise"]
