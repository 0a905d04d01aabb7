"""A run's config.toml is what a resume rebuilds the experiment from, so the writer must
round-trip every config: keys with spaces or dots, unicode, strings with newlines, quotes,
backslashes and control characters (model.options keys and values, data paths and
column names are the user's text)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.config import load_config, parse_config, to_toml

# any unicode a file can hold (no lone surrogates), newlines and controls included
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
KEY = st.one_of(TEXT, st.sampled_from(["a key", "dotted.key", "ünïcödé", "new\nline", ""]))
SCALAR = st.one_of(
    TEXT,
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
OPTION = st.one_of(SCALAR, st.lists(SCALAR, max_size=4))


@settings(max_examples=60, deadline=None)
@given(
    options=st.dictionaries(KEY, OPTION, max_size=5),
    path=TEXT.filter(lambda t: "\x00" not in t),
    label=TEXT,
)
def test_to_toml_round_trips_user_text(
    tmp_path_factory, options: dict, path: str, label: str
) -> None:
    config = parse_config(
        {
            "model": {"kind": "module:my_pkg.nets:Net", "options": options},
            "data": {"source": "file", "path": "/" + path, "label_column": label},
        }
    )
    text = to_toml(config)
    written = tmp_path_factory.mktemp("run") / "config.toml"
    written.write_text(text, encoding="utf-8")
    assert load_config(written) == config  # what a resume reads back


def test_keys_with_spaces_and_newlines_are_quoted() -> None:
    """Keys with spaces and multi-line strings are written as TOML that reads back."""
    config = parse_config(
        {"model": {"kind": "module:p.m:f", "options": {"a key": "one\ntwo", "é": ["x\ty"]}}}
    )
    assert '"a key" = "one\\ntwo"' in to_toml(config)
    assert parse_config(tomllib.loads(to_toml(config))) == config


def test_relative_data_path_is_anchored_once(tmp_path: Path) -> None:
    """A resolved config holds absolute input paths, so reading it back elsewhere keeps
    them (the resume of a run moved to another working directory)."""
    config = load_config(None, ["data.source='file'", "data.path='some dir/x.csv'"])
    written = tmp_path / "config.toml"
    written.write_text(to_toml(config), encoding="utf-8")
    assert load_config(written) == config
    assert Path(config.data.path).is_absolute()
