"""Recordings: every message of a run in one SQLite file, written off the caller's thread
(stdlib only; the agent and the observer both use it).

`Recorder` takes messages from a bounded queue on its own daemon thread and inserts them in
batches into a SQLite database in WAL mode, committing at least every `commit_interval`
seconds (0.5 s), so a process killed with SIGKILL loses at most about a second. Anything that
goes wrong with the file (an unwritable path, a full disk, a file that is not a recording)
stops the recording with ONE warning; `submit` never blocks and never raises.

Size: the periodic kinds (metrics, stats, gpu, heartbeat) are thinned as they age, per
stream (kind, run, rank, restart): the newest `recent` rows are all kept; older rows are kept
at a stride that doubles with age (every 2nd, then every 4th, every 8th, …), each tier
holding about `recent` rows, so a stream of T rows keeps about recent × (1 + log2(T / recent))
rows (the scheme is `symwatch.core.downsample`'s, which the viewer's in-memory history shares).
`event` and `goodbye` rows are never thinned; a `meta` is stored when it first arrives
and whenever it differs from the last one of its stream (the identical periodic re-sends for
late viewers are not stored again). See docs/recording.md.

`RecordingReader` iterates the stored messages in order, each one re-validated with
`protocol.decode` (a file is untrusted input like a socket): rows that fail are counted in
`garbage`, never raised.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import sys
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterator

from symwatch.core import protocol
from symwatch.core.downsample import Downsample
from symwatch.core.protocol import Message

FORMAT = "symwatch-recording"
FORMAT_VERSION = 1

THINNED_KINDS = (protocol.METRICS, protocol.STATS, protocol.GPU, protocol.HEARTBEAT)
# Rare, small and irreplaceable: when the queue is full of samples these still get in, into a
# reserve that samples cannot use (a lost transition or goodbye cannot be recomputed; a lost
# sample is one point of a series that has thousands).
PRIORITY_KINDS = (protocol.EVENT, protocol.GOODBYE, protocol.META)
PRIORITY_RESERVE_ITEMS = 1_000
PRIORITY_RESERVE_BYTES = 4 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,      -- arrival order
    kind TEXT NOT NULL, run TEXT NOT NULL, rank INTEGER NOT NULL, restart INTEGER NOT NULL,
    seq INTEGER NOT NULL, time REAL NOT NULL, step INTEGER NOT NULL,
    lost INTEGER NOT NULL DEFAULT 0,   -- messages of the stream lost before this one (gaps)
    kidx INTEGER NOT NULL DEFAULT 0,   -- index of this row within its stream and kind
    body TEXT NOT NULL           -- the JSON body frame as it was (or would be) on the wire
);
CREATE INDEX IF NOT EXISTS messages_stream ON messages (kind, run, rank, restart, kidx);
"""

Warn = Callable[[str], None]


class RecordingError(ValueError):
    """A file that cannot be read as a symwatch recording."""


