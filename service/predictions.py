"""Batch predictions: how a job's result is cut into chunks, stored, and answered.

A job's result is stored as it is made, one `PredictionChunk` per `chunk_rows` rows: an
uncompressed .npz of `outputs` (float64), and for classifiers `labels` (int64 indices into
the job's classes) and `probabilities` (float64). The worker holds one chunk at a time
(its input rows, read from the data set's stored bytes by range: dataio.InputRows), and the
API answers the result (JSON, .npz or CSV) from the chunks read one at a time, so neither
holds more than a few chunks whatever the number of rows.

A chunk's size is fixed when the job is made (`chunk_rows`): PREDICTION_CHUNK_ROWS at most,
fewer when one chunk's computation (PREDICT_MAX_MEMORY_BYTES) would not fit, so that the
rows of chunk i are the same whichever worker makes it.

In the API, formatting a chunk as JSON or CSV text (pure Python, seconds for a million rows
of CSV) runs off gevent's event loop (service/offload.py); reading the chunks stays on it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

import nn
from service import offload

Chunk = dict[str, np.ndarray]
# A function giving a fresh iterator over a result's chunks, in order, read one at a time.
Chunks = Callable[[], Iterator[Chunk]]

MEMBERS = ("outputs", "labels", "probabilities")
NPZ_TYPE = "application/x-npz"
CSV_TYPE = "text/csv"
# What one stored number costs: 8 bytes of float64 or int64 (the .npz headers aside).
VALUE_BYTES = 8
# What one row takes while a chunk is made, beside the model's own computation
# (nn.Model.sample_bytes): its float64 inputs as read and as decoded, its result as computed,
# as float64 and in the chunk's npz bytes.
COPIES_OF_INPUTS, COPIES_OF_RESULT = 2, 3


def chunk_rows(model: nn.Model, config: Mapping[str, Any]) -> int:
    """Rows per chunk: PREDICTION_CHUNK_ROWS, or fewer so that making a chunk stays within
    PREDICT_MAX_MEMORY_BYTES; at least one."""
    inputs = math.prod(model.meta["input_shape"])
    per_row = (model.sample_bytes + COPIES_OF_INPUTS * inputs * VALUE_BYTES
               + COPIES_OF_RESULT * model.result_values * VALUE_BYTES)
    fits = int(config["PREDICT_MAX_MEMORY_BYTES"]) // per_row
    return max(1, min(int(config["PREDICTION_CHUNK_ROWS"]), fits))


def result_bytes(model: nn.Model, rows: int) -> int:
    """About what a job's chunks of `rows` rows will store (checked against the quota)."""
    return rows * model.result_values * VALUE_BYTES


def encode_chunk(arrays: Chunk) -> bytes:
    """nn.Model.predict_arrays' answer for a chunk as stored: outputs float64."""
    stored = {"outputs": np.asarray(arrays["outputs"], dtype=np.float64)}
    if "labels" in arrays:
        stored["labels"] = np.asarray(arrays["labels"], dtype=np.int64)
        stored["probabilities"] = np.asarray(arrays["probabilities"], dtype=np.float64)
    buf = io.BytesIO()
    np.savez(buf, **stored)
    return buf.getvalue()


def decode_chunk(data: bytes) -> Chunk:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _label_values(classes: list[Any]) -> np.ndarray:
    """The classes as an array, so that `values[labels]` are the labels in their type."""
    return np.asarray(classes)


# ---- the answers ---------------------------------------------------------------------------

def json_stream(chunks: Chunks, classes: list[Any] | None) -> Iterator[bytes]:
    """`{"outputs": [...], "labels": [...], "probabilities": [...]}` (the last two for
    classifiers), written a chunk at a time: one pass over the chunks per array."""
    names = MEMBERS if classes is not None else MEMBERS[:1]
    table = None
    if classes is not None:
        table = np.empty(len(classes), dtype=object)
        table[:] = classes
    for i, name in enumerate(names):
        yield ('{' if i == 0 else ',').encode() + json.dumps(name).encode() + b":["
        first = True
        for chunk in chunks():
            values = table[chunk[name]] if name == "labels" else chunk[name]
            text = offload.run(_json_items, values, size=values.size * VALUE_BYTES)
            if text:
                yield (b"" if first else b",") + text.encode()
                first = False
        yield b"]"
    yield b"}"


