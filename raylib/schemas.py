"""Arrow schemas of every table we write (DESIGN.md, "Data contracts").

Writers build tables with these schemas; readers call `check` so that a file from another version or
another tool fails loudly with the column that differs, instead of deep inside a stage.
"""
from __future__ import annotations

import pyarrow as pa

BOX = ("x1", "y1", "x2", "y2")  # box columns, in pixels of the stored image

STATUS_OK = "ok"
STATUS_ERROR = "error"

POOL = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
)

_BOX_FIELDS = [pa.field(name, pa.float32(), nullable=False) for name in BOX]

DETECTIONS = pa.schema(
    [
        pa.field("round", pa.int16(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("class_id", pa.int16(), nullable=False),
        pa.field("cls_conf", pa.float32(), nullable=False),
        pa.field("loc_conf", pa.float32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        *_BOX_FIELDS,
        pa.field("class_probs", pa.list_(pa.float32())),
    ]
)

IMAGE_STATUS = pa.schema(
    [
        pa.field("round", pa.int16(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("n_detections", pa.int32(), nullable=False),
        # From the image's header: export writes sizes without reading the image again. Null when
        # the header could not be read.
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("uri", pa.string()),  # from the manifest: export reads image_status, not the manifest
    ]
)

# Diversity strategies' image embeddings (raylib.model.WithEmbedding): one row per scored ok image.
EMBEDDINGS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float16())),  # the pooled neck, unit length, [d] (448 for nano)
    ]
)

SELECTION = pa.schema(
    [
        pa.field("round", pa.int16(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("class_id", pa.int16(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
    ]
)

OBJECT = pa.struct(
    [
        pa.field("class_id", pa.int16(), nullable=False),
        *_BOX_FIELDS,
        pa.field("difficult", pa.bool_(), nullable=False),
    ]
)

LABELS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("round_added", pa.int16(), nullable=False),
        pa.field("objects", pa.list_(OBJECT), nullable=False),
    ]
)
# What label readers return (VOC, COCO, Label Studio, deliveries): a LABELS table before its split and round.
LABEL_FIELDS = pa.schema([LABELS.field("image_id"), LABELS.field("objects")])

# Per-class selection thresholds of one round (figure 6.5).
THRESHOLDS = pa.schema(
    [
        pa.field("round", pa.int16(), nullable=False),
        pa.field("class_id", pa.int16(), nullable=False),
        pa.field("threshold", pa.float32()),
        pa.field("n_candidates", pa.int64(), nullable=False),
    ]
)


class SchemaError(ValueError):
    """A table does not match the contract it is read or written under."""


def check(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Return `table` cast to `schema`, or raise naming `what` and the first column that differs.

    Extra columns are an error (they usually mean the wrong file); a missing nullable column is added
    as nulls, so optional columns such as `class_probs` may be left out by writers.
    """
    extra = [name for name in table.column_names if schema.get_field_index(name) < 0]
    if extra:
        raise SchemaError(f"{what}: unexpected column(s) {extra}; expected {schema.names}")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaError(f"{what}: missing required column '{field.name}' ({field.type})")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"{what}: column '{field.name}' has type {column.type}, expected {field.type}"
                ) from exc
        if not field.nullable and column.null_count:
            raise SchemaError(f"{what}: column '{field.name}' has {column.null_count} null value(s)")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
