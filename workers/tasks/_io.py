"""Reading benchmark files with one-line errors that name the file and the row.

Every reader raises :class:`DataError` (never skips): a missing or empty file, a malformed JSON line, a record
that is not an object, a missing field. Rows are numbered from 1 as a person counts them: ``line N`` for JSON
Lines and CSV (the header is line 1), ``item N`` for a JSON array, ``row N`` for parquet.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from workers.tasks._errors import DataError

__all__ = [
    "Record",
    "read_text",
    "read_json",
    "read_records",
    "read_csv_rows",
    "read_parquet",
    "read_parquet_cell",
    "get_field",
    "require_file",
    "unique_ids",
]


class Record(dict):
    """One row of a benchmark file, which remembers where it came from for error messages."""

    def __init__(self, data: Mapping[str, Any], *, path: Path, unit: str, number: int) -> None:
        super().__init__(data)
        self.path = path
        self.number = number  # counted from 1, in ``unit``s ("line", "item", "row"); unit "" = the whole file
        self.where = f"{unit} {number}" if unit else ""

    def error(self, message: str) -> DataError:
        return DataError(f"{self.path} {self.where}: {message}" if self.where else f"{self.path}: {message}")


def require_file(path: Path) -> Path:
    """``path`` if it is a file, else a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def read_text(path: Path) -> str:
    """The whole text of ``path``; missing, unreadable or empty (only whitespace) files are errors."""
    try:
        text = require_file(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def read_json(path: Path) -> Any:
    """One JSON document."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: malformed JSON: {e.msg}") from e


def read_records(path: Path) -> list[Record]:
    """JSON objects from a JSON Lines file or a JSON array file (told apart by the first character).

    POPE's COCO files are JSON Lines despite ``.json``; its seem-style files are one JSON array
    (AoiDragon/POPE:output/coco/*, output/seem/*). Blank lines of a JSON Lines file are allowed.
    """
    text = read_text(path)
    if text.lstrip().startswith("["):
        items = read_json(path)
        return [_as_record(item, path=path, unit="item", number=i) for i, item in enumerate(items, start=1)]
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {lineno}: malformed JSON: {e.msg}") from e
        records.append(_as_record(item, path=path, unit="line", number=lineno))
    return records


def read_csv_rows(path: Path, *, n_columns: int) -> tuple[list[str], list[Record]]:
    """Header and data rows of a CSV file; every data row must have ``n_columns`` cells, read by position.

    The records are keyed ``"0"``, ``"1"``, ... so that callers read columns by position whatever the header
    says.
    """
    reader = csv.reader(io.StringIO(read_text(path)))
    try:
        header = next(reader)
        rows = [(reader.line_num, row) for row in reader]  # line_num: the physical line where the row ends
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: malformed CSV: {e}") from e
    records = []
    for lineno, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != n_columns:
            raise DataError(f"{path} line {lineno}: expected {n_columns} columns, found {len(row)}")
        records.append(
            Record({str(i): cell for i, cell in enumerate(row)}, path=path, unit="line", number=lineno)
        )
    if not records:
        raise DataError(f"{path}: no data rows under the header")
    return header, records


def read_parquet(path: Path, *, columns: Sequence[str]) -> list[Record]:
    """The given columns of a parquet file as records; a missing column is an error naming it."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(require_file(path))
    except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on a corrupt file
        raise DataError(f"{path}: cannot read parquet: {e}") from e
    present = set(parquet.schema_arrow.names)
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    try:
        rows = parquet.read(columns=list(columns)).to_pylist()
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read parquet: {e}") from e
    if not rows:
        raise DataError(f"{path}: no rows")
    return [Record(row, path=path, unit="row", number=i) for i, row in enumerate(rows, start=1)]


def read_parquet_cell(path: Path, *, row: int, column: str) -> Any:
    """One cell (``row`` counted from 1), reading only the row group that holds it."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        offset = row - 1
        for group in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if offset < size:
                return parquet.read_row_group(group, columns=[column]).column(0)[offset].as_py()
            offset -= size
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path} row {row}: cannot read column {column!r}: {e}") from e
    raise DataError(f"{path} row {row}: no such row")


def get_field(record: Record, name: str, kind: type | tuple[type, ...] = str) -> Any:
    """``record[name]``, which must be present and of ``kind`` (non-empty when a string)."""
    if name not in record or record[name] is None:
        raise record.error(f"missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise record.error(f"field {name!r} should be {_kind_name(kind)}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise record.error(f"field {name!r} is empty")
    return value


def _as_record(item: Any, *, path: Path, unit: str, number: int) -> Record:
    if not isinstance(item, dict):
        raise DataError(f"{path} {unit} {number}: expected a JSON object, got {type(item).__name__}")
    return Record(item, path=path, unit=unit, number=number)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kind))


def unique_ids(records: Iterable[tuple[str, Record]]) -> None:
    """Raise on the first id seen twice, naming both rows."""
    seen: dict[str, Record] = {}
    for example_id, record in records:
        if example_id in seen:
            raise record.error(f"duplicate id {example_id!r} (first at {seen[example_id].where})")
        seen[example_id] = record
