#!/usr/bin/env python3
"""Concurrency stress for `thinpool serve` (driven by tests/e2e/nbd_stress.sh).

NBD clients (libnbd's python bindings), several connections per export (multi-conn), each
owning a disjoint region of its volume: tagged writes at 4 KiB-aligned offsets (some FUA),
write-zeroes, trims of whole blocks, flushes, and reads that verify against the client's
own model. Meanwhile a control
loop runs the `thinpool` CLI against the pool (it goes through the daemon's control
socket): snapshots of both exported volumes, a merge of a non-exported writable snapshot
into a non-exported volume (checked by reading it back), removes, and filling the pool to
`full` with another volume, then freeing it.

Asserts: no verification error; no request or command takes longer than --bound seconds
(a watchdog; a hang fails the run); no write to the guaranteed volume ever fails; a write
to the thin volume fails only with ENOSPC and only while the pool is being filled (the
request overlaps the window from the start of the fill to the end of the remove that
frees it). Prints the number of requests and control operations.
"""

import argparse
import errno
import json
import os
import random
import subprocess
import sys
import threading
import time

import nbd

B = 65536  # pool block size (the script creates the pool with the default 64 KiB)
PAGE = 4096


class Failure(Exception):
    pass


class Shared:
    def __init__(self):
        self.lock = threading.Lock()
        self.errors = []
        self.stop = threading.Event()
        # Fill windows: [start, end]; end is None while the fill is in progress.
        self.fill_windows = []
        self.busy = {}  # name -> (what, start time) of the request in progress

    def error(self, msg):
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(msg)
        self.stop.set()

    def enospc_allowed(self, t0, t1):
        with self.lock:
            for s, e in self.fill_windows:
                if t1 >= s and (e is None or t0 <= e):
                    return True
        return False

    def begin(self, who, what):
        with self.lock:
            self.busy[who] = (what, time.monotonic())

    def end(self, who):
        with self.lock:
            self.busy.pop(who, None)


