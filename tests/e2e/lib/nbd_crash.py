#!/usr/bin/env python3
"""Crash-consistency client for tests/e2e/nbd_fio.sh (libnbd's Python bindings).

  nbd_crash.py write  SOCK EXPORT STATE SEED   write until the server dies, then save STATE
  nbd_crash.py verify SOCK EXPORT STATE        check every slot, then save what was read
  nbd_crash.py selftest SOCK EXPORT STATE      plant a stale and a garbage slot: verify fails

The export is cut into 4 KiB slots. Every slot a write covers gets a self-describing
pattern: a 16-byte stamp ("TPCR", the write's sequence number, the slot index) repeated
256 times, so a read tells exactly which write a slot holds, or that it holds garbage.
Writes never overlap one in flight (a slot is busy until its write is acknowledged), so the
writes to one slot are totally ordered. TRIMs cover whole 64 KiB pool blocks and count as
writes of zeros.

A write is "covered" when it is FUA and acknowledged, or when it was acknowledged before a
FLUSH was sent (on any connection: the server advertises multi-conn) and that FLUSH
completed. After the crash, a slot must hold the content of its last covered write or of a
later write (acknowledged or not: those may or may not have reached the disk); with no
covered write, the state before this round is allowed too. Anything else is either stale
data (an older write: a lost flushed write) or garbage; both fail.
"""
import contextlib
import io
import json
import os
import random
import struct
import sys
import threading

import nbd

SLOT = 4096
BLOCK = 65536
SLOTS_PER_BLOCK = BLOCK // SLOT
MAGIC = b"TPCR"
CONNS = 4


def pattern(seq, slot):
    return struct.pack(">4sQI", MAGIC, seq, slot) * (SLOT // 16)


def decode(buf, slot):
    """0 for zeros, the write's seq for a stamped slot, None for anything else."""
    if buf.count(0) == SLOT:
        return 0
    magic, seq, s = struct.unpack_from(">4sQI", buf)
    if magic != MAGIC or s != slot or seq == 0 or buf != pattern(seq, slot):
        return None
    return seq


def uri(sock, export):
    return "nbd+unix:///%s?socket=%s" % (export, sock)


def connect(sock, export):
    h = nbd.NBD()
    h.connect_uri(uri(sock, export))
    return h


def load(path, nslots):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"next_seq": 1, "baseline": [0] * nslots}


def save(path, st):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(st, f)
    os.replace(tmp, path)


def write_phase(sock, export, path, seed):
    rng = random.Random(seed)
    handles = [connect(sock, export) for _ in range(CONNS)]
    size = handles[0].get_size()
    assert handles[0].can_multi_conn() and handles[0].can_fua() and handles[0].can_trim()
    nslots = size // SLOT
    st = load(path, nslots)
    lock = threading.Lock()
    busy = [False] * nslots
    ops = []  # [seq, first_slot, count, kind "w"/"t", fua, ack_order or None]
    state = {"next_seq": st["next_seq"], "acks": 0, "covered_upto": 0, "flushes": 0}
    first_flush = threading.Event()

    def pick(r):
        """Reserves a free range; returns the op record (under the lock)."""
        while True:
            if r.random() < 0.12:
                kind = "t"
                b = r.randrange(nslots // SLOTS_PER_BLOCK)
                n = min(r.randint(1, 2), nslots // SLOTS_PER_BLOCK - b) * SLOTS_PER_BLOCK
                first = b * SLOTS_PER_BLOCK
            else:
                kind = "w"
                n = r.choice([1, 1, 2, 3, 8, 16, 17, 32])
                first = r.randrange(nslots - n + 1)
            if any(busy[first:first + n]):
                continue
            for i in range(first, first + n):
                busy[i] = True
            op = [state["next_seq"], first, n, kind, kind == "w" and r.random() < 0.1, None]
            state["next_seq"] += 1
            ops.append(op)
            return op

    def worker(i):
        h = handles[i]
        r = random.Random(seed * 31 + i)
        n = 0
        try:
            while True:
                n += 1
                if n % 8 == 0:
                    with lock:
                        upto = state["acks"]  # every write acknowledged before the FLUSH
                    h.flush()
                    with lock:
                        state["covered_upto"] = max(state["covered_upto"], upto)
                        state["flushes"] += 1
                    first_flush.set()
                    continue
                with lock:
                    op = pick(r)
                seq, first, cnt, kind, fua, _ = op
                if kind == "t":
                    h.trim(cnt * SLOT, first * SLOT)
                else:
                    buf = b"".join(pattern(seq, s) for s in range(first, first + cnt))
                    h.pwrite(buf, first * SLOT, nbd.CMD_FLAG_FUA if fua else 0)
                with lock:
                    op[5] = state["acks"]
                    state["acks"] += 1
                    for s in range(first, first + cnt):
                        busy[s] = False
        except nbd.Error:
            return  # the server is gone

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CONNS)]
    for t in threads:
        t.start()
    # The script kills the server once it sees this line.
    first_flush.wait(30)
    print("flushed", flush=True)
    for t in threads:
        t.join()
    st["round"] = {"ops": ops, "covered_upto": state["covered_upto"]}
    st["next_seq"] = state["next_seq"]
    save(path, st)
    acked = sum(1 for o in ops if o[5] is not None)
    print("wrote %d ops (%d acknowledged, %d flushes, %d covered)" %
          (len(ops), acked, state["flushes"],
           sum(1 for o in ops if o[5] is not None and (o[4] or o[5] < state["covered_upto"]))))


