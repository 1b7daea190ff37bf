"""When a commit is safe: the one place that decides it, and in which order it goes.

Between two commits the worker applies batches of input records: each batch's outputs
(`joined`, `unmatched`, `deadletter`, rerouted records) and, at its end, the changelog
records of the rows and index entries it wrote are handed to the one producer
(`streams.worker.outbox`); the writes themselves wait in memory (`streams.worker.tables`).
A commit (every `COMMIT_INTERVAL_SECONDS` or `COMMIT_EVERY_RECORDS` inputs, before
each expiry sweep, when partitions are revoked, and at shutdown) goes:

1. the cut, on the event loop between two batches (`start`): hand the changelog
   records of the writes still pending to the producer, publish the `feedback-stats`
   shares changed since the last commit, take the input offsets applied so far, end
   the outbox's epoch (what the commit covers) and set the tables' overlays aside
   (reads still see them; later writes go to fresh overlays);
2. wait until Kafka has every record of the commit's epochs. A record Kafka refuses
   for good stops the worker with exit status 70 here, before anything is committed:
   its inputs are read again;
3. commit the input offsets taken at the cut;
4. write each overlay set aside to RocksDB, in one write batch with the offset of the
   last changelog record of the commit (its checkpoint); then reads stop looking at it.

Steps 2 to 4 run beside the reader, which goes on reading and applying the next
batches (the pipeline): those only add to the next commit, which begins after this
one is done, so commits never overlap. Step 2 waits on the event loop (whose thread
serves the delivery reports, between batches); 3 and 4 block, so they run in the
commit thread (`Outbox.in_thread`). A commit that is not done when
`COMMIT_EVERY_RECORDS` more inputs are applied holds the reader (`blocked`), which
bounds what waits in memory while the broker is away.

Why it is safe. After 2, whatever a committed input produced is in Kafka: the epochs
hold every record sent up to the cut, and later batches' records are not waited for
because their offsets are not in this commit. A crash before 3 leaves the inputs
uncommitted: they are read again and the join rules recognise a replay by its source
offset (`streams.worker.join`), emitting the same records with the same ids. A crash
between 3 and 4 leaves the databases at their previous checkpoint: the restore reads
the changelog from there, which holds the writes of 2. A database never holds a write
whose changelog record Kafka may not have, nor a checkpoint past a record it does not
hold (later commits' records may already be in Kafka, so the checkpoint is the
commit's own last record, not the changelog's), so local state and changelog never
disagree. In a rebalance callback or at shutdown the same steps run to the end before
the call returns (`commit_now`, `commit`).

With `exactly_once` (`STREAMS_PROCESSING_GUARANTEE`) everything between two cuts is
one Kafka transaction of the outbox's transactional producer, and 2 and 3 become
`send_offsets_to_transaction` (with the input consumer's group metadata: a worker whose
partitions moved is fenced) and `commit_transaction`, which flushes first. librdkafka
takes no record while a transaction commits, so what the reader sends meanwhile is
held in order by the outbox and begins the next transaction once this one is
committed; a `read_committed` reader sees a joined record once its transaction is
committed, so commits come as soon as one is done and `EXACTLY_ONCE_COMMIT_INTERVAL_SECONDS`
has passed since the last began. A call Kafka calls retriable (a broker away) is
retried. A transaction that must be aborted, or whose commit is still under way after
`WEDGED_AFTER_SECONDS` (librdkafka can wedge a producer after a broker restart, see
`Outbox.renew`), resets the worker (`_reset_async`): the reader waits while everything
applied since the last commit is dropped (the overlays, including those set aside,
never reached RocksDB; the held records; the aggregate shares), a new producer with the
same transactional id ends the open transaction (its records never reach a
`read_committed` reader, unless its commit had reached the broker), every partition's
tables are restored from their changelogs past their checkpoints and its inputs are
read again from the committed offsets. Whatever became of the last transaction, the
worker goes on from what Kafka committed. Partitions lost (the session timed out, as in
a broker outage longer than it) are dropped the same way (`abandon`): the commit under
way is given up and a new producer ends the open transaction before anything is sent
again. A fenced or failed producer stops the worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from confluent_kafka import KafkaException, TopicPartition

from streams.worker.outbox import DeliveryFailed, Epoch, Fenced, Outbox, delivered_offsets
from streams.worker.tables import Cut, Tables

log = logging.getLogger(__name__)

COMMIT_INTERVAL_SECONDS = 1.0
# A transaction's records are readable once it commits, so a commit begins as soon as the
# last one is done and this long has passed since it began. Under load commits follow
# each other (one is under way while the reader applies the next batches; each takes a
# few round trips to the broker: 15-30 ms here); at moderate load this caps them at 50
# a second. Measured at 600 feedback/s (p99): 115 ms with 50 ms, 92 ms with 20 ms, 93 ms
# with none; each commit costs a few requests and a marker in every partition it wrote.
EXACTLY_ONCE_COMMIT_INTERVAL_SECONDS = 0.02
COMMIT_EVERY_RECORDS = 20_000
# A transactional commit still under way after this long is taken for wedged (see
# `Outbox.renew`): the worker resets instead of waiting on (`_reset`).
WEDGED_AFTER_SECONDS = 30.0
RESET_BACKOFF_SECONDS = 1.0  # after a reset, before the inputs are read again


class OffsetCommitter(Protocol):
    """What a commit needs of the input consumer (`streams.worker.consumer.InputConsumer`)."""

    def uncommitted(self) -> bool:
        """Whether records were applied since the last commit."""
        ...

    def take_applied(self) -> list[TopicPartition]:
        """The offsets to commit for the records applied, forgotten here."""
        ...

    def commit_offsets(self, offsets: list[TopicPartition]) -> bool:
        """Commit `offsets` (blocking); False when the group refused them."""
        ...

    def give_back(self, offsets: list[TopicPartition]) -> None:
        """Offsets a refused commit took: committed with the next one."""
        ...

    def group_metadata(self) -> Any:
        """The consumer's group metadata, for `send_offsets_to_transaction`."""
        ...

    def partitions_of(self, partitions: list[int]) -> list[TopicPartition]:
        """These partition numbers of both input topics."""
        ...

    def committed_positions(self, offsets: list[TopicPartition]) -> list[TopicPartition]:
        """The committed offsets of these partitions (blocking; retried while Kafka is away)."""
        ...

    def seek(self, positions: list[TopicPartition]) -> None:
        """Read these partitions again from these offsets."""
        ...


