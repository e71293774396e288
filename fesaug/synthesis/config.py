"""What ``fesaug train`` does: :class:`TrainConfig`, its loss weights, presets and YAML files.

A configuration is resolved in layers: a preset (``cpu`` or ``paper``), then a YAML file, then
command-line flags; each layer replaces only the keys it names (``model`` and ``loss`` are merged
key by key). Every key and type is checked, and an error names the key and where it came from.

YAML layout (every key optional)::

    preset: cpu              # cpu | paper | rgb96 | rgb112: model size and training defaults
    epochs: 30
    batch_size: 32
    holdout_fold: 0
    model:                   # FERSNetConfig fields, e.g. sharing, widths, image_size
      sharing: cross-stitch
    loss:                    # LossWeights fields
      cycle: 1.0
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fesaug.synthesis.records import RUN_CONFIG
from fesaug.utils.errors import FesaugError
from fesaug.utils.records import SCHEMA_KEY

if TYPE_CHECKING:
    from fesaug.models import FERSNetConfig

# fesaug.models imports torch (seconds); this module is imported by `fesaug --help`, so the
# model is imported only where a config is validated or built.

DEVICES = ("auto", "cpu", "cuda")
# Model fields the data decides: the manifest's class list and its channels (gray or colour).
DATA_MODEL_FIELDS = ("num_classes", "in_channels")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of FERSNet's training loss; every term is defined here.

    Images are compared in the model's [-1, 1] range. ``x`` is a real source image with label
    ``y``, ``t`` a target label, ``G(x, t)`` the synthesized image and ``D(image, label)`` the
    conditional PatchGAN. The generator/classifier minimise the weighted sum of every term
    below; the discriminator minimises its own LSGAN loss (see ``adversarial``), unweighted.

    The defaults are the deformation recipe of issue #17, measured against exact ground truth
    on the demo set (``bench/results/synthesis_recipes_demo.md``): the same-subject pair
    (registered and relit, ``TrainConfig.align_pairs``) is the main teacher (``paired`` 10), the
    classifier's expression loss is small (0.1: more buys caricatures, not fidelity), the cycle
    loss at 1 (at 10, "change nothing" is cheapest), and sparsity terms keep what the expression
    does not touch exactly as it was. ``bench/recipes/attention.yaml`` restores the weights of
    the painting decoder used before.

    Identity preservation: no pretrained face-recognition network can be downloaded here, so
    the authors' LightCNN feature loss is not reproduced. Identity is kept by warping the
    subject's own pixels (``output="warp"``), the cycle loss and the paired losses;
    ``paired_perceptual`` adds a perceptual distance that ships inside a package. A
    subject-classification head was not added: held-out subjects are by definition unknown to
    it, so it would not constrain the faces the generator is later used on.
    """

    fer: float = 1.0
    """Cross-entropy of the FER branch on real images (``CE(FER(x), y)``); the recognition task."""

    adversarial: float = 0.3
    """LSGAN, as in the authors' code. Generator: ``MSE(D(G(x,t), t), 1)``. Discriminator:
    ``½[MSE(D(real, l), 1) + MSE(D(G(x,t), t), 0)]`` where ``(real, l)`` is the paired target
    image with label ``t`` when the row has one, else the source ``x`` with its own label ``y``:
    a real image must always be shown with its true label, so D learns what each expression
    looks like rather than which images are real. 0.3 is the authors' weight."""

    cycle: float = 1.0
    """Cycle reconstruction ``L1(G(G(x,t), y), x)``: translating back to the source expression
    must give the input back; keeps identity and pose on unpaired samples. The authors used MSE
    with weight 0.5; L1 keeps edges sharper. Much more than the paired loss makes the identity
    mapping the cheapest answer (at 10 the demo generator stopped editing)."""

    paired: float = 10.0
    """``L1(G(x,t), x_t)`` against the real image ``x_t`` of the same subject showing ``t``,
    averaged over the rows that have one (the authors' supervised pairs, with weight 1). With
    ``TrainConfig.align_pairs`` the image is registered and relit onto ``x`` first, which makes
    it the closest thing to the true counterfactual that real data offers, hence the weight 10.
    With ``TrainConfig.paired_intensities`` the closest of several edit intensities counts."""

    paired_perceptual: float = 0.0
    """Shift-tolerant LPIPS (AlexNet, :mod:`fesaug.judges.perceptual`; needs ``fesaug[judges]``)
    between ``G(x,t)`` and the same-subject target, over the rows that have one: unlike pixel
    L1 it forgives the small misalignments left between two photos and compares structure, so a
    brow in the wrong place costs more than a brow a pixel off. 0 turns it off."""

    expression: float = 0.1
    """``CE(FER(G(x,t)), t)``: the synthesized face must be recognised as the target
    expression. The classifier judging it runs with frozen weights in eval mode (as it is used
    later, e.g. for the balance step's quality gate), so only the generator learns from this
    term; a classifier trained on its own fakes would learn their artefacts. This is the only
    term that tells the generator what an expression looks like on unpaired samples besides D.
    Not in the authors' code (StarGAN's domain-classification loss plays this role). With
    ``TrainConfig.expression_classifier`` the judge is that independent classifier instead,
    and each synthesized face is randomly flipped, shifted, rotated and scaled before it is
    judged, so pixel patterns that fool one exact view do not lower the loss."""

    mask_smoothness: float = 0.5
    """Total variation of the attention mask (mean absolute difference of neighbouring mask
    values, both translations): a mask that changes smoothly paints regions (a mouth, a brow)
    rather than speckles, which the classifiers read as texture. GANimation's TV term; 0 turns
    it off. No effect with ``output="direct"``."""

    flow_smoothness: float = 0.01
    """Total variation of the flow field (``output="warp"``), in pixels: the mean absolute
    difference between neighbouring displacements. A smooth flow moves a brow or a lip corner
    as a piece instead of scrambling pixels. No effect with the other outputs."""

    edit_sparsity: float = 1.0
    """``L1(G(x,t), x)``: every pixel the translation changes costs, so the generator changes what
    the expression changes and copies the rest, sensor noise included. Without it, the paired
    loss pulls unchanged regions toward the partner photo's own noise and small misalignments,
    whose best L1 answer is a smoothed copy: close to the partner, yet further from the face
    as it should look. 0 turns it off."""

    flow_target: float = 0.0
    """On paired rows, the mean L1 distance (in pixels) between the predicted flow and the
    displacement that moves the source onto its registered same-subject partner (Farneback's
    optical flow, :func:`fesaug.data.pairs.pair_flow`), weighted per pixel by how well that
    displacement explains the partner there. A pixel loss toward the partner averages a moving
    feature away (a half-raised brow is a smaller L1 error than a brow raised in the wrong place);
    this target says how far each feature moves. Needs ``output="warp"`` and ``align_pairs``; 0
    turns it off (the flows are then not computed)."""

    flow_magnitude: float = 0.05
    """Mean length of the flow vectors (``output="warp"``), in pixels: displacement costs, so the
    flow moves what the expression moves and leaves the rest of the face (its contour, the hair)
    in place. No effect with the other outputs."""

    attention: float = 0.1
    """Mean of the attention mask ``m`` (``output="attention"``) over both translations: the
    decoder pays for every pixel it paints, so it changes the expression and leaves the rest
    of the face to the input (GANimation's mask loss, weight 0.1). Without it the mask can
    saturate at 1 and the output is painted from scratch. No effect with ``output="direct"``."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The defaults are the ``cpu`` preset.

    ``lr_milestones`` are fractions of ``epochs`` at which the learning rate is multiplied by
    ``lr_gamma`` (MultiStepLR), so changing ``epochs`` keeps the schedule's shape: the authors'
    [150, 400] of 500 epochs is (0.3, 0.8).
    """

    preset: str = "cpu"
    model: dict[str, Any] = field(default_factory=dict)  # FERSNetConfig overrides
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 5e-4
    d_steps: int = 1  # discriminator updates per generator update
    lr_milestones: tuple[float, ...] = (0.7,)
    lr_gamma: float = 0.1
    holdout_fold: int | None = None  # rows of this fold (all their subjects) are never trained on
    val_fraction: float = 0.15  # share of training subjects kept for validation / model selection
    paired_prob: float = 0.7  # chance of a same-subject target when the subject has one
    # Chance that a sample asks for the source's own expression, with the source as the paired
    # target: a face asked for the expression it shows should come back unchanged, not exaggerated
    # (0: every target is another expression, as before).
    own_expression_prob: float = 0.0
    align_pairs: bool = True  # register each same-subject target onto its source first (fesaug.data.pairs)
    # With align_pairs: keep the source's pixels in the target wherever the registered partner
    # differs from it by less than this many gray levels (0: the whole partner is the target).
    pair_threshold: float = 10.0
    # The paired loss compares the same-subject target with the synthesized face at each of these
    # intensities and keeps the closest, so a partner showing the expression weakly does not pull
    # the full edit toward a timid average (empty: the full edit only).
    paired_intensities: tuple[float, ...] = ()
    shift: float = 0.0625  # max random translation, as a fraction of the image side (0 = none)
    hflip: bool = True
    # The recognition recipe (issue #19). Off by default, so a recorded config without these keys
    # means what it meant. rotation: max degrees either way, and scale: max zoom in or out (0.1:
    # 0.9x-1.1x), both applied to source and target alike; label_smoothing: on the FER branch's
    # cross-entropy; ema: decay of an exponential moving average of FERSNet's weights, updated
    # every step, which is what is validated, sampled and saved as the model, its BatchNorm
    # statistics recomputed over the training faces each epoch (0: the trained weights themselves).
    rotation: float = 0.0
    scale: float = 0.0
    label_smoothing: float = 0.0
    ema: float = 0.0
    num_workers: int = 0
    seed: int = 0
    deterministic: bool = True
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16); ignored on CPU
    sample_rows: int = 4  # validation faces in each epoch's sample grid
    loss: LossWeights = field(default_factory=LossWeights)
    # A classifier written by fesaug.evaluate.downstream.save_classifier (e.g. trained with `fesaug
    # evaluate --judge` on the same training subjects). When set, the expression loss judges
    # the synthesized faces with it, frozen, instead of FERSNet's own FER branch: a recogniser
    # trained jointly with the generator learns to accept the generator's artefacts.
    expression_classifier: str | None = None

    def __post_init__(self) -> None:
        self._validate()

    # ----------------------------------------------------------------------- construction

    @classmethod
    def preset_config(cls, name: str, **overrides: Any) -> TrainConfig:
        """A preset, optionally with some fields replaced (``model``/``loss`` merged)."""
        if name not in PRESETS:
            raise FesaugError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls().updated({**PRESETS[name], **overrides}, where=f"preset {name!r}")

    def updated(self, data: Mapping[str, Any], *, where: str) -> TrainConfig:
        """A copy with the keys of ``data`` replaced, after checking each key and type.

        ``where`` names the source (a file, "command line") in error messages.
        """
        if not isinstance(data, Mapping):
            raise FesaugError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
        hints = typing.get_type_hints(TrainConfig)
        changes: dict[str, Any] = {}
        for key, value in data.items():
            if key not in hints:
                raise FesaugError(f"{where}: unknown config key {key!r}; known keys: {', '.join(hints)}")
            if key == "loss":
                changes[key] = _update_dataclass(self.loss, value, where=where, prefix="loss.")
            elif key == "model":
                changes[key] = {**self.model, **_check_model_overrides(value, where=where)}
            else:
                changes[key] = _coerce(value, hints[key], key=key, where=where)
        try:
            return replace(self, **changes)
        except FesaugError as exc:
            raise FesaugError(f"{where}: {exc}") from None

    def model_config(self, num_classes: int, in_channels: int = 1) -> FERSNetConfig:
        """The FERSNet this config trains on ``num_classes`` classes of images with ``in_channels``
        channels (the manifest's: 1 gray, 3 colour)."""
        from fesaug.models import FERSNetConfig

        return FERSNetConfig.preset(self.preset, **self.model, num_classes=num_classes, in_channels=in_channels)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples): for YAML, JSON and ``weights_only`` checkpoints."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> TrainConfig:
        """The inverse of :meth:`to_dict`, for a config fesaug recorded (a checkpoint's, a run's
        ``config.yaml``), once its record is read at today's schema version
        (:mod:`fesaug.synthesis.records`); its ``schema_version`` is the record's, not a setting."""
        return cls().updated({k: v for k, v in data.items() if k != SCHEMA_KEY}, where=where)

    # ----------------------------------------------------------------------- validation

    def _validate(self) -> None:
        from fesaug.models import ModelConfigError

        if self.preset not in PRESETS:
            raise FesaugError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        checks = [
            *RANGES,
            *((f"loss.{f.name}", _non_negative, "non-negative") for f in dataclasses.fields(LossWeights)),
        ]
        for key, ok, expected in checks:
            value = getattr(self.loss, key[5:]) if key.startswith("loss.") else getattr(self, key)
            if not ok(value):
                raise FesaugError(f"{key} must be {expected}, got {_show(value)}")
        try:
            model = self.model_config(num_classes=2)
        except ModelConfigError as exc:
            raise FesaugError(f"model: {exc}") from None
        if self.loss.flow_target > 0 and not (self.align_pairs and model.output == "warp"):
            raise FesaugError(
                "loss.flow_target needs registered pairs and a flow to compare (align_pairs: true and the warp "
                f"decoder, model output 'warp'); this config has align_pairs {self.align_pairs}, output "
                f"{model.output!r}"
            )


