"""The embedded demo dataset: procedural grayscale faces whose expressions are driven by FACS
action units (AUs).

Real FER datasets are licensed, so this generator stands in for CK+ everywhere in fesaug: same
seven classes, same imbalance, subjects that show only some expressions in short sequences of
near-identical frames. Unlike a real dataset it knows its ground truth: every row stores the
parameters that reproduce its image exactly (``demo_params``), and :func:`counterfactual`
re-renders the same face, pose and lighting with another expression, which is what a synthesised
image of that row should have looked like.

Two populations (:data:`STYLES`): ``standard``, the dataset every benchmark uses, and ``shifted``,
a second one for cross-dataset tests (train on one, test on the other): other face shapes and skin
tones, strong side lighting and lower contrast, a wider range of head poses, and faces captured
at 60-85 % of the resolution, then upscaled (blurred). Same classes, same AUs, same manifest; its
subject ids start with ``DS`` instead of ``D``, so no identity is shared with the standard set.

Expressions are built from AU intensities (0..1) through :data:`AU_PROTOTYPES`, an EMFACS-like
table. Classes that share AUs (fear/surprise, anger/disgust/sadness, contempt/happy) are meant to
be confusable at low intensity, and a real share of sequences peaks at low intensity, so a
classifier trained on the imbalanced set does worse on the rare classes.

The package: :mod:`~fesaug.data.demo.aus` (the AU tables), :mod:`~fesaug.data.demo.styles`
(populations, identities, pose), :mod:`~fesaug.data.demo.canvas` and :mod:`~fesaug.data.demo.face`
(drawing), :mod:`~fesaug.data.demo.renderer` (rendering and counterfactuals) and
:mod:`~fesaug.data.demo.dataset` (the dataset and its manifest).
"""

from fesaug.data.demo.aus import AU_IDS, AU_NAMES, AU_PROTOTYPES, AU_THRESHOLD, UNILATERAL, expression_aus
from fesaug.data.demo.dataset import (
    DATASET,
    DEFAULT_COUNTS,
    DEFAULT_SUBJECTS,
    FRAME_RAMP,
    INTENSITY_A,
    INTENSITY_B,
    INTENSITY_LOW,
    JITTER_SD,
    make_demo_dataset,
)
from fesaug.data.demo.renderer import RENDERER_VERSION, counterfactual, render, render_aus, render_params
from fesaug.data.demo.styles import STYLES, Nuisance, Style, Subject, subject_id

__all__ = [
    "AU_IDS",
    "AU_NAMES",
    "AU_PROTOTYPES",
    "AU_THRESHOLD",
    "DATASET",
    "DEFAULT_COUNTS",
    "DEFAULT_SUBJECTS",
    "FRAME_RAMP",
    "INTENSITY_A",
    "INTENSITY_B",
    "INTENSITY_LOW",
    "JITTER_SD",
    "RENDERER_VERSION",
    "STYLES",
    "UNILATERAL",
    "Nuisance",
    "Style",
    "Subject",
    "counterfactual",
    "expression_aus",
    "make_demo_dataset",
    "render",
    "render_aus",
    "render_params",
    "subject_id",
]