def _default_warn(text: str) -> None:
    try:
        print(f"symwatch: {text}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - a warning must never become the failure
        pass


# A queued item: the header and the body frame, or a decoded Message (encoded by the writer).
_Item = tuple[str, str, int, int, int, float, int, bytes] | Message


class Recorder:
    """Writes messages to a SQLite recording on its own daemon thread (see the module
    docstring). `submit` / `submit_message` are the only calls made from other threads; both
    are a non-blocking queue put."""

    def __init__(self, path: str | os.PathLike[str], *, queue_size: int = 10_000,
                 max_queue_bytes: int = 64 * 1024 * 1024,
                 commit_interval: float = 0.5, batch: int = 500,
                 downsample: Downsample | None = Downsample(), warn: Warn | None = None) -> None:
        self.path = os.fspath(path)
        self.commit_interval = commit_interval
        self.batch = batch
        self.downsample = downsample
        self.dropped = 0  # messages refused because the queue was full (or after a failure)
        self.written = 0  # rows inserted and committed
        self.skipped = 0  # meta re-sends identical to the stored one, not written again
        self.thinned = 0  # rows deleted by downsampling
        self.failed: str | None = None  # why recording stopped, if it did
        self._warn = warn or _default_warn
        self._queue_size = queue_size  # for ordinary messages; priority ones may go beyond
        self._queue: queue.Queue[_Item | None] = queue.Queue(queue_size + PRIORITY_RESERVE_ITEMS)
        # Encoded bodies waiting in the queue, bounded too: 10,000 samples of a large model
        # would otherwise be gigabytes.
        self._max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._thread: threading.Thread | None = None
        # Writer-thread state.
        self._last_seq: dict[tuple[str, int, int], int] = {}
        self._kidx: dict[tuple[str, str, int, int], int] = {}
        self._since_thin: dict[tuple[str, str, int, int], int] = {}
        self._last_meta: dict[tuple[str, int, int], str] = {}
        self._pending_lost: dict[tuple[str, int, int], int] = {}

    # -- any thread ----------------------------------------------------------------------------

    def start(self) -> Recorder:
        """Start the writer thread (it opens the file; a failure is warned about there)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="symwatch-recorder",
                                            daemon=True)
            self._thread.start()
        return self

    def wait_open(self, timeout: float = 5.0) -> bool:
        """True once the file is open and ready (False if it failed or took too long)."""
        return self._opened.wait(timeout) and self.failed is None

    def submit(self, kind: str, run: str, rank: int, restart: int, seq: int, time_: float,
               step: int, body: bytes) -> bool:
        """Queue one encoded message; never blocks, never raises. False if not queued."""
        size = len(body)
        priority = kind in PRIORITY_KINDS
        limit = self._max_queue_bytes + (PRIORITY_RESERVE_BYTES if priority else 0)
        with self._bytes_lock:
            if self._queued_bytes + size > limit:
                self.dropped += 1
                return False
            self._queued_bytes += size
        if self._put((kind, run, rank, restart, seq, time_, step, body), priority):
            return True
        self._unqueue(size)
        return False

    def _unqueue(self, size: int) -> None:
        with self._bytes_lock:
            self._queued_bytes -= size

    def submit_message(self, msg: Message) -> bool:
        """Queue a decoded message (the writer thread encodes its body)."""
        return self._put(msg, msg.kind in PRIORITY_KINDS)

    def _put(self, item: _Item, priority: bool = False) -> bool:
        if self.failed is not None or self._stop.is_set():
            self.dropped += 1
            return False
        if not priority and self._queue.qsize() >= self._queue_size:
            self.dropped += 1  # the rest of the queue is the priority kinds' reserve
            return False
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued, commit, close the file. Waits at most `timeout` seconds."""
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread ---------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = f"{what}: {type(exc).__name__}: {exc}"
            self._warn(f"cannot write {self.path} ({self.failed}); recording stopped")
        # Empty the queue so memory is released; later submits are refused at once.
        try:
            while True:
                item = self._queue.get_nowait()
                if item is not None:
                    self.dropped += 1
                    if not isinstance(item, Message):
                        self._unqueue(len(item[7]))
        except queue.Empty:
            pass

    def _run(self) -> None:
        try:
            db = _open_for_writing(self.path)
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error, OSError, a foreign file
            self._fail("cannot open", exc)
            self._opened.set()
            return
        self._opened.set()
        try:
            self._loop(db)
        except Exception as exc:  # noqa: BLE001 - disk full, I/O error, anything: stop once
            self._fail("cannot write", exc)
        finally:
            try:
                db.close()
            except Exception:  # noqa: BLE001
                pass

    def _loop(self, db: sqlite3.Connection) -> None:
        rows: list[tuple[Any, ...]] = []
        first_at = 0.0  # when the oldest uncommitted row arrived
        while True:
            wait = (self.commit_interval - (time.monotonic() - first_at)) if rows else 0.25
            try:
                item = self._queue.get(timeout=max(0.0, wait))
            except queue.Empty:
                item = None
            while item is not None:
                if not rows:
                    first_at = time.monotonic()
                self._add(db, item, rows)
                if len(rows) >= self.batch:
                    break
                try:  # take what else is queued now, up to one batch, without waiting
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            stopping = self._stop.is_set()
            if rows and (stopping or len(rows) >= self.batch
                         or time.monotonic() - first_at >= self.commit_interval):
                self._write(db, rows)
                rows = []
            if stopping and self._queue.empty() and not rows:
                return

    def _add(self, db: sqlite3.Connection, item: _Item, rows: list[tuple[Any, ...]]) -> None:
        if isinstance(item, Message):
            try:
                _, body = protocol.encode(item.kind, run=item.run, rank=item.rank,
                                          restart=item.restart, seq=item.seq, time=item.time,
                                          step=item.step, payload=item.payload)
            except protocol.ProtocolError:
                self.dropped += 1
                return
            kind, run, rank, restart, seq, t, step = (item.kind, item.run, item.rank,
                                                      item.restart, item.seq, item.time,
                                                      item.step)
        else:
            kind, run, rank, restart, seq, t, step, body = item
            self._unqueue(len(body))
        stream = (kind, run, rank, restart)
        pub = (run, rank, restart)
        # Gaps are counted over all kinds of a publisher, as on the wire.
        last = self._last_seq.get(pub)
        if isinstance(item, Message) and item.snapshot_seq is not None:
            # From a late viewer's history snapshot (a thinned selection): its gaps are not
            # losses; live messages continue from the snapshot's end.
            lost = 0
            self._last_seq[pub] = max(item.snapshot_seq, last if last is not None else -1)
        else:
            lost = seq - last - 1 if last is not None and seq > last + 1 else 0
            if last is None or seq > last:
                self._last_seq[pub] = seq
        text = body.decode("utf-8", errors="replace")
        if kind == protocol.META:
            # The periodic re-send for late viewers is stored only when something changed.
            content = _meta_content(text)
            if self._last_meta.get(pub) == content:
                self.skipped += 1
                self._carry_lost(pub, lost)
                return
            self._last_meta[pub] = content
        lost += self._pending_lost.pop(pub, 0)
        kidx = self._next_kidx(db, stream)
        rows.append((kind, run, rank, restart, seq, t, step, lost, kidx, text))

    def _carry_lost(self, pub: tuple[str, int, int], lost: int) -> None:
        if lost:  # a gap before an unstored meta re-send belongs to the next stored row
            self._pending_lost[pub] = self._pending_lost.get(pub, 0) + lost

    def _next_kidx(self, db: sqlite3.Connection, stream: tuple[str, str, int, int]) -> int:
        kidx = self._kidx.get(stream)
        if kidx is None:  # appending to an existing file: continue its numbering
            row = db.execute("SELECT MAX(kidx) FROM messages WHERE kind=? AND run=? AND rank=? "
                             "AND restart=?", stream).fetchone()
            kidx = (row[0] + 1) if row and row[0] is not None else 0
        self._kidx[stream] = kidx + 1
        return kidx

    def _write(self, db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        with db:  # one transaction: commits, or rolls back and raises
            db.executemany("INSERT INTO messages (kind, run, rank, restart, seq, time, step, "
                           "lost, kidx, body) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            self.written += len(rows)
            if self.downsample is not None:
                self._thin(db, rows)

    def _thin(self, db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        assert self.downsample is not None
        every = self.downsample.every_rows or max(1, self.downsample.recent // 2)
        for row in rows:
            stream = (row[0], row[1], row[2], row[3])
            if row[0] not in THINNED_KINDS:
                continue
            self._since_thin[stream] = self._since_thin.get(stream, 0) + 1
        for stream, count in list(self._since_thin.items()):
            if count < every:
                continue
            self._since_thin[stream] = 0
            newest = self._kidx[stream] - 1
            for low, high, stride in self.downsample.ranges(newest):
                where = ("WHERE kind=? AND run=? AND rank=? AND restart=? AND kidx>? AND "
                         "kidx<=? AND kidx % ? != 0")
                args = (*stream, low, high, stride)
                # A real loss recorded on a row about to go moves to the publisher's next
                # row, so a replay still shows it (thinning itself is not a loss).
                losses = db.execute(f"SELECT id, lost FROM messages {where} AND lost > 0",
                                    args).fetchall()
                cur = db.execute(f"DELETE FROM messages {where}", args)
                self.thinned += max(cur.rowcount, 0)
                for row_id, lost in losses:
                    db.execute("UPDATE messages SET lost = lost + ? WHERE id = (SELECT MIN(id) "
                               "FROM messages WHERE run=? AND rank=? AND restart=? AND id>?)",
                               (lost, stream[1], stream[2], stream[3], row_id))


def _meta_content(body: str) -> str:
    """A meta body without its header, to tell a re-send from a change."""
    try:
        obj = json.loads(body)
        for key in protocol.HEADER_FIELDS:
            obj.pop(key, None)
        return json.dumps(obj, sort_keys=True)
    except (ValueError, AttributeError, TypeError, RecursionError):
        return body


def _open_for_writing(path: str) -> sqlite3.Connection:
    # Implicit transactions (the default): `with db` commits a batch, or rolls it back.
    db = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "info" not in tables:  # never write into somebody else's database
            raise RecordingError(f"{path} is a SQLite file but not a symwatch recording")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses no commit
        db.executescript(_SCHEMA)
        info = dict(db.execute("SELECT key, value FROM info").fetchall())
        if not info:
            with db:
                db.executemany("INSERT INTO info (key, value) VALUES (?, ?)",
                               [("format", FORMAT), ("version", str(FORMAT_VERSION)),
                                ("created", repr(time.time()))])
        elif info.get("format") != FORMAT:
            raise RecordingError(f"{path} is a SQLite file but not a symwatch recording")
    except BaseException:
        db.close()
        raise
    return db


# ---------------------------------------------------------------------------------------------
# Reading.

class RecordingReader:
    """The messages of a recording, in the order they were recorded, each re-validated with
    `protocol.decode`. Rows that fail are counted in `garbage` (and `last_error`), not raised.

    `renumber` (default True) rewrites each message's `seq` so that rows removed by
    downsampling (or meta re-sends not stored) leave no gap, while real losses (recorded in
    the file as gaps) still do: a replay shows the drops the run had, not the thinning."""

    def __init__(self, path: str | os.PathLike[str], *, renumber: bool = True,
                 chunk: int = 1000) -> None:
        self.path = os.fspath(path)
        self.renumber = renumber
        self.chunk = chunk
        self.garbage = 0
        self.last_error: str | None = None
        if not os.path.isfile(self.path):
            raise RecordingError(f"{self.path}: no such recording")
        self._db = _open_for_reading(self.path)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def __iter__(self) -> Iterator[Message]:
        return self.messages()

    def messages(self, kinds: tuple[str, ...] | None = None) -> Iterator[Message]:
        query = "SELECT kind, lost, body FROM messages"
        args: tuple[Any, ...] = ()
        if kinds:
            query += f" WHERE kind IN ({','.join('?' * len(kinds))})"
            args = tuple(kinds)
        cur = self._db.execute(query + " ORDER BY id", args)
        seqs: dict[tuple[str, int, int], int] = {}
        while True:
            try:
                rows = cur.fetchmany(self.chunk)
            except sqlite3.Error as exc:  # a damaged file: stop where it stops being readable
                self._bad(f"cannot read further: {exc}")
                return
            if not rows:
                return
            for kind, lost, body in rows:
                msg = self._decode(kind, body)
                if msg is None:
                    continue
                if self.renumber:
                    key = (msg.run, msg.rank, msg.restart)
                    gap = lost if type(lost) is int and 0 <= lost < 2 ** 31 else 0
                    seq = seqs[key] + 1 + gap if key in seqs else msg.seq
                    seqs[key] = seq
                    if seq != msg.seq:
                        msg = replace(msg, seq=seq)
                yield msg

    def _decode(self, kind: Any, body: Any) -> Message | None:
        try:
            if isinstance(body, str):
                body = body.encode("utf-8")
            if not isinstance(kind, str) or not isinstance(body, bytes):
                raise protocol.ProtocolError("row is not a (kind, body) of text")
            return protocol.decode([kind.encode("ascii"), body])
        except (protocol.ProtocolError, UnicodeError) as exc:
            self._bad(str(exc))
        except Exception as exc:  # noqa: BLE001 - a file is untrusted input; never crash
            self._bad(f"{type(exc).__name__}: {exc}")
        return None

    def _bad(self, error: str) -> None:
        self.garbage += 1
        self.last_error = error[:300]

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_for_reading(path: str) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "messages" not in tables or "info" not in tables:
                raise RecordingError(f"{path} is not a symwatch recording")
            info = dict(db.execute("SELECT key, value FROM info").fetchall())
            if info.get("format") != FORMAT:
                raise RecordingError(f"{path} is not a symwatch recording")
            if info.get("version") != str(FORMAT_VERSION):
                raise RecordingError(f"{path}: recording format {info.get('version')!r} is not "
                                     f"{FORMAT_VERSION}; upgrade symwatch")
            db.execute("SELECT kind, lost, body FROM messages LIMIT 1").fetchall()
        except BaseException:
            db.close()
            raise
    except sqlite3.Error as exc:
        raise RecordingError(f"{path}: cannot read as a recording: {exc}") from None
    return db
