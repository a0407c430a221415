"""Data sets in and out: JSON arrays, CSV and NPZ uploads -> arrays -> stored npz bytes.

Stored form (`Dataset.data`): an uncompressed .npz with `inputs` (N, D) float64 and
`targets` as given, normalised to one dtype per kind: int64, float64, bool or unicode
strings. The zip is written deterministically (fixed timestamps, fixed member order,
little-endian arrays), so the same arrays always give the same bytes, and `Dataset.sha256`
is simply the SHA-256 of those stored bytes, whichever route uploaded the data.

Every problem with the data raises a 422 naming the field (`inputs[3]`, `targets`,
`file`, `target_column`), and so does a data set over the configured limits (`Limits`:
DATASET_MAX_ROWS, DATASET_MAX_FEATURES, DATASET_MAX_BYTES), found before the arrays are
built: JSON by the samples' count and the first sample's shape, CSV row by row, NPZ from the
.npy headers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import zipfile
from array import array
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from nn.seq2seq import PAD
from service.errors import size, validation_error

MAX_LABEL_CHARS = 200
INT64_MAX = 2**63 - 1


class Limits(NamedTuple):
    """How large a data set may be (service/config.py has the defaults)."""

    max_rows: int  # samples
    max_features: int  # values per sample: the product of a sample's shape
    max_bytes: int  # stored npz bytes (inputs as float64)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Limits:
        return cls(int(config["DATASET_MAX_ROWS"]), int(config["DATASET_MAX_FEATURES"]),
                   int(config["DATASET_MAX_BYTES"]))


def check_samples(samples: Any, path: str, max_rows: int, max_features: int) -> None:
    """JSON samples within the row and feature limits, from the outer length and the first
    sample's shape alone: called before the body's schema is checked, which walks every
    number (seconds for millions of rows), and before the samples become arrays (tensor()
    checks that every sample has the first one's shape). Anything but a list is left to the
    schema."""
    if not isinstance(samples, list):
        return
    if len(samples) > max_rows:
        raise validation_error(path, f"has {len(samples)} samples; the limit is {max_rows}")
    values = math.prod(_shape_of(samples[0])) if samples else 0
    if values > max_features:
        raise validation_error(
            f"{path}[0]", f"has {values} values per sample; the limit is {max_features}"
        )


# ---- JSON arrays ------------------------------------------------------------------------

def tensor(samples: list[Any], path: str) -> np.ndarray:
    """JSON samples, each a number array of one shape ((D,), (T, D), (C, H, W)...) ->
    (N, ...) float64, rectangular and finite; else a 422 at the first bad sample."""
    try:
        out = np.array(samples, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):
        out = None
    if out is not None and out.ndim >= 2 and np.isfinite(out).all():
        return out
    shape = _shape_of(samples[0])
    for i, sample in enumerate(samples):
        where = _mismatch(sample, shape, f"{path}[{i}]", f"{path}[0]")
        if where is not None:
            raise validation_error(*where)
        try:
            ok = bool(np.isfinite(np.array(sample, dtype=np.float64)).all())
        except (OverflowError, ValueError, TypeError):
            ok = False
        if not ok:
            raise validation_error(f"{path}[{i}]", "holds a number outside the range of float64")
    raise validation_error(path, "must be an array of samples")  # unreachable after the schema


def _shape_of(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _mismatch(value: Any, shape: tuple[int, ...], path: str, first: str) -> tuple[str, str] | None:
    """(path, message) of the first place `value` departs from `shape`, or None."""
    if not shape:
        return None if not isinstance(value, list) else (path, f"must be a number like {first}")
    if not isinstance(value, list):
        return path, f"must be an array like {first}"
    if len(value) != shape[0]:
        return path, f"has {len(value)} values but {first} has {shape[0]}"
    for j, item in enumerate(value):
        found = _mismatch(item, shape[1:], f"{path}[{j}]", f"{first}[{j}]")
        if found is not None:
            return found
    return None


def targets_array(values: list[Any], path: str = "targets") -> np.ndarray:
    """JSON targets -> one dtype: (N,) int64 / float64 / bool / str labels or values, or
    (N, K) rows: int64 when every entry is an integer (labels per time step), else float64."""
    kinds = [_kind(v) for v in values]
    odd = next((i for i, k in enumerate(kinds) if k != kinds[0]), None)
    if odd is not None:
        raise validation_error(f"{path}[{odd}]", f"must be {kinds[0]} like {path}[0]")
    if kinds[0] == "an array":
        if all(type(v) is int for row in values for v in row):  # labels per time step
            return _int64(values, path)
        return tensor(values, path)
    if kinds[0] == "a string":
        return _labels(values, path)
    if kinds[0] == "a boolean":
        return np.array(values, dtype=np.bool_)
    if all(isinstance(v, int) for v in values):
        return _int64(values, path)
    return tensor([[v] for v in values], path).reshape(-1)


def _int64(values: list[Any], path: str) -> np.ndarray:
    """Integer labels (N,) or (N, T) -> int64."""
    def too_big(v: Any) -> bool:
        return any(map(too_big, v)) if isinstance(v, list) else abs(v) > INT64_MAX

    big = next((i for i, v in enumerate(values) if too_big(v)), None)
    if big is not None:
        raise validation_error(f"{path}[{big}]", "is outside the 64-bit integer range")
    try:
        return np.array(values, dtype=np.int64)
    except ValueError:  # ragged rows: tensor() names the first one
        return tensor(values, path)


def _labels(values: list[str], path: str) -> np.ndarray:
    """String labels as a unicode array; NUL is refused (numpy would strip it silently)."""
    bad = next((i for i, v in enumerate(values) if "\x00" in v), None)
    if bad is not None:
        raise validation_error(f"{path}[{bad}]", "must not contain NUL characters")
    return np.array(values, dtype=np.str_)


def _kind(v: Any) -> str:
    if isinstance(v, list):
        return "an array"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    return "a string"


# ---- token sequences (task seq2seq) -----------------------------------------------------
#
# Rows of token ids (nn/seq2seq.py: 0 PAD, 1 BOS, 2 EOS, symbols from 3) of different
# lengths, as JSON sends them, stored right-padded with PAD: inputs (N, T_src) as float64
# like every data set's inputs, targets (N, T_tgt) int64. The engine checks what the rows
# hold (nn.describe with task seq2seq: every target row its symbols, then EOS).

# The largest token id: below the largest vocabulary an embedding takes (openapi.yaml).
MAX_TOKEN = 999_999


def sequences(rows: list[Any], path: str, max_length: int, end: int | None = None
              ) -> np.ndarray:
    """JSON rows of token ids of different lengths -> (N, T) int64, right-padded with PAD to
    the longest (T). A row's own trailing PAD is dropped first; `end` (EOS for targets) is
    appended to a row that does not end with it, so that a client need not send it.
    `token_rows` checks the rows."""
    ids = token_rows(rows, path, max_length)
    for row in ids:
        while row and row[-1] == PAD:
            row.pop()
        if end is not None and (not row or row[-1] != end):
            row.append(end)
    out = np.full((len(ids), max(map(len, ids))), PAD, dtype=np.int64)
    for i, row in enumerate(ids):
        out[i, :len(row)] = row
    return out


def token_rows(rows: list[Any], path: str, max_length: int, lowest: int = PAD,
               bound: int = MAX_TOKEN + 1) -> list[list[int]]:
    """JSON rows of token ids -> lists of ints; a 422 at the first row that is not a
    non-empty array of at most `max_length` integers from `lowest` to `bound` - 1."""
    for i, row in enumerate(rows):
        if not isinstance(row, list) or not row:
            raise validation_error(f"{path}[{i}]", "must be a non-empty array of token ids")
        if len(row) > max_length:
            raise validation_error(f"{path}[{i}]", f"has {len(row)} tokens; the limit is "
                                                   f"{max_length}")
        bad = next((j for j, v in enumerate(row) if not _token(v, lowest, bound)), None)
        if bad is not None:
            raise validation_error(f"{path}[{i}][{bad}]", f"must be a token id, an integer "
                                                          f"from {lowest} to {bound - 1}")
    return [[int(v) for v in row] for row in rows]


def _token(v: Any, lowest: int, bound: int) -> bool:
    return type(v) in (int, float) and float(v).is_integer() and lowest <= v < bound


# ---- CSV --------------------------------------------------------------------------------

def from_csv(
    raw: bytes, target_column: str | None, limits: Limits
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CSV with a header row -> (inputs, targets, feature column names).

    The target column is `target_column` (default: the last column); every other column is a
    numeric feature. Targets that are all integers become int64 labels, all numbers float64
    values, anything else string labels. Rows are read one at a time into a flat float64
    buffer: the first row past `limits` stops the upload.
    """
    rows = _csv_rows(raw)
    first = next(rows, None)
    if first is None:
        raise validation_error("file", "is empty; expected a header row and data rows")
    header = [h.strip() for h in first[1]]
    if len(header) < 2:
        raise validation_error("file", "needs at least one feature column and a target column")
    target = _target_index(header, target_column)
    features = [i for i in range(len(header)) if i != target]
    if len(features) > limits.max_features:
        raise validation_error(
            "file", f"has {len(features)} feature columns; the limit is {limits.max_features}"
        )
    values: array[float] = array("d")
    labels: list[str] = []
    lines: list[int] = []
    for line, row in rows:
        if len(labels) == limits.max_rows:
            raise validation_error(
                "file", f"has more than {limits.max_rows} data rows (line {line}); that is "
                        "the limit"
            )
        if len(row) != len(header):
            raise validation_error(
                "file", f"line {line} has {len(row)} fields but the header has {len(header)}"
            )
        values.extend(_csv_number(row[i], line, header[i]) for i in features)
        labels.append(row[target].strip())
        lines.append(line)
        if len(values) * values.itemsize > limits.max_bytes:
            raise validation_error(
                "file", f"line {line}: the inputs take more than {size(limits.max_bytes)}"
            )
    if not labels:
        raise validation_error("file", "has a header row but no data rows")
    x = np.frombuffer(values, dtype=np.float64).reshape(len(labels), len(features))
    return x, _csv_targets(labels, lines), [header[i] for i in features]


def _csv_rows(raw: bytes) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row, decoded as it is read."""
    text = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        for row in reader:
            if any(f.strip() for f in row):
                yield reader.line_num, row
    except UnicodeDecodeError:
        raise validation_error("file", "a CSV upload must be UTF-8 text") from None
    except csv.Error as e:
        raise validation_error("file", f"line {reader.line_num}: {e}") from None


def _target_index(header: list[str], name: str | None) -> int:
    if name is None:
        return len(header) - 1
    hits = [i for i, h in enumerate(header) if h == name]
    if not hits:
        raise validation_error(
            "target_column", f"no column named {name!r}; the columns are {', '.join(header)}"
        )
    if len(hits) > 1:
        raise validation_error("target_column", f"{len(hits)} columns are named {name!r}")
    return hits[0]


def _csv_number(text: str, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:40] + "..."
        message = f"line {line}, column {column!r}: {shown!r} is not a finite number"
        raise validation_error("file", message)
    return value


def _csv_targets(labels: list[str], lines: list[int]) -> np.ndarray:
    for line, label in zip(lines, labels):
        if not label or len(label) > MAX_LABEL_CHARS or "\x00" in label:
            raise validation_error(
                "file", f"line {line}: a target must have 1 to {MAX_LABEL_CHARS} characters, no NUL"
            )
    try:
        ints = [int(v) for v in labels]
        if all(abs(v) <= INT64_MAX for v in ints):
            return np.array(ints, dtype=np.int64)
    except ValueError:
        pass
    try:
        values = np.array([float(v) for v in labels], dtype=np.float64)
        if np.isfinite(values).all():
            return values
    except ValueError:
        pass
    return np.array(labels, dtype=np.str_)


# ---- NPZ --------------------------------------------------------------------------------

class NpyHeader(NamedTuple):
    shape: tuple[int, ...]
    dtype: np.dtype


def from_npz(raw: bytes, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """An .npz with arrays `inputs` and `targets`: no pickles, and nothing allocated before
    both .npy headers are checked against `limits` and against their members' sizes."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        raise validation_error("file", "is neither CSV text nor a readable .npz archive") from None
    with archive:
        headers = {}
        for name in ("inputs", "targets"):
            if f"{name}.npy" not in names:
                raise validation_error("file", f"the .npz has no array named {name!r}")
            headers[name] = _npy_header(archive, name)
        _check_npz(headers, limits)
        x, y = (_npy_read(archive, name) for name in ("inputs", "targets"))
    if x.dtype.kind not in "biuf":
        raise validation_error("file", f"inputs must be numbers, not dtype {x.dtype}")
    return x.astype(np.float64), _normalise_targets(y)


def _npy_header(archive: zipfile.ZipFile, name: str) -> NpyHeader:
    """A member's .npy header, checked: no object dtype, and a shape whose data is exactly
    what the member holds (a header may claim any shape; the zip says how much is there)."""
    fmt = np.lib.format
    member = archive.getinfo(f"{name}.npy")
    try:
        with archive.open(member) as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            header_bytes = f.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
        raise validation_error("file", f"{name}.npy is not a readable array ({e})") from None
    if dtype.hasobject:
        raise validation_error("file", f"{name} is an object array; pickled data is refused")
    if any(n < 0 for n in shape):
        raise validation_error("file", f"{name}.npy claims the impossible shape {shape}")
    claimed = math.prod(shape) * dtype.itemsize
    held = member.file_size - header_bytes
    if claimed != held:
        raise validation_error(
            "file", f"{name}.npy claims shape {tuple(shape)} of {dtype} ({claimed} bytes) "
                    f"but holds {held} bytes",
        )
    return NpyHeader(tuple(shape), dtype)


def _check_npz(headers: dict[str, NpyHeader], limits: Limits) -> None:
    """Rows, values per sample and stored size (inputs as float64) within the limits."""
    for name, (shape, dtype) in headers.items():
        rows, per_sample = (shape[0], math.prod(shape[1:])) if shape else (1, 1)
        if rows > limits.max_rows:
            raise validation_error(
                "file", f"{name} has {rows} rows; the limit is {limits.max_rows}"
            )
        if per_sample > limits.max_features:
            raise validation_error(
                "file", f"{name} has {per_sample} values per sample; the limit is "
                        f"{limits.max_features}",
            )
    stored = stored_bytes(headers)
    if stored > limits.max_bytes:
        raise validation_error(
            "file", f"the arrays are larger than {size(limits.max_bytes)} once stored "
                    f"(about {size(stored)})",
        )


def stored_bytes(arrays: Mapping[str, NpyHeader]) -> int:
    """The stored size of the data of arrays `inputs` and `targets` of these shapes and
    dtypes (the npz's headers aside), known before any of them is made or read."""
    return sum(math.prod(shape) * _stored_itemsize(name, dtype)
               for name, (shape, dtype) in arrays.items())


def _stored_itemsize(name: str, dtype: np.dtype) -> int:
    """Bytes per value once stored: inputs and numbers as 8-byte float64 / int64, booleans
    as 1, byte strings as 4-byte unicode characters."""
    if name == "inputs" or dtype.kind in "iuf":
        return 8
    if dtype.kind == "S":
        return 4 * dtype.itemsize
    return dtype.itemsize


def _npy_read(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    try:
        with archive.open(f"{name}.npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
        raise validation_error("file", f"{name}.npy is not a readable array ({e})") from None


def _normalise_targets(y: np.ndarray) -> np.ndarray:
    kind = y.dtype.kind
    if kind == "b":
        return y.astype(np.bool_)
    if kind in "iu":
        if kind == "u" and y.size and int(y.max()) > INT64_MAX:
            raise validation_error("file", "targets exceed the 64-bit integer range")
        return y.astype(np.int64)
    if kind == "f":
        return y.astype(np.float64)
    if kind in "US":
        try:
            y = y.astype(np.str_)
        except UnicodeDecodeError:
            raise validation_error("file", "targets are bytes that are not ASCII text") from None
        if y.dtype.itemsize // 4 > MAX_LABEL_CHARS:
            raise validation_error("file", f"labels must have at most {MAX_LABEL_CHARS} characters")
        if any("\x00" in v for v in y.ravel().tolist()):
            raise validation_error("file", "labels must not contain NUL characters")
        return y
    raise validation_error("file", f"targets of dtype {y.dtype} are not supported")


# ---- storage ----------------------------------------------------------------------------

def encode(inputs: np.ndarray, targets: np.ndarray) -> bytes:
    """The stored .npz bytes: deterministic for the same arrays."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, array in (("inputs", inputs), ("targets", targets)):
            array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Stored bytes -> (inputs, targets)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return npz["inputs"], npz["targets"]


class InputRows(NamedTuple):
    """Where a stored data set's `inputs` lie in its bytes (the stored zip is uncompressed,
    `inputs.npy` first: `encode`), so that rows can be read a range at a time."""

    offset: int  # of row 0's first byte
    rows: int
    sample_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return math.prod(self.sample_shape) * self.dtype.itemsize

    def slice(self, start: int, stop: int) -> tuple[int, int]:
        """(1-based position, length) of rows [start, stop), as SQL's substr takes them."""
        return self.offset + start * self.row_bytes + 1, (stop - start) * self.row_bytes

    def decode(self, raw: bytes, start: int, stop: int) -> np.ndarray:
        """The float64 rows [start, stop) from the bytes `slice` read."""
        return np.frombuffer(raw, dtype=self.dtype).reshape(
            (stop - start, *self.sample_shape)).astype(np.float64)


# Bytes read from the start of a stored data set to find its inputs: the zip's local header
# (30 bytes, the name, the zip64 extra field) and the .npy header (at most 64 KiB + 10).
INPUT_HEAD_BYTES = 70_000


def input_rows(head: bytes) -> InputRows | None:
    """The layout of the inputs in stored bytes that begin with `head` (INPUT_HEAD_BYTES of
    them), or None when they are not laid out as `encode` writes them."""
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return None
    method, name_len, extra_len = (int.from_bytes(head[8:10], "little"),
                                   int.from_bytes(head[26:28], "little"),
                                   int.from_bytes(head[28:30], "little"))
    start = 30 + name_len + extra_len
    if method != zipfile.ZIP_STORED or head[30:30 + name_len] != b"inputs.npy":
        return None
    f = io.BytesIO(head[start:])
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = read(f)
    except (ValueError, KeyError, EOFError):
        return None
    if fortran or dtype.hasobject or not shape:
        return None
    return InputRows(start + f.tell(), shape[0], tuple(shape[1:]), dtype)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
