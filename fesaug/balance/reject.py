"""``fesaug balance ... --reject FILE``: replace the synthetic faces a person rejected.

``FILE`` lists one ``sample_id`` per line (the review page's ``rejects.txt``, :mod:`fesaug.review`;
blank lines and ``#`` comments are ignored). Given with the command that made a finished
balanced folder, each listed row is replaced by a new candidate through the same quality gates,
and the manifest is rewritten with the replacement where the rejected row was.

A replacement comes from another source: never the parent of a face rejected for that class (in
this round or an earlier one), and never an input the run has used. The original run's slot
``s`` of a class needing ``n`` images tried the ``s + a·n``-th use of the class's source list
(:func:`fesaug.balance.plan.candidate`), so it never went past use ``n·max_attempts``; the
replacements take the uses from there on (:func:`replacement_candidates`), and a later round
goes on where this one stopped. Replacement slots are numbered after the class's last slot, so
their sample ids, jitter and intensity draws are new too.

A round is a run of its own: its work goes to ``DIR/.fesaug-balance/`` under a plan that names the
rejected ids, so an interrupted round resumes when the same command is run again, and the
manifest is replaced last. Each new row names the row it replaces (``replaces`` column); the
footer counts the faces a person rejected per class (``balance.rejected_by_person``) and lists
every round (``balance.rejections``: the ids, what replaced them, attempts, provenance). Running
the same command once more finds the round in the footer and changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fesaug.audit.report import audit, plot_report
from fesaug.balance.card import dataset_card, summary_from
from fesaug.balance.config import BalanceResult
from fesaug.balance.output import OUTPUTS, WORK_DIR, part_path, row_weights, synthetic_frame, weighted_counts
from fesaug.balance.plan import Candidate, Plan
from fesaug.balance.records import PLAN, migrate_config_v0_to_v1
from fesaug.data.manifest import Manifest, read_manifest, working_set, write_manifest
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import atomic_write_text, remove_stale_temporaries
from fesaug.utils.provenance import provenance
from fesaug.utils.runlog import jsonable


@dataclass
class Round:
    """One ``--reject`` run: the rejected rows (manifest order), their classes and parents, and
    their replacement slots."""

    file: Path
    finished: Manifest  # the balanced manifest the round starts from
    ids: list[str]
    classes: list[str]
    parents: list[str]
    done: bool = False  # the footer already records this round: nothing to do
    number: int = 0
    slots: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # per id: (class, new slot)
    next_slot: dict[str, int] = dataclasses.field(default_factory=dict)  # per class, after every round so far
    next_candidate: dict[str, int] = dataclasses.field(default_factory=dict)


def read_rejects(path: str | os.PathLike) -> list[str]:
    """The sample ids ``path`` lists, once each, in its order (blank lines and ``#`` comments skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise FesaugError(
            f"--reject {path} cannot be read ({reason}); give the rejects.txt the review page saved"
        ) from None
    ids = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not ids:
        raise FesaugError(
            f"--reject {path} lists no sample ids (one per line); mark faces on the review page (fesaug review) "
            "and download its rejects.txt"
        )
    return list(dict.fromkeys(ids))


