"""Replicas that converge: a ``Follower`` keeps one service's in-memory classes in step with a
shared PostgreSQL store (``serve.store_pg``) that other ``imprint serve`` processes write too.

How a replica learns about the others' writes:
  * every committed change has a change number (gapless, in commit order) and sends
    ``NOTIFY imprint_<store id>, '<seq> <class name>'``; the follower LISTENs on its own
    connection and, for each change it has not applied, reads that class's row (outside any
    lock of the service: a hung database never holds up a prediction) and hands it to the
    service with its change number (``Service.apply_committed``), which takes it only if it is newer
    than the state in memory, so memory only moves forward whoever applies first;
  * when it connects (at start, after a lost connection, when a change number is skipped, and
    once a second whatever happens) it reads the change log from the last change it applied:
    a missed notification is never lost. A replica that was away longer than the log keeps
    (``store_pg.KEEP_CHANGES`` changes) compares every class's version instead, and one whose
    database went back in time (a restored backup, a failover that lost the last commits)
    reloads every class.

The bound: a change committed on one replica is in the others' predictions once its
notification arrives and the follower reads the row (milliseconds on a LAN: see
docs/scaling.md), and at most ``poll_seconds`` (1 s) after it even if the notification is lost,
as long as the database can be reached. While it cannot, predictions go on from memory and
writes are refused (503); the follower reconnects every 0.2-1 s and catches up.

A replica's own writes go through the store (the database adds an upload to what it holds,
under the class's row lock) and memory then takes the committed class (``serve.edits``).
"""

from __future__ import annotations

import logging
import threading
import time

from imprinting.serve.contract import StoreError

log = logging.getLogger("imprinting.serve.follow")


class Follower:
    """Applies the changes other replicas commit to ``service``'s classes."""

    def __init__(self, service, store, since: int, poll_seconds: float = 1.0):
        """``since``: the change number the service's classes are as of (``store.snapshot_seq``
        after ``store.classes()``)."""
        self.service, self.store = service, store
        self.applied = since  # every change up to this one is in memory
        self.poll_seconds = poll_seconds
        self.connected = threading.Event()
        self.last_contact = time.monotonic()  # when the database last answered the follower
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imprint-follower", daemon=True)

    def silent_for(self) -> float:
        """Seconds since the database last answered the follower (it asks once a ``poll_seconds``)."""
        return time.monotonic() - self.last_contact

    def start(self) -> Follower:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following (within ``poll_seconds``: the thread wakes up that often)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.poll_seconds + 10)

    # -- the others' writes ------------------------------------------------------------
    def _run(self) -> None:
        import psycopg  # optional: psycopg (pip install 'imprinting[postgres]')

        delay = 0.2
        while not self._stop.is_set():
            try:
                # the store's pool has keepalives and session timeouts; so has this connection, so
                # that a hung or vanished database cannot hold the follower (or close()) for long
                with psycopg.connect(self.store.url, autocommit=True, connect_timeout=5,
                                     application_name="imprint serve follower", keepalives=1, keepalives_idle=5,
                                     keepalives_interval=2, keepalives_count=3, tcp_user_timeout=10_000,
                                     options="-c statement_timeout=5000") as conn:
                    conn.execute(f'LISTEN "{self.store.channel}"')
                    self.catch_up()  # after LISTEN: a change committed meanwhile is in the log or notified
                    self.connected.set()
                    delay = 0.2
                    while not self._stop.is_set():
                        self._listen(conn)
                        seq = conn.execute("SELECT seq FROM imprint_clock").fetchone()[0]
                        self.last_contact = time.monotonic()
                        if seq > self.applied:
                            self.catch_up()  # a notification was missed: the log has it
                        elif seq < self.applied:
                            self.reload()  # the database went back in time
            except Exception as exc:  # noqa: BLE001  (the thread must go on following, whatever happened)
                if self._stop.is_set():
                    break
                if not isinstance(exc, (psycopg.Error, StoreError)):
                    log.exception("the follower failed; it starts again from the change log")
                elif self.connected.is_set():
                    log.warning("lost the store (%s); predictions go on from memory, reconnecting", exc)
                self.connected.clear()
                self._stop.wait(delay)
                delay = min(2 * delay, 1.0)
        self.connected.clear()

    def _listen(self, conn) -> None:
        """Apply notifications for up to ``poll_seconds``."""
        for note in conn.notifies(timeout=self.poll_seconds):
            seq_text, _, name = note.payload.partition(" ")
            seq = int(seq_text)
            if seq <= self.applied:
                continue  # already read from the log
            if seq != self.applied + 1:
                self.catch_up()  # one was skipped: read them in order from the log
                continue
            if self._refresh(name, seq):  # another replica's change: the calibration's examples again
                self.service.follow_calibration()
            self.applied = seq
            if self._stop.is_set():
                return

    def catch_up(self) -> None:
        """Apply every change after ``applied``, from the change log (or from every class's
        version when the log no longer reaches back that far)."""
        while True:
            rows = self.store.changes_since(self.applied)
            if not rows:
                if self.store.sequence() > self.applied:
                    self._resync()  # the log was trimmed past us
                return
            if rows[0][0] != self.applied + 1:
                self._resync()
                return
            changed = False
            for seq, name in rows:
                changed |= self._refresh(name, seq)
                self.applied = seq
            if changed:  # the calibration's examples: the store's of now
                self.service.follow_calibration()

    def _resync(self) -> None:
        """Compare every class's version with memory: refresh what changed, drop what is gone."""
        seq, versions = self.store.versions()
        for name, version in versions.items():
            if version > self.applied:
                self._refresh(name, version)
        stale = [n for n in self.service.stored_names() if n not in versions]
        self.service.apply_committed([(name, None, seq) for name in stale])
        self.service.follow_calibration()
        self.applied = max(self.applied, seq)
        log.warning("caught up from every class's version (the change log did not reach back far enough)")

    def reload(self) -> None:
        """Make every class in memory what the store holds now, under the lock: for a database
        that went back in time (restored from a backup, or a failover to a standby that had not
        received the last commits), whose change numbers are behind the ones applied here."""
        stored = self.store.classes()  # read outside the service's lock
        self.service.replace_stored(stored, {c.name: c.version for c in stored})
        self.service.follow_calibration()
        self.applied = self.store.snapshot_seq
        log.warning("the store's change number went back: reloaded every class (now at change %d)", self.applied)

    def _refresh(self, name: str, seq: int) -> bool:
        """Make class ``name`` in memory what the store holds now, unless memory already has
        change ``seq`` of it. The row is read without the service's lock; the service takes it
        only if it is newer than memory (a class that is gone: as of change ``seq``)."""
        if self.service.version_of(name) >= seq:
            return False  # e.g. this replica's own write, already in memory
        stored = self.store.get_class(name)
        self.service.apply_committed([(name, stored, stored.version if stored is not None else seq)])
        return True
