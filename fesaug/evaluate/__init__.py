"""Evaluate: does balancing by synthesis help a downstream FER model? Measured on real data (``fesaug evaluate``).

The protocol is subject-independent k-fold cross-validation. For each test fold ``k``:

1. **Split.** :func:`fesaug.synthesis.training.split_subjects` holds fold ``k`` out and carves validation
   subjects from the rest. The split is written as ``fold-k/split.parquet`` (the input manifest
   with ``split`` = ``train``/``validation``/``test``), and every model of the fold reads that
   one file, so FERSNet, the balanced data and the downstream classifiers see the same
   subjects in the same roles. Fold ``k`` is used for the final test only; every choice
   (FERSNet checkpoint, downstream epoch) is made on the validation subjects.
2. **Conditions**, each a fresh downstream classifier (:mod:`fesaug.evaluate.downstream`, independent
   of FERSNet, same architecture, schedule, augmentation and seed):

   * ``real``: the real training images;
   * ``fes``: FERSNet trained with fold ``k`` held out (``fold-k/fersnet``), the training
     images balanced with it by :func:`fesaug.balance.run.balance` (``fold-k/balanced``), the
     classifier trained on real + synthetic;
   * ``oversample``: the real training images randomly oversampled to ``fes``'s per-class
     counts (the targets, if ``fes`` is not run) — the baseline a user would try first;
   * ``mixed``: the same per-class counts, each class's shortfall filled half with ``fes``'s
     synthetic images and half with repeats of its real images;
   * ``fersnet``: FERSNet's own FER branch (its validation-selected ``best.pt``), for
     reference against the paper.
3. **Synthesis quality** (:func:`fesaug.evaluate.synthesis_scores.synthesis_quality`): how the
   fold's ``real`` classifier sees the synthetic images, a classifier trained on synthetic images
   only tested on real fold ``k`` (classification accuracy score), Fréchet distance and precision/recall in the
   ``real`` classifier's feature space, a memorisation check, exact scores against the demo
   dataset's counterfactuals, and with an emotion + AU model the AU consistency per target class.

Every step is cached in ``DIR/fold-k/``: an interrupted evaluation resumes at the first missing
piece when run again with the same settings (``DIR/evaluate.json`` records them), and several
processes may each run some ``folds`` into one ``DIR`` (each holds the locks of its folds while it
runs them; a second run of a fold that one holds stops at once, naming it); a run over all folds
then only aggregates. A second ``DIR`` can take the first one's trained generators
(``generators_from``) to compare downstream or balance settings without training them again.
``DIR/results.json``, ``DIR/report.md`` and ``DIR/recall.png`` summarise the folds
present: mean ± std over folds, a paired comparison of ``fes`` with ``real`` and with
``oversample`` (per-fold differences, Wilcoxon signed-rank and paired t tests), and the
:func:`fesaug.evaluate.stats.verdict` those comparisons give.

One downstream training is one draw: its seed (initialisation, batch order, augmentation, the
oversampling draw) moves a fold's macro-F1 by points, as much as the differences measured.
``downstream_seeds`` = n trains every downstream condition n times per fold (seeds ``seed`` …
``seed + n - 1``, extra ones cached in ``fold-k/seeds/``) and averages their test scores per fold
before the comparison over folds; the synthesis report keeps the first seed's ``real`` classifier.

**Cross-dataset** (``test_manifest``): train on all of one dataset (A, the manifest), test on all
of another (B). :mod:`fesaug.evaluate.cross_dataset` checks the pair (B real, no subject or image file in
both, a class in common) and joins it into one input, ``DIR/cross/input.parquet``: A's rows in
split ``train`` (A's folds and splits are not used) and B's rows of the classes A knows in split
``test``. One fold with no held-out fold runs it in ``DIR/cross/``, exactly as a test fold:
validation subjects carved from A's subjects choose every model, FERSNet and the balanced data see
A's training subjects only, B scores. Scores cover the classes both have (A's others are trained,
not tested; B's other rows are left out). With one test set there are no folds to pair: the
downstream seeds are the units (mean ± std over seeds, differences paired by seed). Seeds share
their training and test images, so their spread is training noise, not the variation over
subjects a claim needs: the verdict tests nothing and only says which way the mean went.

The modules: :mod:`~fesaug.evaluate.config` (settings), :mod:`~fesaug.evaluate.conditions` (what
is compared, one definition each), :mod:`~fesaug.evaluate.fold` (a split and its data),
:mod:`~fesaug.evaluate.runner` (train, score and cache a fold's conditions),
:mod:`~fesaug.evaluate.run` (:func:`evaluate`: the folds, or the one cross-dataset split,
:mod:`~fesaug.evaluate.cross_dataset`), :mod:`~fesaug.evaluate.outdir` and
:mod:`~fesaug.evaluate.records` (DIR and its versioned records), :mod:`~fesaug.evaluate.aggregate`
(the summary), :mod:`~fesaug.evaluate.stats` (paired tests, verdict), :mod:`~fesaug.evaluate.report`
(``report.md``, the plot), :mod:`~fesaug.evaluate.synthesis_scores` and
:mod:`~fesaug.evaluate.metrics` (the synthetic images' scores), :mod:`~fesaug.evaluate.downstream`
(the classifiers every condition trains).
"""

from typing import TYPE_CHECKING

from fesaug.utils.lazy import lazy_exports

# Static twins of the lazy names, for type checkers and the API reference (griffe reads source,
# not the runtime); never executed.
if TYPE_CHECKING:
    from fesaug.evaluate.config import EvaluateConfig, EvaluateResult
    from fesaug.evaluate.run import evaluate

__all__ = ["EvaluateConfig", "EvaluateResult", "evaluate"]
__getattr__, __dir__ = lazy_exports(
    __name__, {"EvaluateConfig": ".config", "EvaluateResult": ".config", "evaluate": ".run"}
)