def check_rejects(out: Path, path: str | os.PathLike) -> Round:
    """The round that ``path`` asks for on the finished balanced folder ``out``, its ids checked
    against the manifest (before any model is loaded: a wrong file fails fast)."""
    ids = read_rejects(path)
    if not (out / "manifest.parquet").is_file():
        raise FesaugError(
            f"{out} holds no finished balanced dataset to replace rows of; run the balance command without --reject "
            "first (or again, to finish it)"
        )
    finished = read_manifest(out / "manifest.parquet")
    rounds = (finished.meta.get("balance") or {}).get("rejections", [])
    if rounds and sorted(rounds[-1]["ids"]) == sorted(ids):
        last = rounds[-1]
        return Round(Path(path), finished, last["ids"], last["classes"], last["parents"], True, last["round"])
    df = finished.df
    origin = dict(zip(df["sample_id"].tolist(), df["origin"].tolist()))
    unknown = [i for i in ids if i not in origin]
    if unknown:
        earlier = {i for r in rounds for i in r["ids"]} & set(unknown)
        raise FesaugError(
            f"--reject {path}: {len(unknown)} id(s) are not rows of {out / 'manifest.parquet'} ({_first(unknown)})"
            + (f", {len(earlier)} of them replaced by an earlier --reject" if earlier else "")
            + f"; take rejects.txt from the review page of this dataset (fesaug review {out})"
        )
    real = [i for i in ids if origin[i] != "synthetic"]
    order = {sid: i for i, sid in enumerate(df["sample_id"].tolist())}
    if real:
        raise FesaugError(
            f"--reject {path}: {len(real)} id(s) are real images ({_first(real)}); only synthetic rows can be "
            "rejected and replaced"
        )
    rows = df.set_index("sample_id").loc[ids].assign(at=lambda d: [order[i] for i in d.index]).sort_values("at")
    return Round(
        Path(path),
        finished,
        rows.index.tolist(),
        rows["label_name"].tolist(),
        rows["parent_id"].tolist(),
        number=len(rounds) + 1,
    )


def plan_round(plan: Plan, rnd: Round) -> Plan:
    """``plan`` narrowed to the round: its slots are the replacement slots, each with its own
    candidates, and its key names the rejected ids (so a resumed round must be the same)."""
    _check_same_run(plan, rnd.finished)
    m, cfg = plan.manifest, plan.config
    previous = rnd.finished.meta["balance"].get("rejections", [])
    position = {sid: i for i, sid in enumerate(m.df["sample_id"].tolist())}
    excluded: dict[str, set[int]] = {}  # per class, the parents of every face rejected for it
    for r in [*previous, {"classes": rnd.classes, "parents": rnd.parents}]:
        for c, parent in zip(r["classes"], r["parents"]):
            excluded.setdefault(c, set()).add(position[parent])
    last = previous[-1] if previous else {}
    rnd.next_slot, rnd.next_candidate = dict(last.get("next_slot", {})), dict(last.get("next_candidate", {}))
    replacements: dict[tuple[int, int], list[Candidate]] = {}
    first: dict[str, int] = {}
    for c in dict.fromkeys(rnd.classes):
        k, n = m.classes.index(c), rnd.classes.count(c)
        first[c] = rnd.next_slot.get(c, plan.to_synthesize[c])
        start = rnd.next_candidate.get(c, plan.to_synthesize[c] * cfg.max_attempts)
        cands, rnd.next_candidate[c] = replacement_candidates(
            plan.orders[k], excluded[c], start, n, cfg.max_attempts, cls=c
        )
        replacements |= {(k, first[c] + i): own for i, own in enumerate(cands)}
        rnd.next_slot[c] = first[c] + n
    taken = dict.fromkeys(first, 0)
    for c in rnd.classes:
        rnd.slots.append((m.classes.index(c), first[c] + taken[c]))
        taken[c] += 1
    key = plan.key | {"reject": {"round": rnd.number, "ids": rnd.ids}}
    return dataclasses.replace(plan, slots=list(rnd.slots), key=key, replacements=replacements)


