"""registry._json gives json's text and values, character for character, without importing json."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry import _json

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities too: allow_nan decides
    | st.text()  # lone surrogates too
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
OPTIONS = [
    {},
    {"separators": (",", ":")},
    {"ensure_ascii": False},
    {"separators": (",", ":"), "ensure_ascii": False, "allow_nan": False},
]


def outcome(function: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    """What a call gave: its result's repr, or its exception's type and message."""
    try:
        return ("value", repr(function(*args, **kwargs)))
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        return ("ValueError" if isinstance(exc, ValueError) else "TypeError", str(exc))


@given(values, st.sampled_from(OPTIONS))
def test_dumps_gives_jsons_text_or_its_error(value: object, options: dict[str, Any]) -> None:
    assert outcome(_json.dumps, value, **options) == outcome(json.dumps, value, **options)


@given(values, st.sampled_from(OPTIONS), st.text(" \t\n\r", max_size=3))
def test_loads_reads_what_json_wrote(value: object, options: dict[str, Any], pad: str) -> None:
    try:
        text = pad + json.dumps(value, **options) + pad
    except ValueError:  # NaN with allow_nan=False
        return
    assert repr(_json.loads(text)) == repr(json.loads(text))


@given(st.text(alphabet=' \t\n\r{}[]",:0123456789.eE+-truefalsnNaIiy\\u\x00é', max_size=24))
def test_loads_accepts_and_refuses_what_json_does(text: str) -> None:
    assert outcome(_json.loads, text) == outcome(json.loads, text)


@pytest.mark.parametrize(
    "text", ["", "  ", "[1,]", '{"a": 1} x', "[1] [2]", "nul", "\ufeff[]", '{"a": 1}\x00']
)
def test_a_text_that_is_not_one_document_is_a_value_error(text: str) -> None:
    refused = outcome(_json.loads, text)
    assert refused[0] == "ValueError"
    assert refused == outcome(json.loads, text)  # the same message as json's


def test_loads_takes_text_only() -> None:
    with pytest.raises(TypeError, match="must be str, not bytes"):
        _json.loads(b"{}")  # type: ignore[arg-type]


def test_circular_references_are_refused_as_json_refuses_them() -> None:
    loop: list[object] = []
    loop.append(loop)
    assert outcome(_json.dumps, loop) == outcome(json.dumps, loop)
    assert outcome(_json.dumps, loop)[0] == "ValueError"


def test_importing_it_imports_neither_json_nor_re() -> None:
    # What the import adds (an editable install's import hook may load re at start-up).
    probe = (
        "import sys; before = set(sys.modules); import registry._json\n"
        "print(sorted({'json', 're', 'enum'} & (set(sys.modules) - before)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_the_accelerator_it_is_the_json_package() -> None:
    # An interpreter without _json (or one that refuses it) gets json's own functions.
    probe = (
        "import sys; sys.modules['_json'] = None\n"
        "import registry._json as j\n"
        "print(j.dumps({'a': [1, 'é']}, separators=(',', ':'), ensure_ascii=False))\n"
        "print(j.loads(' [1, 2.5, null] '))\n"
        "print('json' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['{"a":[1,"é"]}', "[1, 2.5, None]", "True"]
