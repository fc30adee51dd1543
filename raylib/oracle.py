"""The oracle stage: labels for a round's selection, from the dataset's ground truth (`loop.oracle=simulate`)
or from the annotators' delivery (`external`), and the rule that says when a delivery is complete.

    oracle          the stage's work, in one Ray task: the selection's labels added to the labelled set
    check_delivery  is a round's delivery complete: every selected image labelled, the annotators'
                    marker `delivery_marker`, or `loop.accept_partial_delivery`
    LabelsPending   raised while it is not: the loop stops, a rerun resumes at this stage

Reading the delivery's files is raylib/formats/deliveries.py; the labelled set's rules (splits) are
raylib/labels.py.
"""
from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from raylib import labelstudio_project, pool, runtime, schemas, storage
from raylib.config import LoopConfig
from raylib.dataset import Dataset, ground_truth
from raylib.formats import deliveries
from raylib.formats.deliveries import Delivery
from raylib.labels import assign_splits, selected_ids
from raylib.paths import RoundPaths, round_name

log = logging.getLogger(__name__)


class LabelsPending(Exception):
    """The external oracle found no usable label for any selected image: the round waits for them."""


def label_selection(rp: RoundPaths, ds: Dataset, loop: LoopConfig, seed: int, labels_uri: str | None,
                    s3: tuple[str | None, str | None] = (None, None)) -> dict:
    """Labels for the selected images added to `labels_uri` (None: the seed round, nothing labelled
    before), written to `rp.labels`.

    The labels come from the dataset's ground truth (`simulate`, the seed's experiment) or from the
    annotators' delivery in `loop.labels_in`, in `loop.labels_format` (`external`; raylib/formats/deliveries.py).
    Images whose labels are missing or invalid stay in the pool; the reasons go to `rp.oracle_errors`.

    With `external`, a round whose delivery is not complete (deliveries.check_delivery: every selected
    image labelled, the annotators' `_complete/round=NN` marker, or loop.accept_partial_delivery) raises
    `LabelsPending` before anything is committed: the loop stops there and says how many images are
    missing, and running the same command again resumes at this stage (a Ray job should not hold a
    cluster while people annotate).

    The work runs in one Ray task (`_label_selection`; here without Ray): a take-all round's selection, delivery
    and labelled set are millions of rows, and none of them reaches the driver. The task takes no CPU
    of its own: it waits on the parse tasks it fans out, as the driver did.

    With `labelstudio`, the round's tasks go to the live project first and its finished ones come back as
    a Label Studio delivery (raylib/labelstudio_project.py; here, on the driver: the token stays in this
    process); `loop.labelstudio.wait` polls until the round is complete. `s3`: the endpoint and region
    Label Studio's S3 storage reads the images with."""
    while True:
        if loop.oracle == "labelstudio":
            labelstudio_project.sync_round(loop.labelstudio, rp, ds.class_names, loop.labelstudio_document_root, *s3)
        answer = runtime.in_task(_label_selection, rp, ds, loop, seed, labels_uri)
        if "pending" not in answer or not (loop.oracle == "labelstudio" and loop.labelstudio.wait):
            break
        log.info(f"{round_name(rp.round_idx)}: {answer['n_labelled']} of {answer['n_selected']} labelled in Label "
                 f"Studio; looking again in {loop.labelstudio.poll_s:g} s")
        time.sleep(loop.labelstudio.poll_s)  # people annotate: polling the server, not waiting on our own work
    if "pending" in answer:
        raise LabelsPending(answer["pending"])
    if "message" in answer:
        log.info(answer.pop("message"))
    return answer