def replacement_candidates(
    order: Sequence[int], excluded: set[int], start: int, n: int, attempts: int, *, cls: str = "?"
) -> tuple[list[list[Candidate]], int]:
    """The candidates of ``n`` replacement slots (``attempts`` each): the uses of the source list
    ``order`` from use ``start`` on, skipping the sources in ``excluded``; slot ``i``'s attempt
    ``a`` is the ``i + a·n``-th of them. Also returns the use after the last one taken."""
    if all(r in excluded for r in order):
        raise FesaugError(
            f"no source is left for {cls!r}: every source image of it made a face a person rejected; "
            "reject fewer faces of that class or lower its target"
        )
    length, uses, j = len(order), [], start
    while len(uses) < n * attempts:
        if order[j % length] not in excluded:
            uses.append(Candidate(source=order[j % length], variant=j // length))
        j += 1
    return [[uses[i + a * n] for a in range(attempts)] for i in range(n)], j


def _check_same_run(plan: Plan, finished: Manifest) -> None:
    run = finished.meta.get("balance") or {}
    recorded = migrate_config_v0_to_v1((finished.meta.get("provenance") or {}).get("config") or {})
    same = (
        jsonable(recorded) == jsonable(plan.config.to_dict())
        and run.get("input_manifest_sha256") == plan.key["manifest_sha256"]
        and run.get("checkpoint_sha256") == plan.key["checkpoint_sha256"]
    )
    if not same:
        raise FesaugError(
            f"{finished.path} was balanced with other settings, another manifest or another checkpoint; give --reject "
            f"to the command that made it (its card, {finished.path.parent / 'README.md'}, shows it)"
        )


def prepare_round_dir(out: Path, key: dict[str, Any], overwrite: bool) -> None:
    """Make ``out``'s work folder ready for the round: resume the same round, or start it."""
    from fesaug.balance.run import same_plan

    work = out / WORK_DIR
    for name in OUTPUTS:
        remove_stale_temporaries(out, name)
    for folder in (*(out / "images").glob("*"), work, work / "parts"):
        remove_stale_temporaries(folder)
    if same_plan(work / "plan.json", key):
        return  # resume
    if (work / "plan.json").exists():
        other = json.loads((work / "plan.json").read_text())
        if "reject" in other and not overwrite:
            raise FesaugError(
                f"{out} holds an unfinished --reject run of other ids; run that command again to finish it, or pass "
                "--overwrite to discard it"
            )
        _discard(out)  # another round's, or what the run that made the manifest left behind
    (work / "parts").mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "plan.json", json.dumps(PLAN.stamp(jsonable(key)), indent=2, sort_keys=True))


def _discard(out: Path) -> None:
    """Remove the work folder, and the images of unfinished work that no manifest row names."""
    named = set(read_manifest(out / "manifest.parquet").df["sample_id"])
    for part in (out / WORK_DIR / "parts").glob("*.json"):
        for row in json.loads(part.read_text())["rows"]:
            if row["sample_id"] not in named:
                (out / row["path"]).unlink(missing_ok=True)
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)


def finish_round(plan: Plan, out: Path, n_chunks: int, start: float, *, resumed: int, rnd: Round) -> BalanceResult:
    """Write the manifest with the replacements in place of the rejected rows (card and histogram
    first, the manifest last), then remove the rejected images and the work folder."""
    m, cfg, old = plan.manifest, plan.config, rnd.finished
    parts = [json.loads(part_path(out, i).read_text()) for i in range(n_chunks)]
    made = {(r["label"], r["slot"]): r for p in parts for r in p["rows"]}
    replaced_by = {sid: made.get(slot, {}).get("sample_id") for sid, slot in zip(rnd.ids, rnd.slots)}
    position = {sid: i for i, sid in enumerate(old.df["sample_id"].tolist())}
    new = [made[slot] | {"replaces": sid} for sid, slot in zip(rnd.ids, rnd.slots) if slot in made]
    root = out.resolve() if cfg.embed_images else old.image_root.resolve()
    syn = synthetic_frame(plan, new, out, root)
    kept = old.df[~old.df["sample_id"].isin(rnd.ids)].assign(_at=lambda d: [position[s] for s in d["sample_id"]])
    pieces = [kept, syn.assign(_at=[position[s] for s in syn["replaces"]])] if len(syn) else [kept]
    df = pd.concat(pieces, ignore_index=True).sort_values("_at", kind="stable").drop(columns="_at")
    df = df.reset_index(drop=True)
    result = _round_result(plan, rnd, out, df, parts, replaced_by, resumed)
    if cfg.weighted:
        balanced = working_set(df, cfg.splits, plan.holdout_folds)
        df["weight"] = row_weights(df, plan.targets, cfg.synthetic_weight, balanced=balanced, classes=m.classes)
        result.weighted = weighted_counts(df, m.classes, balanced)
    meta = _round_footer(old.meta, result)
    staged = out / WORK_DIR / "manifest.parquet"
    image_root = old.meta.get("image_root", ".")
    write_manifest(df, staged, classes=m.classes, meta=meta, overwrite=True, image_root=image_root)
    report = audit(read_manifest(staged), target=max(plan.targets.values()), check_images=False)
    result.problems = [p.message for p in report.problems]
    plot_report(report, out / "histogram.png")
    atomic_write_text(out / "README.md", dataset_card(result, plan, meta, report.held_out))
    os.replace(staged, out / "manifest.parquet")
    clean_round(out, rnd)
    result.seconds = time.perf_counter() - start
    return result