class Client(threading.Thread):
    """One NBD connection owning [base, base+size) of an export."""

    def __init__(self, sh, idx, uri, export, base, size, guaranteed, seed):
        super().__init__(name="client%d" % idx, daemon=True)
        self.sh, self.idx, self.export = sh, idx, export
        self.uri, self.base, self.size, self.guaranteed = uri, base, size, guaranteed
        self.rng = random.Random(seed)
        self.model = bytearray(size)  # what the region holds (known blocks)
        self.unknown = set()  # blocks (region-relative) whose content a failed write left open
        self.requests = 0
        self.enospc = 0
        self.seq = 0

    def call(self, what, fn, *args):
        self.sh.begin(self.name, what)
        t0 = time.monotonic()
        try:
            return fn(*args), t0
        finally:
            self.sh.end(self.name)
            self.requests += 1

    def pattern(self, off, n):
        self.seq += 1
        head = ("c%d s%d o%d;" % (self.idx, self.seq, off)).encode()
        reps = n // len(head) + 1
        return (head * reps)[:n]

    def blocks(self, off, n):
        return range(off // B, (off + n - 1) // B + 1)

    def refused(self, e, what, off, n, t0):
        """A write-like request failed: only ENOSPC, only on the thin volume, only in a fill."""
        t1 = time.monotonic()
        if e.errnum != errno.ENOSPC:
            raise Failure("%s: %s %d+%d: %s" % (self.name, what, off, n, e))
        if self.guaranteed:
            raise Failure("%s: %s to the guaranteed volume refused (ENOSPC) at %d+%d"
                          % (self.name, what, off, n))
        if not self.sh.enospc_allowed(t0, t1):
            raise Failure("%s: %s got ENOSPC outside a fill of the pool at %d+%d"
                          % (self.name, what, off, n))
        self.enospc += 1
        self.unknown.update(self.blocks(off, n))

    def written(self, off, data):
        n = len(data)
        self.model[off:off + n] = data
        for b in self.blocks(off, n):
            if b * B >= off and (b + 1) * B <= off + n:
                self.unknown.discard(b)

    def do_write(self, h):
        n = self.rng.choice([PAGE, 3 * PAGE, B, B + PAGE, 2 * B, 4 * B])
        n = min(n, self.size)
        off = self.rng.randrange(0, (self.size - n) // PAGE + 1) * PAGE
        data = self.pattern(off, n)
        flags = nbd.CMD_FLAG_FUA if self.rng.random() < 0.1 else 0
        t0 = time.monotonic()
        try:
            self.call("pwrite %d+%d" % (off, n), h.pwrite, data, self.base + off, flags)
        except nbd.Error as e:
            self.refused(e, "write", off, n, t0)
            return
        self.written(off, data)

    def do_zero(self, h):
        # WRITE_ZEROES without NO_HOLE: whole blocks are unmapped, partial ones written.
        n = self.rng.choice([PAGE, B, 2 * B + PAGE])
        off = self.rng.randrange(0, (self.size - n) // PAGE + 1) * PAGE
        t0 = time.monotonic()
        try:
            self.call("zero %d+%d" % (off, n), h.zero, n, self.base + off)
        except nbd.Error as e:
            self.refused(e, "write-zeroes", off, n, t0)
            return
        self.written(off, bytes(n))

    def do_trim(self, h):
        nb = self.rng.randint(1, 3)
        first = self.rng.randrange(0, self.size // B - nb + 1)
        self.call("trim", h.trim, nb * B, self.base + first * B)
        self.model[first * B:(first + nb) * B] = bytes(nb * B)
        for b in range(first, first + nb):
            self.unknown.discard(b)

    def verify(self, h, off, n):
        got, _ = self.call("pread %d+%d" % (off, n), h.pread, n, self.base + off)
        for b in self.blocks(off, n):
            if b in self.unknown:
                continue
            lo, hi = max(off, b * B), min(off + n, (b + 1) * B)
            if got[lo - off:hi - off] != self.model[lo:hi]:
                i = next(i for i in range(lo, hi) if got[i - off] != self.model[i])
                raise Failure("%s: %s byte %d reads %r, wrote %r" % (
                    self.name, self.export, self.base + i, got[i - off:i - off + 24],
                    bytes(self.model[i:i + 24])))

    def run(self):
        h = None
        try:
            h = nbd.NBD()
            self.call("connect", h.connect_uri, self.uri)
            if not h.can_multi_conn():
                raise Failure("%s: server does not offer multi-conn" % self.name)
            while not self.sh.stop.is_set():
                r = self.rng.random()
                if r < 0.5:
                    self.do_write(h)
                elif r < 0.55:
                    self.do_zero(h)
                elif r < 0.65:
                    self.do_trim(h)
                elif r < 0.72:
                    self.call("flush", h.flush)
                else:
                    n = self.rng.choice([PAGE, B, 3 * B])
                    off = self.rng.randrange(0, (self.size - n) // PAGE + 1) * PAGE
                    self.verify(h, off, n)
            self.call("flush", h.flush)
            for off in range(0, self.size, 4 * B):
                self.verify(h, off, min(4 * B, self.size - off))
            self.call("shutdown", h.shutdown)
        except Failure as e:
            self.sh.error(str(e))
        except Exception as e:  # nbd.Error and anything unexpected
            self.sh.error("%s: %s: %s" % (self.name, type(e).__name__, e))


class Control(threading.Thread):
    """Runs the thinpool CLI against the served pool."""

    def __init__(self, sh, args):
        super().__init__(name="control", daemon=True)
        self.sh, self.args = sh, args
        self.ops = {}
        self.states = {}  # pool state right after each fill
        self.rng = random.Random(7)
        self.tmp = args.tmp

    def tp(self, *argv, ok=True, allow=()):
        what = "thinpool " + " ".join(argv)
        self.sh.begin(self.name, what)
        try:
            r = subprocess.run([self.args.thinpool, "-p", self.args.pool] + list(argv),
                               capture_output=True, text=True, timeout=self.args.bound)
        except subprocess.TimeoutExpired:
            raise Failure("%s: no answer within %d s" % (what, self.args.bound))
        finally:
            self.sh.end(self.name)
        self.ops[argv[0]] = self.ops.get(argv[0], 0) + 1
        if ok and r.returncode != 0 and not any(a in r.stderr for a in allow):
            raise Failure("%s: exit %d: %s" % (what, r.returncode, r.stderr.strip()))
        return r

    def info(self):
        return json.loads(self.tp("--json", "info").stdout)

    def file(self, name, byte, size):
        p = os.path.join(self.tmp, name)
        with open(p, "wb") as f:
            f.write(bytes([byte]) * size)
        return p

    def merge_cycle(self, n):
        # side and its snapshot are never exported: merge needs no --force.
        a = self.file("side-a", 0x11 + n % 100, 4 * B)
        b = self.file("side-b", 0x80 + n % 100, 4 * B)
        snap = "side.next%d" % n
        self.tp("write", "side", a)
        self.tp("snapshot", "side", snap, "--writable")
        self.tp("write", snap, b)
        self.tp("merge", snap)
        out = os.path.join(self.tmp, "side-out")
        self.tp("read", "side", out)
        with open(out, "rb") as f, open(b, "rb") as g:
            if f.read(4 * B) != g.read():
                raise Failure("merge %s: side does not hold the snapshot's content" % snap)

    def fill_cycle(self):
        info = self.info()
        fill = os.path.join(self.tmp, "fill.img")
        if not os.path.exists(fill):
            with open(fill, "wb") as f:
                f.write(b"\xab" * (info["nr_blocks"] * info["block_bytes"]))
        with self.sh.lock:
            self.sh.fill_windows.append([time.monotonic(), None])
        self.tp("create", "fill", "--size", str(info["nr_blocks"] * info["block_bytes"]))
        r = self.tp("write", "fill", fill, ok=False)
        if r.returncode == 0:
            raise Failure("writing a pool-sized volume succeeded: the pool never filled")
        if "space" not in r.stderr:
            raise Failure("filling the pool failed, but not for space: %s" % r.stderr.strip())
        # Clients trim meanwhile, so the state may already be back to low: record it only.
        state = self.info()["state"]
        self.states[state] = self.states.get(state, 0) + 1
        time.sleep(0.5)  # let clients run into it
        self.tp("remove", "fill")
        with self.sh.lock:
            self.sh.fill_windows[-1][1] = time.monotonic()
        if self.info()["state"] in ("full", "read-only"):
            raise Failure("pool still full after removing the filler")

    def run(self):
        n = 0
        snaps = []
        try:
            while not self.sh.stop.is_set():
                n += 1
                for vol in ("gvol", "tvol"):
                    name = "%s.s%d" % (vol, n)
                    self.tp("snapshot", vol, name)
                    snaps.append(name)
                self.merge_cycle(n)
                if n % 2 == 0:
                    self.fill_cycle()
                while len(snaps) > 2:
                    self.tp("remove", snaps.pop(0))
                if n % 3 == 0:
                    self.tp("check")
            for s in snaps:
                self.tp("remove", s)
        except Failure as e:
            self.sh.error(str(e))
        except Exception as e:
            self.sh.error("control: %s: %s" % (type(e).__name__, e))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--thinpool", required=True)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--bound", type=int, default=30)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()

    sh = Shared()
    uri = lambda name: "nbd+unix:///%s?socket=%s" % (name, args.socket)
    per_vol = args.clients // 2
    clients = []
    for i in range(args.clients):
        guaranteed = i < per_vol
        export = "gvol" if guaranteed else "tvol"
        clients.append((i, export, guaranteed))
    vols = {v["name"]: v for v in json.loads(subprocess.run(
        [args.thinpool, "-p", args.pool, "--json", "list"], capture_output=True, text=True,
        check=True, timeout=args.bound).stdout)}
    threads = []
    for i, export, guaranteed in clients:
        region = vols[export]["size_bytes"] // per_vol // B * B
        k = i % per_vol
        threads.append(Client(sh, i, uri(export), export, k * region, region, guaranteed,
                              1000 + i))
    control = Control(sh, args)
    t_start = time.monotonic()
    for t in threads:
        t.start()
    control.start()
    hang = None
    while any(t.is_alive() for t in threads + [control]):
        now = time.monotonic()
        if now - t_start >= args.duration:
            sh.stop.set()
        with sh.lock:
            for who, (what, since) in sh.busy.items():
                if now - since > args.bound:
                    hang = "%s: %s unanswered after %d s" % (who, what, args.bound)
        if hang:
            break
        time.sleep(0.2)
    requests = sum(t.requests for t in threads)
    enospc = sum(t.enospc for t in threads)
    print("nbd_stress: %d NBD requests from %d connections, %d ENOSPC (thin volume, pool full), "
          "%d fills (state after: %s), control ops %s, %.0f s" % (
              requests, len(threads), enospc, len(sh.fill_windows),
              json.dumps(control.states, sort_keys=True),
              json.dumps(control.ops, sort_keys=True), time.monotonic() - t_start))
    if hang:
        print("nbd_stress: FAIL: hang: " + hang, file=sys.stderr)
        os._exit(2)
    if sh.errors:
        for e in sh.errors:
            print("nbd_stress: FAIL: " + e, file=sys.stderr)
        sys.exit(1)
    if len(sh.fill_windows) == 0:
        print("nbd_stress: FAIL: the pool was never filled", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
