"""How the worker inserts a batch into the dedup ledger. Pure: no I/O.

Almost every batch is all new ids. While the last batch held no known id, the ledger gets a plain
insert, which fails as a whole on any known id (then the batch is counted again with ON CONFLICT DO
NOTHING, which skips them). The plain insert saves PostgreSQL the speculative insertion and the join
on what was new (~30 % of its time per event). One instance per worker process: the guess follows
that worker's own batches, and the API never shares it.
"""

from __future__ import annotations


class LedgerInsert:
    def __init__(self) -> None:
        self._expect_new_ids = True

    @property
    def plain_first(self) -> bool:
        """Try the plain insert first (it fails whole on a known id)."""
        return self._expect_new_ids

    def met_known_id(self) -> None:
        """The plain insert failed: count the batch again, skipping known ids."""
        self._expect_new_ids = False

    def counted(self, known_ids: int) -> None:
        """A batch was counted with `known_ids` ids already in the ledger: guess the next from it."""
        self._expect_new_ids = known_ids == 0