def _round_result(
    plan: Plan,
    rnd: Round,
    out: Path,
    df: pd.DataFrame,
    parts: list[dict[str, Any]],
    replaced_by: dict[str, str | None],
    resumed: int,
) -> BalanceResult:
    """The run's numbers after the round: the footer's, with this round's attempts and gate
    passes added and the synthetic rows counted again."""
    before = summary_from(out)
    classes, labels = plan.manifest.classes, df["label"].to_numpy(dtype=np.int64)
    synthetic = (df["origin"] == "synthetic").to_numpy(dtype=bool)
    generated = {c: int((synthetic & (labels == k)).sum()) for k, c in enumerate(classes)}
    attempts, passed = dict(before.attempts), {g: dict(v) for g, v in before.gate_passed.items()}
    round_attempts = dict.fromkeys(classes, 0)
    for p in parts:
        for c, n in p["attempts"].items():
            attempts[c] += n
            round_attempts[c] += n
        for gate, counts in p["passed"].items():
            for c, n in counts.items():
                passed.setdefault(gate, dict.fromkeys(classes, 0))[c] += n
    rejected, not_replaced = dict.fromkeys(classes, 0), dict.fromkeys(classes, 0)
    for c, sid in zip(rnd.classes, rnd.ids):
        rejected[c] += 1
        not_replaced[c] += replaced_by[sid] is None
    person = {c: before.rejected_by_person.get(c, 0) + rejected[c] for c in classes}
    record = {
        "round": rnd.number,
        "file": str(rnd.file),
        "ids": rnd.ids,
        "classes": rnd.classes,
        "parents": rnd.parents,
        "replaced_by": replaced_by,
        "rejected": rejected,
        "not_replaced": not_replaced,
        "attempts": round_attempts,
        "next_slot": rnd.next_slot,
        "next_candidate": rnd.next_candidate,
        "provenance": provenance("balance --reject", {"reject": str(rnd.file), "round": rnd.number}),
    }
    return dataclasses.replace(
        before,
        generated=generated,
        shortfall={c: plan.to_synthesize[c] - generated[c] for c in classes},
        attempts=attempts,
        gate_passed=passed,
        resumed_chunks=resumed,
        rejected_by_person=person,
        rejection=record,
    )


def _round_footer(meta: dict[str, Any], r: BalanceResult) -> dict[str, Any]:
    run = dict(meta["balance"])
    run |= {
        "generated": r.generated,
        "shortfall": r.shortfall,
        "attempts": r.attempts,
        "acceptance": r.acceptance,
        "gate_passed": r.gate_passed,
        "gate_pass_rates": r.gate_pass_rates,
        "rejected_by_person": r.rejected_by_person,
        "rejections": [*run.get("rejections", []), r.rejection],
    }
    if r.weighted is not None:
        run["weighted"] = r.weighted
    return {**meta, "balance": run}


def clean_round(out: Path, rnd: Round) -> None:
    """Remove the rejected rows' images and the round's work folder (also what a round stopped
    after its manifest left)."""
    for sid, c in zip(rnd.ids, rnd.classes):
        (out / "images" / c / f"{sid}.png").unlink(missing_ok=True)
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)


def done_result(out: Path, rnd: Round) -> BalanceResult:
    """The result of a round the footer already records (the same command run again)."""
    clean_round(out, rnd)
    result = summary_from(out)
    rounds = read_manifest(out / "manifest.parquet").meta["balance"]["rejections"]
    result.rejection = rounds[-1] | {"already_done": True}
    return result


def _first(ids: Sequence[str], n: int = 3) -> str:
    return ", ".join(ids[:n]) + (", …" if len(ids) > n else "")
