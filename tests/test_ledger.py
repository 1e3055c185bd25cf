"""The ledger insert strategy (flagmeter.ledger): pure, one instance per worker."""

from __future__ import annotations

from flagmeter.ledger import LedgerInsert


def test_a_new_worker_tries_the_plain_insert_first() -> None:
    assert LedgerInsert().plain_first


def test_a_known_id_switches_to_skipping_known_ids_until_a_batch_holds_none() -> None:
    ledger = LedgerInsert()
    ledger.met_known_id()
    assert not ledger.plain_first
    ledger.counted(known_ids=3)  # the recount met known ids: keep skipping them
    assert not ledger.plain_first
    ledger.counted(known_ids=0)  # a clean batch: back to the cheaper plain insert
    assert ledger.plain_first


def test_workers_guess_apart() -> None:
    first, second = LedgerInsert(), LedgerInsert()
    first.met_known_id()
    assert second.plain_first