def _json_items(values: np.ndarray) -> str:
    """The items of a JSON array of `values`' rows, without its brackets."""
    return json.dumps(values.tolist(), allow_nan=False)[1:-1]


def csv_header(sample: Chunk, classes: list[Any] | None) -> list[str]:
    """The CSV's columns: output_<j> for each output value of a row (flattened, C order);
    for classifiers label (or label_<t> per time step) and probability_<class> (or
    probability_<t>_<class>)."""
    columns = [f"output_{j}" for j in range(math.prod(sample["outputs"].shape[1:]))]
    if classes is None:
        return columns
    steps = sample["labels"].shape[1:]
    width = sample["probabilities"].shape[-1]
    names = [str(c) for c in classes] + [str(k) for k in range(len(classes), width)]
    if not steps:
        return columns + ["label"] + [f"probability_{c}" for c in names]
    ts = range(steps[0])
    return (columns + [f"label_{t}" for t in ts]
            + [f"probability_{t}_{c}" for t in ts for c in names])


# Rows of a chunk written as text at a time: as Python objects and text a row takes about
# twenty times its stored bytes, so a whole chunk at once would be the stream's peak.
CSV_ROWS = 1000


def _csv_cell(value: Any) -> str:
    """A label as a CSV cell (quoted when it must be, as the csv module does)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([value])
    return buf.getvalue()


def csv_stream(chunks: Chunks, classes: list[Any] | None) -> Iterator[bytes]:
    """A header line, then one line per row, CSV_ROWS at a time. Numbers as Python writes
    them (repr: the shortest text that reads back to the same float64)."""
    labels = [_csv_cell(c) for c in classes] if classes is not None else None
    header = True
    for chunk in chunks():
        if header:
            yield (",".join(map(_csv_cell, csv_header(chunk, classes))) + "\n").encode()
            header = False
        n = len(chunk["outputs"])
        numbers = [chunk["outputs"].reshape(n, -1)]
        if labels is not None:
            numbers.append(chunk["probabilities"].reshape(n, -1))
            steps = chunk["labels"].reshape(n, -1)
        for start in range(0, n, CSV_ROWS):
            rows = [a[start:start + CSV_ROWS] for a in numbers]
            if labels is not None:
                rows.insert(1, steps[start:start + CSV_ROWS])
            yield offload.run(_csv_lines, rows, labels,
                              size=sum(a.size for a in rows) * VALUE_BYTES)


def _csv_lines(rows: list[np.ndarray], labels: list[str] | None) -> bytes:
    """CSV lines of rows: outputs (n, M), then for classifiers label indices (n, T) and
    probabilities (n, P); `labels`: each class's cell."""
    columns = [list(map(repr, rows[0][:, j].tolist())) for j in range(rows[0].shape[1])]
    if labels is not None:
        columns += [[labels[i] for i in rows[1][:, t].tolist()] for t in range(rows[1].shape[1])]
        columns += [list(map(repr, rows[2][:, j].tolist())) for j in range(rows[2].shape[1])]
    return ("\n".join(map(",".join, zip(*columns))) + "\n").encode()


class _Pipe:
    """An unseekable file that keeps what is written to it until `take`n: zipfile writes a
    stream (data descriptors after each member) into it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def npz_stream(chunks: Chunks, classes: list[Any] | None, rows: int) -> Iterator[bytes]:
    """An .npz of `outputs` (rows, ...) float64, and for classifiers `labels` (the classes'
    values) and `probabilities`: each member's header from the first chunk's shapes, then
    its data a chunk at a time (one pass over the chunks per member)."""
    sample = next(chunks(), None)
    if sample is None:
        return
    table = _label_values(classes) if classes is not None else None
    names = MEMBERS if classes is not None else MEMBERS[:1]
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name in names:
            dtype = table.dtype if name == "labels" else sample[name].dtype
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": (rows, *sample[name].shape[1:])}
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, header)
                for chunk in chunks():
                    values = table[chunk[name]] if name == "labels" else chunk[name]
                    member.write(np.ascontiguousarray(values, dtype=dtype).tobytes())
                    yield pipe.take()
    yield pipe.take()