def _non_negative(value: float) -> bool:
    return value >= 0


# Each setting's valid values: (key, the test, what the error says it must be).
RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("epochs", lambda v: v >= 1, "at least 1"),
    ("batch_size", lambda v: v >= 1, "at least 1"),
    ("lr", lambda v: v > 0, "positive"),
    ("betas", lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    ("weight_decay", _non_negative, "non-negative"),
    ("d_steps", lambda v: v >= 1, "at least 1"),
    (
        "lr_milestones",
        lambda v: all(0 < m <= 1 for m in v) and list(v) == sorted(set(v)),
        "increasing fractions in (0, 1]",
    ),
    ("lr_gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("holdout_fold", lambda v: v is None or v >= 0, "a fold number (0 or more)"),
    ("val_fraction", lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
    ("paired_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("own_expression_prob", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("paired_intensities", lambda v: all(0 < x <= 1 for x in v), "numbers in (0, 1]"),
    ("pair_threshold", lambda v: 0 <= v < 255, "gray levels in [0, 255)"),
    ("shift", lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    ("rotation", lambda v: 0 <= v <= 45, "degrees in [0, 45]"),
    ("scale", lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    ("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("ema", lambda v: 0 <= v < 1, "a decay in [0, 1) (0: off)"),
    ("num_workers", lambda v: v >= 0, "0 or more"),
    ("seed", lambda v: v >= 0, "0 or more"),
    ("device", lambda v: v in DEVICES, f"one of {', '.join(DEVICES)}"),
    ("sample_rows", lambda v: v >= 1, "at least 1"),
)


PRESETS: dict[str, dict[str, Any]] = {
    # 64x64 and small widths. Measured on the demo dataset (CK+48-sized) holding out one of 5
    # folds, 669 training images, with the default (warp) recipe: about 33 images/s, 20 s per
    # epoch, on two CPU threads (`make demo`); 25-45 s per epoch on one thread of a 2-core
    # machine running a second job, so 40 epochs take 17-30 minutes there.
    "cpu": {},
    # The authors' 2021 recipe: Adam 1e-4, betas (0.5, 0.999), weight decay 5e-4, batch 8,
    # 3 D steps per G step, 500 epochs with MultiStepLR at 150 and 400; 96x96, paper widths.
    "paper": {
        "preset": "paper",
        "epochs": 500,
        "batch_size": 8,
        "lr": 1e-4,
        "d_steps": 3,
        "lr_milestones": [0.3, 0.8],
        "num_workers": 4,
        "deterministic": False,
    },
    # The cpu recipe for colour faces at the usual colour sizes (the model presets of the same
    # names): RAF-DB's aligned faces at 96 px, AffectNet-style crops at 112 px. Throughput in
    # bench/results/colour_demo.md.
    "rgb96": {"preset": "rgb96"},
    "rgb112": {"preset": "rgb112"},
}


def load_config(path: str | Path, base: TrainConfig | None = None, *, recorded: bool = False) -> TrainConfig:
    """``base`` (default: the preset the file names, else ``cpu``) updated with a YAML file.
    ``recorded``: the file is a run's own ``config.yaml`` (:data:`fesaug.synthesis.records.RUN_CONFIG`),
    read at today's schema version; so is any file that carries a ``schema_version`` (a run's
    config passed as ``--config``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FesaugError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise FesaugError(f"{path} is not valid YAML: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise FesaugError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    if recorded or SCHEMA_KEY in data:
        data = {k: v for k, v in RUN_CONFIG.read(data, where=str(path)).items() if k != SCHEMA_KEY}
    if base is None:
        preset = data.get("preset", "cpu")
        base = TrainConfig.preset_config(preset) if isinstance(preset, str) and preset in PRESETS else TrainConfig()
    return base.updated(data, where=str(path))


def resolve_config(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """preset (or ``base``) → YAML file → ``overrides`` (e.g. command-line flags)."""
    config = TrainConfig.preset_config(preset) if preset is not None else base
    if config_file is not None:
        config = load_config(config_file, config)
    config = config if config is not None else TrainConfig.preset_config("cpu")
    return config.updated(dict(overrides or {}), where="command line") if overrides else config


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write a run's ``config.yaml``: the resolved config with its schema version."""
    from fesaug.utils.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(RUN_CONFIG.stamp(config.to_dict()), sort_keys=False))


# --------------------------------------------------------------------------------------------
# type checking of untyped (YAML / checkpoint) values


def _check_model_overrides(value: Any, *, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise FesaugError(f"{where}: model must be a mapping of FERSNet settings, got {_show(value)}")
    from fesaug.models import FERSNetConfig

    hints = typing.get_type_hints(FERSNetConfig)
    out = {}
    for key, item in value.items():
        if key in DATA_MODEL_FIELDS:
            raise FesaugError(
                f"{where}: model.{key} is set from the manifest (its classes and its images' channels); remove it"
            )
        if key not in hints:
            known = ", ".join(k for k in hints if k not in DATA_MODEL_FIELDS)
            raise FesaugError(f"{where}: unknown model key {key!r}; known keys: {known}")
        out[key] = _coerce(item, hints[key], key=f"model.{key}", where=where)
    return out


def _update_dataclass(obj: Any, value: Any, *, where: str, prefix: str) -> Any:
    if not isinstance(value, Mapping):
        raise FesaugError(f"{where}: {prefix[:-1]} must be a mapping, got {_show(value)}")
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for key, item in value.items():
        if key not in hints:
            raise FesaugError(f"{where}: unknown key {prefix}{key}; known keys: {', '.join(prefix + k for k in hints)}")
        changes[key] = _coerce(item, hints[key], key=prefix + key, where=where)
    return replace(obj, **changes)


def _coerce(value: Any, hint: Any, *, key: str, where: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, X | None, tuple[X, ...], tuple[X, Y])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail(expected: str) -> FesaugError:
        return FesaugError(f"{where}: {key} must be {expected}, got {_show(value)}")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key=key, where=where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise fail(f"a list of {len(items)} values")
        return tuple(_coerce(v, t, key=key, where=where) for v, t in zip(value, items))
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"config type {hint!r} of {key} is not supported")  # a bug in the dataclass


def _show(value: Any) -> str:
    return (
        f"{value!r} ({type(value).__name__})"
        if not isinstance(value, (int, float)) or isinstance(value, bool)
        else repr(value)
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