def _label_selection(rp: RoundPaths, ds: Dataset, loop: LoopConfig, seed: int, labels_uri: str | None) -> dict:
    """`label_selection`'s work; returns its counts, {"pending": message} while the delivery is incomplete."""
    selected = selected_ids(rp.selection)
    message = None
    if loop.oracle == "simulate":
        table, errors = ground_truth(ds, selected.to_pylist(), "pool")
        storage.write_text(rp.oracle_errors, json.dumps(dict(errors), indent=1))
    else:
        uris = pool.uris_of(pool.round_pool(rp, ds.pool_manifest), selected)
        if storage.exists(rp.image_status):  # scored: boxes are checked against the sizes scoring read
            uris = pool.with_sizes(uris, rp.image_status)
        labels_in, labels_format, where = (loop.labels_in, loop.labels_format, None)
        if loop.oracle == "labelstudio":  # the project's export of this round, written by sync_round
            labels_in, labels_format = labelstudio_project.export_dir(rp), "labelstudio"
            where = f"in Label Studio at {loop.labelstudio.url}"
        delivery = deliveries.import_delivery(labels_format, labels_in, uris, ds.class_names,
                                              loop.labelstudio_document_root)
        del uris
        errors = {**dict(delivery.errors), **{image_id: "not delivered yet" for image_id in delivery.missing}}
        storage.write_text(rp.oracle_errors, json.dumps(errors, indent=1))
        # Label Studio's marker: <labels_in>/_complete/round=NN if given, else under the run root
        status = check_delivery(delivery, loop.labels_in or rp.run_root, rp.round_idx, len(selected),
                                accept_partial=loop.accept_partial_delivery, where=where)
        if not status.complete:
            return {"n_labelled": status.n_labelled, "n_selected": len(selected),
                    "pending": f"{status.message} (pre-annotations to correct: '{rp.preannotations}'; reasons "
                               f"per image: '{rp.oracle_errors}'). Run the same command again when they are in."}
        message = status.message
        table = delivery.labels
    new = assign_splits(table, loop.split, seed, round_added=rp.round_idx + 1)
    if labels_uri:  # earlier labels keep their split: an image labelled before is not added again
        before = storage.read_table(labels_uri, columns=["image_id"]).column("image_id")
        new = new.filter(pc.invert(pc.is_in(new.column("image_id"), value_set=before.combine_chunks())))
    previous = (pa.Table.from_batches([batch]).cast(schemas.LABELS).to_batches()
                for batch in (storage.iter_parquet_batches(labels_uri) if labels_uri else ()))
    storage.write_batches(itertools.chain(itertools.chain.from_iterable(previous), new.to_batches()), rp.labels,
                          schemas.LABELS)
    counts = {"n_selected": len(selected), "n_labelled": new.num_rows, "n_missing": len(errors)}
    return {**counts, "message": message} if message else counts


# -------------------------------------------------------------------------------------- completeness


def delivery_marker(labels_in: str, round_idx: int) -> str:
    """The file annotators create when round `round_idx`'s delivery is final (any content);
    `_complete/seed` for the seed set (round_idx -1: labelled before round 0 trains)."""
    return storage.join(labels_in, "_complete", "seed" if round_idx < 0 else f"round={round_idx:02d}")


@dataclass
class DeliveryStatus:
    complete: bool  # commit the round now
    marked: bool  # the annotators' marker exists
    n_selected: int
    n_labelled: int
    n_invalid: int  # delivered but unusable (reasons in Delivery.errors)
    n_missing: int  # nothing delivered yet
    message: str


def check_delivery(delivery: Delivery, labels_in: str, round_idx: int, n_selected: int,
                   accept_partial: bool = False, where: str | None = None) -> DeliveryStatus:
    """Is round `round_idx`'s delivery complete? Yes when the annotators created `delivery_marker`,
    when every selected image is labelled, or when `accept_partial` says to take what is there; the
    images not labelled then stay in the pool. Otherwise the message says how many are missing."""
    marker = delivery_marker(labels_in, round_idx)
    where = where or f"under '{labels_in}'"  # where the rest is delivered
    marked = storage.exists(marker)
    n_labelled, n_missing = delivery.labels.num_rows, len(delivery.missing)
    n_invalid = n_selected - n_labelled - n_missing  # each selected image is in exactly one of the three
    everything = n_labelled == n_selected
    complete = marked or everything or accept_partial
    counts = (f"{n_labelled} of {n_selected} selected images labelled, {n_missing} missing, "
              f"{n_invalid} delivered but invalid")
    if everything:
        message = f"{round_name(round_idx)}: delivery complete: {counts}"
    elif marked:
        message = f"{round_name(round_idx)}: delivery marked complete ('{marker}'): {counts}; the rest stays in the pool"
    elif accept_partial:
        message = f"{round_name(round_idx)}: partial delivery accepted: {counts}; the rest stays in the pool"
    else:
        message = (f"{round_name(round_idx)}: waiting for labels: {counts}. Deliver the rest {where}, "
                   f"or create '{marker}' to commit what is there (the rest stays in the pool)")
    return DeliveryStatus(complete, marked, n_selected, n_labelled, n_invalid, n_missing, message)
