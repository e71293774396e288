"""Balance: synthesize the images each class lacks with a trained FERSNet (``fesaug balance``).

:func:`balance` reads a manifest of real images and a ``fesaug train`` checkpoint and writes a
folder any downstream model can use::

    DIR/manifest.parquet         real rows (referenced in place, or embedded) + synthetic rows
    DIR/images/<class>/<id>.png  the synthetic images
    DIR/README.md                dataset card: before/after table, settings, how it was made
    DIR/histogram.png            images per class, real and synthetic

The steps, in the vocabulary of imbalanced-learn:

1. **Targets.** The *working set* is the real rows of the chosen splits outside the held-out
   folds ``holdout_folds`` (by default the fold the generator was held out from).
   :func:`fesaug.balance.targets.resolve_targets` turns ``target_per_class`` (a number or
   ``"max"``), ``sampling_strategy`` and per-class ``targets`` into a wanted count per class.
2. **Sources.** Class ``c`` is synthesized from working-set images of the other classes, taken
   round-robin over subjects so that every identity contributes before any contributes twice,
   subjects who have no real image of ``c`` first (the counterfactuals the data lacks). Once
   every source is used, sources are reused mirrored, then with small random affine jitter, so
   no two candidates are the same input. Order is a function of the seed only
   (:func:`fesaug.balance.plan.plan_sources`).
3. **Quality gate.** A candidate is kept when the checkpoint's FER branch gives the target
   class at least ``min_confidence`` and, with ``au_checkpoint`` (an emotion + AU network from
   ``fesaug train --tasks emotion,au``), when the AUs it predicts agree with the target's
   prototype (:func:`fesaug.data.au.au_consistency`), and the other gates of
   :mod:`fesaug.balance.gates`; a rejected slot is retried with the next source, at most
   ``max_attempts`` times. Slots still empty are a shortfall, reported and stored.
4. **Output.** Work is cut into chunks of ``batch_size`` slots; each chunk's images and a JSON
   part file are written atomically under ``DIR/.fesaug-balance/``, so an interrupted run
   (even ``kill -9``) resumes where it stopped when the same command is run again. The
   manifest is written last: its presence means the job is finished. Under ``torchrun`` rank
   ``r`` takes chunks ``r, r + world, …``; chunk contents do not depend on the number of
   processes, so the result is the same for any number of them.

Every synthetic row has ``origin="synthetic"``, its ``parent_id``, ``source_label``, target
``label``, the parent's ``subject_id``/``split``/``fold``, ``generator`` (the checkpoint's
sha256), ``seed``, ``confidence`` and ``source_transform``. The footer records the resolved
counts, acceptance rates and, under ``generator_training``, which folds and subjects the
generator saw, so that ``fesaug audit`` can flag synthetic images used against a test fold the
generator was trained on.

The modules follow those steps: :mod:`~fesaug.balance.config` (settings, result),
:mod:`~fesaug.balance.targets` (1), :mod:`~fesaug.balance.plan` (2), :mod:`~fesaug.balance.gates`
(3), :mod:`~fesaug.balance.chunks` and :mod:`~fesaug.balance.run` (4),
:mod:`~fesaug.balance.output` and :mod:`~fesaug.balance.card` (the manifest, footer and card),
:mod:`~fesaug.balance.reject` (``--reject``: replace the faces a person rejected on the review page).
``from fesaug.balance import balance, BalanceConfig`` is the library form of ``fesaug balance``;
:class:`~fesaug.balance.sampler.FESampler` its imbalanced-learn form over arrays of faces
(:mod:`~fesaug.balance.sampler`, :mod:`~fesaug.balance.arrays`).
"""

from typing import TYPE_CHECKING

from fesaug.utils.lazy import lazy_exports

# Static twins of the lazy names, for type checkers and the API reference (griffe reads source,
# not the runtime); never executed.
if TYPE_CHECKING:
    from fesaug.balance.config import BalanceConfig, BalanceResult
    from fesaug.balance.run import balance
    from fesaug.balance.sampler import FESampler
    from fesaug.balance.targets import Targets, resolve_targets

__all__ = ["BalanceConfig", "BalanceResult", "FESampler", "Targets", "balance", "resolve_targets"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BalanceConfig": ".config",
        "BalanceResult": ".config",
        "FESampler": ".sampler",
        "balance": ".run",
        "Targets": ".targets",
        "resolve_targets": ".targets",
    },
)
