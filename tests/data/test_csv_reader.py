"""CSV files are parsed by pandas' C reader straight to float64; whatever it cannot read
cleanly is named by row and column as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedloom.data.sources import load_arrays
from fedloom.errors import DataError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "d.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_large_file_reads_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 6))
    y = rng.integers(0, 4, size=20_000)
    lines = ["f0,f1,f2,f3,f4,f5,label"]
    lines += [
        ",".join([*(repr(float(v)) for v in row), str(c)]) for row, c in zip(x, y, strict=True)
    ]
    data = load_arrays(write(tmp_path, "\n".join(lines) + "\n"), label_column="label")
    assert np.array_equal(data.x, x.astype(data.x.dtype)) and np.array_equal(data.y, y)


def test_quotes_blank_lines_spaces_repeated_names_and_text_labels(tmp_path: Path) -> None:
    text = '\na,a,y\n"1.5", 2 ,NA\n\n3,4,"b, c"\n-1e3,0,NA\n'
    data = load_arrays(write(tmp_path, text), label_column=-1)
    assert data.x.tolist() == [[1.5, 2.0], [3.0, 4.0], [-1000.0, 0.0]]
    assert data.y.tolist() == [0, 1, 0]  # "NA" and "b, c" are labels, sorted
    assert data.num_classes == 2


def test_an_empty_label_in_a_whole_row_is_a_label(tmp_path: Path) -> None:
    data = load_arrays(write(tmp_path, "a,y\n1,\n2,z\n"))
    assert data.y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b,y\n1,2,0\n3,oops,1\n", r"feature column 'b' is not numeric in data row 2"),
        ("a,b,y\n1,2,0\n3,,1\n", r"feature column 'b' is not numeric in data row 2"),
        ("a,b,y\n1,2,0\n3,4,1,9\n", r"data row 2 has 4 fields but the header has 3"),
        ("a,b,y\n1,2,0\n\n3,4\n", r"data row 2 has 2 fields but the header has 3"),
        ("a,b,y\n1,2,0\n3,-inf,1\n", r"feature column 'b' has NaN/inf in data row 2"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_arrays(write(tmp_path, text))


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"a,y\n1,\xff\n")
    with pytest.raises(DataError, match="cannot read CSV"):
        load_arrays(path)
