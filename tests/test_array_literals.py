"""The batch's columns as PostgreSQL array literals, and its text columns as joined strings
(store/base.py): whatever the text or number, PostgreSQL reads back exactly the values the worker wrote."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagmeter.events import TEXT_SEPARATOR
from flagmeter.localstack import LocalStack
from flagmeter.store.base import SPLIT_TEXT, int_array, joined, text_array

# Any text PostgreSQL can store (no NUL), control characters, quotes, backslashes and non-ASCII included.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)


@pytest.fixture(scope="module")
def cursor(servers: LocalStack) -> Iterator[psycopg2.extensions.cursor]:
    conn = psycopg2.connect(servers.database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        yield cur
    conn.close()


@settings(max_examples=300, deadline=None)
@given(values=st.lists(TEXT, max_size=8))
def test_text_array_reads_back_as_the_same_strings(
    cursor: psycopg2.extensions.cursor, values: list[str]
) -> None:
    cursor.execute("SELECT %s::text[]", (text_array(values),))
    assert cursor.fetchone()[0] == values


@settings(max_examples=300, deadline=None)
@given(values=st.lists(TEXT.filter(lambda v: v and TEXT_SEPARATOR not in v), max_size=8))
def test_joined_text_splits_back_into_the_same_strings(
    cursor: psycopg2.extensions.cursor, values: list[str]
) -> None:
    # Values are never empty (ids, features and tenants have one character at least): an empty string
    # joined alone would read back as no value at all.
    cursor.execute(f"SELECT {SPLIT_TEXT}", (joined(values),))
    assert cursor.fetchone()[0] == values


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8))
def test_int_array_reads_back_as_the_same_numbers(
    cursor: psycopg2.extensions.cursor, values: list[int]
) -> None:
    cursor.execute("SELECT %s::bigint[]", (int_array(values),))
    assert cursor.fetchone()[0] == values


def test_int_array_writes_numbers_beyond_64_bits_too() -> None:
    assert int_array([2**70, -1]) == "{1180591620717411303424,-1}"
