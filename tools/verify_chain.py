#!/usr/bin/env python3
"""tools/verify_chain.py DB -- an independent check of a genaudit SQLite
store's hash chains, written from the canonical encoding (csrc/ga_chain.c's
header comment, README "Tamper evidence"), not from genaudit's code:

  E = "genaudit-record/1\\n" || F(field 1) || ... || F(field n)
  F = name "=" ("~" if NULL | decimal byte length ":" bytes) "\\n"
  record_hash = lower-case hex SHA-256(E)

A payload field (prompts, content, drafts) enters as the 64 hex digits of
its own SHA-256 under the name "<field>.sha256" (the row's <field>_sha256
column, which must match the payload while the payload is there).

Checks, chain by chain (chain_id order), row by row (chain_seq order): the
positions run 1, 2, 3, ... without gaps or repeats; prev_hash is the previous
row's record_hash (64 zeros for the first); each payload matches its digest
(a payload may be missing only on a purged row, which must name a recorded
purge whose cutoff is after its created_at); record_hash is the hash of
the row. Then: every chain a row names is registered in `chains`, every
registered chain has rows, and the rows without a seal are exactly as many as
migration 0008 counted (chain_genesis.legacy_rows).

Prints "ok N" (N rows) and exits 0, or prints "bad ID: WHAT" (ID "-" when no
row can be named) for the first problem and exits 1. Exit 2: cannot read.
Python 3 standard library only.
"""
import hashlib
import sqlite3
import sys

MAGIC = b"genaudit-record/1\n"
FIELDS = ["id", "chain_id", "chain_seq", "prev_hash", "created_at", "org_id", "user_id", "platform",
          "template_id", "template_version", "status", "error", "replay_of", "request_params",
          "token_metrics", "performance_metrics", "repair_metrics"]
PAYLOADS = ["final_system_prompt", "final_user_prompt", "content", "drafts"]
ZERO = "0" * 64


def as_bytes(v):
    """A column's value as the bytes the encoding takes (None stays None)."""
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, int):
        return str(v).encode()
    if isinstance(v, float):  # not a column genaudit writes as REAL; keep it visible
        return repr(v).encode()
    return str(v).encode()


def field(name, value):
    if value is None:
        return name.encode() + b"=~\n"
    return name.encode() + b"=" + str(len(value)).encode() + b":" + value + b"\n"


def record_hash(row):
    """row: column name -> bytes or None (payloads as their digests' hex)."""
    enc = [MAGIC]
    for name in FIELDS:
        enc.append(field(name, row[name]))
    for name in PAYLOADS:
        enc.append(field(name + ".sha256", row[name + "_sha256"]))
    return hashlib.sha256(b"".join(enc)).hexdigest()


def check_row(r, purges):
    """What is wrong with one sealed row's payloads and hash, or None."""
    if r["purged_at"] is not None or r["purged_by"] is not None:
        cutoff = purges.get(r["purged_by"])
        created = r["created_at"].decode() if isinstance(r["created_at"], bytes) else r["created_at"]
        if r["purged_at"] is None or cutoff is None or not cutoff > created:
            return "purged outside a recorded purge"
        for p in PAYLOADS:
            if r[p] is not None:
                return "purged, but %s is still there" % p
    row = {name: as_bytes(r[name]) for name in FIELDS}
    for p in PAYLOADS:
        payload, digest = as_bytes(r[p]), as_bytes(r[p + "_sha256"])
        if payload is not None:
            if digest is None:
                return p + " has no digest"
            if hashlib.sha256(payload).hexdigest().encode() != digest:
                return p + " does not match its digest"
        elif digest is not None and r["purged_at"] is None:
            return p + " is missing without a purge"
        row[p + "_sha256"] = digest
    if record_hash(row) != (r["record_hash"].decode() if isinstance(r["record_hash"], bytes) else r["record_hash"]):
        return "record hash does not match the row"
    return None


def verify(path):
    db = sqlite3.connect("file:" + path + "?mode=ro", uri=True)
    db.text_factory = bytes  # the bytes as stored: NUL bytes, any encoding
    db.row_factory = sqlite3.Row
    cols = ", ".join(FIELDS + PAYLOADS + [p + "_sha256" for p in PAYLOADS] + ["record_hash", "purged_at",
                                                                               "purged_by"])
    text = lambda v: v.decode() if isinstance(v, bytes) else v
    # each recorded purge's cutoff: a purged row must name one later than it
    purges = {r[0]: text(r[1]) for r in db.execute("SELECT purge_id, older_than FROM purges")}
    registered = {text(r[0]) for r in db.execute("SELECT chain_id FROM chains")}
    named = {text(r[0]) for r in db.execute(
        "SELECT DISTINCT chain_id FROM generation_snapshots WHERE chain_id IS NOT NULL")}
    rows = 0
    for cid in sorted(registered | named):
        if cid not in registered:
            return rows, "-", "chain %s is not registered" % cid
        expect_seq, expect_prev, n = 1, ZERO, 0
        for r in db.execute("SELECT " + cols + " FROM generation_snapshots WHERE chain_id = ? ORDER BY chain_seq",
                            (cid,)):
            rows, n = rows + 1, n + 1
            rid, seq = text(r["id"]), r["chain_seq"]
            if not isinstance(seq, int):
                return rows, rid, "chain_seq is not an integer"
            if seq > expect_seq:
                return rows, rid, "rows missing before this one (positions %d to %d of chain %s)" % (
                    expect_seq, seq - 1, cid)
            if seq < expect_seq:
                return rows, rid, "position %d of chain %s repeated" % (seq, cid)
            if text(r["prev_hash"]) != expect_prev:
                return rows, rid, "prev_hash does not link to the row before it"
            bad = check_row(r, purges)
            if bad:
                return rows, rid, bad
            expect_seq, expect_prev = seq + 1, text(r["record_hash"])
        if n == 0:
            return rows, "-", "chain %s has no rows" % cid
    legacy = db.execute("SELECT count(*) FROM generation_snapshots WHERE chain_id IS NULL").fetchone()[0]
    genesis = db.execute("SELECT legacy_rows FROM chain_genesis").fetchone()
    expected = genesis[0] if genesis else 0
    rows += legacy
    if legacy != expected:
        return rows, "-", "%d rows without a seal, where %d were there when the chain began" % (legacy, expected)
    return rows, None, None


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: verify_chain.py DB\n")
        return 2
    try:
        rows, rid, what = verify(argv[1])
    except sqlite3.Error as e:
        sys.stderr.write("verify_chain.py: %s\n" % e)
        return 2
    if rid is None:
        print("ok %d" % rows)
        return 0
    print("bad %s: %s" % (rid, what))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