def verify_phase(sock, export, path):
    h = connect(sock, export)
    size = h.get_size()
    nslots = size // SLOT
    st = load(path, nslots)
    rnd = st.get("round", {"ops": [], "covered_upto": 0})
    upto = rnd["covered_upto"]
    # Per slot: its writes in order (seq, value it leaves, covered).
    hist = [[] for _ in range(nslots)]
    for seq, first, cnt, kind, fua, ack in sorted(rnd["ops"]):
        covered = ack is not None and (fua or ack < upto)
        for s in range(first, first + cnt):
            hist[s].append((seq if kind == "w" else 0, covered))
    observed = []
    stale = garbage = checked = 0
    errors = []
    chunk = 4 << 20
    for off in range(0, size, chunk):
        data = h.pread(min(chunk, size - off), off)
        for i in range(len(data) // SLOT):
            s = off // SLOT + i
            got = decode(data[i * SLOT:(i + 1) * SLOT], s)
            observed.append(got if got is not None else -1)
            last = max((j for j, (_, c) in enumerate(hist[s]) if c), default=None)
            allowed = {v for v, _ in hist[s][last if last is not None else 0:]}
            if last is None:
                allowed.add(st["baseline"][s])
            if hist[s] and last is not None:
                checked += 1
            if got in allowed:
                continue
            if got is None:
                garbage += 1
            else:
                stale += 1
            if len(errors) < 10:
                errors.append("slot %d (offset %d): read %s, allowed %s (history %s, baseline %s)"
                              % (s, s * SLOT, "garbage" if got is None else got,
                                 sorted(allowed), hist[s], st["baseline"][s]))
    h.shutdown()
    for e in errors:
        print("  " + e, file=sys.stderr)
    if stale or garbage:
        print("FAIL: %d slots hold stale data, %d hold garbage" % (stale, garbage),
              file=sys.stderr)
        return 1
    st["baseline"] = observed
    st.pop("round", None)
    save(path, st)
    print("verified %d slots (%d with a flushed write this round)" % (nslots, checked))
    return 0


def selftest(sock, export, path):
    """The checker must catch what it is there for: on a copy of the state, a slot whose
    FUA write is replaced by an older stamp (stale) and one that holds garbage."""
    st = load(path, 0)
    h = connect(sock, export)
    a, b = 5, 77
    seq = st["next_seq"]
    st["round"] = {"ops": [[seq, a, 1, "w", True, 0], [seq + 1, b, 1, "w", True, 1]],
                   "covered_upto": 0}
    h.pwrite(pattern(seq - 1, a), a * SLOT, nbd.CMD_FLAG_FUA)
    h.pwrite(pattern(seq + 1, b)[:SLOT - 8] + b"garbage!", b * SLOT, nbd.CMD_FLAG_FUA)
    h.shutdown()
    tmp = path + ".selftest"
    save(tmp, st)
    try:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = verify_phase(sock, export, tmp)
    finally:
        os.unlink(tmp)
    want = "1 slots hold stale data, 1 hold garbage"
    if rc != 1 or want not in err.getvalue():
        print("FAIL: the checker missed a planted error: rc %d, %s" % (rc, err.getvalue()),
              file=sys.stderr)
        return 1
    print("the checker catches a stale slot and a garbage slot")
    return 0


def main():
    mode, sock, export, path = sys.argv[1:5]
    if mode == "write":
        write_phase(sock, export, path, int(sys.argv[5]))
        return 0
    if mode == "verify":
        return verify_phase(sock, export, path)
    if mode == "selftest":
        return selftest(sock, export, path)
    raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    sys.exit(main())
