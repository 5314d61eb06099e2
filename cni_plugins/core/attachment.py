"""The skeleton every plugin that changes the node shares.

ADD: write the record of what the attachment will make *before* touching
the kernel (a crash half-way still leaves DEL and GC what they need), apply
the plan, and on any failure undo from that record, forget it and re-raise
the original error.  DEL: undo from our record (or one rebuilt from the
runtime's prevResult when ours is lost), then forget it.  GC is
RecordStore.collect with the same undo.

An ADD repeated without a DEL between (the spec forbids it; runtimes that
retry do it) must not lose what the first one made, since the new record
takes the old one's place: an interface plugin refuses it before touching
anything (``require_new``), a chained plugin undoes the first one's work
and does it anew (``replace``).
"""
import json

from .errors import LINK_EXISTS, CNIError
from .records import RecordStore


def commit(store: RecordStore, req, record: dict, apply, undo):
    """Record, then ``apply()``; returns what it returns.  On failure
    ``undo(record)`` runs and the record goes, and the error apply raised
    is the one the caller sees (an undo failure is noted on it)."""
    store.save(req.container_id, req.ifname, record)
    try:
        return apply()
    except BaseException as failure:
        try:
            undo(record)
        except Exception as e:  # noqa: BLE001 - the original error matters more
            failure.add_note(f"and undoing it failed too: {type(e).__name__}: {e}")
        store.remove(req.container_id, req.ifname)
        raise


def require_new(store: RecordStore, req, plugin: str) -> None:
    """Refuse (102) an ADD of an attachment we hold a record of: failing
    half-way would undo the container's live interface and release its
    addresses; the runtime owes a DEL first."""
    if store.load(req.container_id, req.ifname) is not None:
        raise CNIError(LINK_EXISTS, f"{plugin}: {req.container_id} already has {req.ifname!r} on network "
                       f"{req.network} (ADD again without DEL)")


def replace(store: RecordStore, req, undo) -> None:
    """Undo what an earlier ADD of this attachment made, from its record."""
    old = store.load(req.container_id, req.ifname)
    if old is not None:
        undo(old)


def release(store: RecordStore, req, undo, fallback=None) -> None:
    """DEL: ``undo`` our record of the attachment (or ``fallback(req)``'s
    reconstruction when we have none; None means nothing to undo), then
    forget it."""
    record = store.load(req.container_id, req.ifname)
    if record is None and fallback is not None:
        record = _unclaimed(store, fallback(req))
    if record is not None:
        undo(record)
    store.remove(req.container_id, req.ifname)


def _unclaimed(store: RecordStore, record: dict | None) -> dict | None:
    """A record rebuilt from prevResult, without the nft elements another
    attachment's record holds: a DEL retried with the runtime's cached
    result after ours is gone names addresses that may be another
    container's by now (set elements of the same value are the same)."""
    if not record or not record.get("nft"):
        return record
    claimed = {json.dumps(e, sort_keys=True) for other in store.all() for e in other.get("nft") or []}
    return {**record, "nft": [e for e in record["nft"] if json.dumps(e, sort_keys=True) not in claimed]}


def store_for(req, kind: str) -> RecordStore:
    """The records of plugin ``kind`` for the request's network."""
    return RecordStore(req.state_dir, kind, req.network)