class Reloader(Protocol):
    """What a reset needs of partition ownership (`streams.worker.rebalance.Partitions`)."""

    def suspend(self) -> list[int]:
        """Stop applying every ready partition (paused, out of the ready set); return them."""
        ...

    def reload(self, partitions: list[int]) -> None:
        """Restore these suspended partitions from their changelogs, then read them again."""
        ...


@dataclass(eq=False)
class Commit:
    """One commit under way: what its cut took, and its blocking part."""

    offsets: list[TopicPartition]
    epochs: list[Epoch]
    cut: Cut
    group: Any = None
    job: concurrent.futures.Future[bool] | None = None
    task: asyncio.Future[None] | None = None
    concluded: bool = False
    # Set (under `lock`) when the worker gave up on a wedged job: it must not write the
    # cut to RocksDB if it ever gets that far.
    abandoned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    began: float = field(default_factory=time.monotonic)


class Checkpoint:
    """Decides when to commit and commits in the order of the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        tables: Tables,
        inputs: OffsetCommitter,
        publish_stats: Callable[[], None],
        discard_stats: Callable[[], None],
        fail: Callable[[str], NoReturn],
    ) -> None:
        self.outbox = outbox
        self.tables = tables
        self.inputs = inputs
        self.publish_stats = publish_stats
        self.discard_stats = discard_stats
        self.fail = fail  # stops the worker (exit 70); never returns
        self.reloader: Reloader | None = None  # set by the worker once it has one
        self.on_reset: list[Callable[[], None]] = []  # told when applied work is dropped
        self.applied = 0  # inputs applied since the last cut
        self.last = time.monotonic()  # when the last commit began
        self.current: Commit | None = None
        self.resetting: asyncio.Future[None] | None = None
        self.renewal: asyncio.Future[None] | None = None  # `_renew_async`, after `abandon`
        self.resets = 0
        self.interval = (
            EXACTLY_ONCE_COMMIT_INTERVAL_SECONDS
            if outbox.transactional
            else COMMIT_INTERVAL_SECONDS
        )

    # -- when ------------------------------------------------------------------------

    def due(self) -> bool:
        """Time to begin a commit: none under way, and the interval passed or many records."""
        if self.current is not None or self.resetting is not None:
            return False
        if self.applied >= COMMIT_EVERY_RECORDS:
            return True
        return time.monotonic() - self.last >= self.interval and self.pending()

    def pending(self) -> bool:
        """Anything applied or written since the last cut."""
        return self.applied > 0 or self.inputs.uncommitted() or self.tables.changed()

    def blocked(self) -> asyncio.Future[None] | None:
        """What the reader must wait for before it reads on, if anything.

        A reset under way (what was applied is being dropped and the tables reloaded),
        or a commit under way while `COMMIT_EVERY_RECORDS` more inputs wait in memory.
        """
        if self.resetting is not None:
            return self.resetting
        if self.current is not None and self.applied >= COMMIT_EVERY_RECORDS:
            return self.current.task
        return None

    # -- the pipeline ----------------------------------------------------------------

    def start(self) -> None:
        """Cut (step 1), then steps 2-4 beside the reader, which goes on."""
        commit = self._cut()
        commit.task = asyncio.ensure_future(self._run(commit))

    async def _run(self, commit: Commit) -> None:
        # Step 2 on the event loop (it alone serves the delivery reports), 3-4 in the
        # commit thread. A rebalance callback may finish the commit at any await.
        try:
            try:
                await self.outbox.settle(commit.epochs, lambda: commit.concluded)
            except DeliveryFailed as error:
                self.fail(f"delivery_failed error={error}")
            if commit.concluded:
                return
            job = commit.job = self.outbox.in_thread(self._work, commit)
            deadline = WEDGED_AFTER_SECONDS if self.outbox.transactional else None
            with contextlib.suppress(Exception):  # `_conclude` reads it from the job
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job)), deadline)
            if commit.concluded:
                return
            if self._conclude(commit):
                await self._reset_async(commit)
            elif self.due():  # commits follow each other while records come in
                self.start()
        except (KafkaException, Fenced, DeliveryFailed) as error:
            self.fail(f"commit_failed error={error}")

    async def commit(self) -> None:
        """Commit everything applied so far and return once it is done (steps 1-4).

        Other work goes on meanwhile (the caller need not hold the worker's lock): it
        returns once a commit that began after the call is done, or there was nothing
        to commit (a reset drops what was applied).
        """
        called = time.monotonic()
        while True:
            commit = self.current
            if self.resetting is not None:
                await self.resetting
            elif commit is not None:
                assert commit.task is not None
                await commit.task
                if commit.began >= called:
                    return
            elif self.pending():
                self.start()
            else:
                return

    def commit_now(self) -> None:
        """Commit everything applied so far, blocking: inside a rebalance callback.

        The commit under way is finished first, then one more covers the rest; the
        call returns when both are done.
        """
        if self.resetting is not None:
            # What was applied is dropped already: nothing is left to commit. The rest
            # of the reset (the reload) follows on the event loop.
            if self.outbox.job is not None:
                concurrent.futures.wait([self.outbox.job])
            return
        self.settle_now()
        if not self.pending():
            return
        self._finish_now(self._cut())

    def settle_now(self) -> None:
        """Block until the commit under way is done (finishing it here if need be)."""
        commit = self.current
        if commit is not None and not commit.concluded:
            self._finish_now(commit)

    def _finish_now(self, commit: Commit) -> None:
        # Steps 2-4 of `commit` on this (the event loop's) thread, from where it is.
        if commit.job is None:
            try:
                self.outbox.settle_now(commit.epochs)
            except DeliveryFailed as error:
                self.fail(f"delivery_failed error={error}")
            job: concurrent.futures.Future[bool] = concurrent.futures.Future()
            try:
                job.set_result(self._work(commit))
            except Exception as error:
                job.set_exception(error)
            commit.job = job
        deadline = WEDGED_AFTER_SECONDS if self.outbox.transactional else None
        concurrent.futures.wait([commit.job], deadline)
        if self._conclude(commit):
            self._reset_now(commit)

    def abandon(self) -> None:
        """The partitions are already another worker's: drop everything not committed.

        With `at_least_once` it waits for the commit under way (its offsets may or may
        not be taken). With `exactly_once` nothing of the open transaction may be
        committed any more: the commit under way is given up (it writes nothing to
        RocksDB) and a new producer with the same transactional id ends the open
        transaction (`_renew_async`, beside the event loop; the reader waits for it).
        Aborting with the old producer instead failed for good after a broker restart
        (librdkafka 2.16: `INVALID_TXN_STATE`, fatal), and a producer that lived
        through the restart can wedge its next commit (see `Outbox.renew`).
        """
        commit = self.current
        if commit is not None and not commit.concluded:
            commit.concluded = True
            self.current = None
            if self.outbox.transactional:
                self._abandon_job(commit)
            elif commit.job is not None:
                concurrent.futures.wait([commit.job], WEDGED_AFTER_SECONDS)
                if commit.job.done() and commit.job.exception() is None:
                    self.tables.drop_cut(commit.cut)
                else:
                    self._abandon_job(commit)
        self.inputs.take_applied()
        self.tables.discard()
        self.discard_stats()
        self._reset_counts()
        if self.outbox.transactional:
            self.outbox.drop_held()
            self.outbox.hold()  # nothing begins a transaction on the old producer
            if self.resetting is None:
                self.resets += 1
                self.resetting = asyncio.get_running_loop().create_future()
                self.renewal = asyncio.ensure_future(self._renew_async())

    async def _renew_async(self) -> None:
        # After `abandon`: a new producer ends the open transaction, then records flow again.
        assert self.resetting is not None
        try:
            job = self.outbox.in_thread(self.outbox.renew)
            try:
                producer = await asyncio.wrap_future(job)
            except (Fenced, DeliveryFailed, KafkaException) as error:
                self.fail(f"renew_failed error={error}")
            self.outbox.adopt(producer)
            self.outbox.forget()
            self.outbox.release()
            log.info("transaction_ended reason=partitions_lost resets=%d", self.resets)
        finally:
            self.resetting.set_result(None)
            self.resetting = None

    # -- the steps -------------------------------------------------------------------

    def _cut(self) -> Commit:
        # Step 1, on the event loop between two batches.
        self.tables.log_changes()
        self.publish_stats()
        commit = Commit(
            offsets=self.inputs.take_applied(),
            epochs=self.outbox.take_uncommitted(),
            cut=self.tables.cut(),
        )
        if self.outbox.transactional:
            commit.group = self.inputs.group_metadata()
            self.outbox.hold()
        self.current = commit
        self._reset_counts()
        return commit

    def _work(self, commit: Commit) -> bool:
        """Steps 3-4, blocking (its records are settled); whether the group took the offsets."""
        if self.outbox.transactional:
            self.outbox.commit_transaction(commit.offsets, commit.group)
            taken = True
        else:
            taken = self.inputs.commit_offsets(commit.offsets) if commit.offsets else True
        with commit.lock:
            if not commit.abandoned:
                self.tables.write_cut(commit.cut, delivered_offsets(commit.epochs))
        return taken

    def _conclude(self, commit: Commit) -> bool:
        """On the event loop once the job ended or was given up: True when a reset must follow.

        A delivery refused for good, a fenced producer or any other error stops the
        worker (exit 70); an error that requires aborting the transaction, or a job
        still under way after `WEDGED_AFTER_SECONDS`, resets (`_reset`).
        """
        assert commit.job is not None
        commit.concluded = True
        self.current = None
        if not commit.job.done():
            # Had it just ended after all, the reset is one too many, never wrong.
            self._abandon_job(commit)
            log.warning("commit_wedged seconds=%.0f", time.monotonic() - commit.began)
            return True
        error = commit.job.exception()
        if error is None:
            self.tables.drop_cut(commit.cut)
            if not commit.job.result():
                self.inputs.give_back(commit.offsets)
            if self.outbox.transactional:
                self.outbox.release()
            return False
        if (
            isinstance(error, KafkaException)
            and self.outbox.transactional
            and error.args[0].txn_requires_abort()
        ):
            log.warning("transaction_aborting error=%s", error)
            return True
        if isinstance(error, DeliveryFailed):
            self.fail(f"delivery_failed error={error}")
        if isinstance(error, Fenced):
            self.fail(f"producer_fenced error={error}")
        self.fail(f"commit_failed error={error}")

    def _abandon_job(self, commit: Commit) -> None:
        # Whatever the job does from now on, it writes nothing to RocksDB.
        with commit.lock:
            commit.abandoned = True

    # -- the reset (exactly_once) ------------------------------------------------------

    def _drop_applied(self) -> list[int]:
        # On the event loop: everything applied since the last commit goes, and every
        # partition stops being applied until it is reloaded.
        self.resets += 1
        self.inputs.take_applied()
        self.tables.discard()
        self.outbox.drop_held()
        self.discard_stats()
        for hook in self.on_reset:
            hook()
        self._reset_counts()
        return self.reloader.suspend() if self.reloader is not None else []

    def _reset_blocking(self, partitions: list[int]) -> tuple[Any, list[TopicPartition]]:
        # A new producer (which ends the open transaction, however far it got), and
        # where the suspended partitions' committed offsets are.
        producer = self.outbox.renew()
        return producer, self.inputs.committed_positions(self.inputs.partitions_of(partitions))

    def _reset_done(self, producer: Any, positions: list[TopicPartition]) -> None:
        self.outbox.adopt(producer)
        self.outbox.forget()
        self.outbox.release()  # what the sweep sent meanwhile begins the next transaction
        self.inputs.seek(positions)
        log.info("reset partitions=%d resets=%d", len(positions), self.resets)

    async def _reset_async(self, commit: Commit) -> None:
        """Drop what was applied, renew the producer, reload the tables, read on.

        With `exactly_once`, when a transaction must be aborted or its commit is
        wedged. The new producer's `init_transactions` ends the old transaction:
        aborted, or committed if its commit had reached the broker. Either way
        what Kafka holds is the truth: every suspended partition's tables are
        restored from their changelogs (`read_committed`) past their checkpoints, and
        its inputs are read again from the committed offsets.
        """
        self.resetting = asyncio.get_running_loop().create_future()
        try:
            partitions = self._drop_applied()
            job = self.outbox.in_thread(self._reset_blocking, partitions)
            try:
                producer, positions = await asyncio.wrap_future(job)
            except (Fenced, DeliveryFailed, KafkaException) as error:
                self.fail(f"reset_failed error={error}")
            self._reset_done(producer, positions)
            if self.reloader is not None:
                self.reloader.reload(partitions)
            await asyncio.sleep(RESET_BACKOFF_SECONDS)
        finally:
            self.resetting.set_result(None)
            self.resetting = None

    def _reset_now(self, commit: Commit) -> None:
        # Inside a rebalance callback: the partitions are going, nothing is reloaded.
        self.resets += 1
        self.inputs.take_applied()
        self.tables.discard()
        self.outbox.drop_held()
        self.discard_stats()
        for hook in self.on_reset:
            hook()
        self._reset_counts()
        try:
            producer = self.outbox.renew()
        except (Fenced, DeliveryFailed, KafkaException) as error:
            self.fail(f"reset_failed error={error}")
        self._reset_done(producer, [])

    def _reset_counts(self) -> None:
        self.applied = 0
        self.last = time.monotonic()
