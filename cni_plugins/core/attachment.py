"""The skeleton every plugin that changes the node shares.

ADD: write the record of what the attachment will make *before* touching
the kernel (a crash half-way still leaves DEL and GC what they need), apply
the plan, and on any failure undo from that record, forget it and re-raise
the original error.  DEL: undo from our record (or one rebuilt from the
runtime's prevResult when ours is lost), then forget it.  GC is
RecordStore.collect with the same undo.
"""
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


def release(store: RecordStore, req, undo, fallback=None) -> None:
    """DEL: ``undo`` our record of the attachment (or ``fallback(req)``'s
    reconstruction when we have none; None means nothing to undo), then
    forget it."""
    record = store.load(req.container_id, req.ifname)
    if record is None and fallback is not None:
        record = fallback(req)
    if record is not None:
        undo(record)
    store.remove(req.container_id, req.ifname)


def store_for(req, kind: str) -> RecordStore:
    """The records of plugin ``kind`` for the request's network."""
    return RecordStore(req.state_dir, kind, req.network)
