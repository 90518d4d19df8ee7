#!/usr/bin/env python3
"""Malformed and hostile NBD clients against a running `thinpool serve` (raw Unix sockets).

  nbd_malformed.py SOCK        exports: "vol" (8 MiB, never written here), "scratch" (8 MiB,
                               writable), "snap" (read-only snapshot of vol)

Every case expects the reply proto.md prescribes (an option error, an NBD error value in a
simple or structured reply) or a clean disconnect (EOF, no stray bytes), and after every
case a separate good client (libnbd) must still connect and read vol's known content.
Clients that never finish their handshake stay open from the start to the end while all
this is served; the server drops them after its handshake timeout.
"""
import errno
import hashlib
import os
import socket
import struct
import subprocess
import sys
import time

import nbd

SOCK = sys.argv[1]
MiB = 1 << 20

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLYMAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
CHUNK_MAGIC = 0x668E33EF

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_PEEK, OPT_STARTTLS = 1, 2, 3, 4, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META = 6, 7, 8, 9, 10
OPT_EXTENDED_HEADERS = 11
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR_UNSUP, ERR_POLICY, ERR_INVALID = 2**31 + 1, 2**31 + 2, 2**31 + 3
ERR_UNKNOWN, ERR_TOO_BIG = 2**31 + 6, 2**31 + 9
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO = 1, 2, 4, 8, 16
TX_READ_ONLY, TX_FAST_ZERO = 1 << 1, 1 << 11
EPERM, EINVAL, EOVERFLOW = 1, 22, 75
CHUNK_DONE = 1
T_DATA, T_HOLE, T_BLOCK_STATUS, T_ERROR, T_ERROR_OFFSET = 1, 2, 5, 2**15 + 1, 2**15 + 2

TIMEOUT = 20  # any single wait; the server answers in milliseconds
cases = 0


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


# --- raw client ----------------------------------------------------------------------------------
class Raw:
    def __init__(self, greet=True, flags=3):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(TIMEOUT)
        self.s.connect(SOCK)
        self.structured = False
        self.size = 0
        self.eflags = 0
        self.cookie = 0
        if greet:
            g = self.recv(18)
            magic, opt, hflags = struct.unpack(">QQH", g)
            check(magic == NBDMAGIC and opt == IHAVEOPT, "bad greeting %r" % g)
            check(hflags & 1, "server lacks FIXED_NEWSTYLE")
            if flags is not None:
                self.send(struct.pack(">I", flags))

    def send(self, b):
        self.s.sendall(b)

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            got = self.s.recv(n - len(buf))
            if not got:
                raise Fail("server closed the connection (wanted %d more bytes)" % (n - len(buf)))
            buf += got
        return buf

    def close(self):
        self.s.close()

    def expect_closed(self, what):
        """The server ends the connection: EOF (or a reset) with no further bytes."""
        try:
            extra = b""
            while True:
                got = self.s.recv(65536)
                if not got:
                    break
                extra += got
        except socket.timeout:
            raise Fail("%s: the server did not close the connection" % what)
        except ConnectionResetError:
            extra = b""
        check(extra == b"", "%s: %d stray bytes before the close" % (what, len(extra)))
        self.close()

    # options
    def opt(self, option, data=b"", length=None):
        self.send(struct.pack(">QII", IHAVEOPT, option, len(data) if length is None else length) + data)

    def opt_reply(self):
        magic, option, rtype, length = struct.unpack(">QIII", self.recv(20))
        check(magic == REPLYMAGIC, "bad option reply magic %#x" % magic)
        return option, rtype, self.recv(length)

    def expect_opt_error(self, option, want, what):
        o, t, _ = self.opt_reply()
        check(o == option, "%s: reply for option %d, want %d" % (what, o, option))
        want = want if isinstance(want, tuple) else (want,)
        check(t in want, "%s: reply type %#x, want %s" % (what, t, [hex(w) for w in want]))

    def go(self, name, structured=False, meta=()):
        if structured:
            self.opt(OPT_STRUCTURED)
            check(self.opt_reply()[1] == REP_ACK, "STRUCTURED_REPLY not acknowledged")
            self.structured = True
        if meta:
            q = b"".join(struct.pack(">I", len(m)) + m.encode() for m in meta)
            self.opt(OPT_SET_META, struct.pack(">I", len(name)) + name.encode() +
                     struct.pack(">I", len(meta)) + q)
            while True:
                _, t, _ = self.opt_reply()
                if t == REP_ACK:
                    break
                check(t == REP_META, "SET_META_CONTEXT reply %#x" % t)
        self.opt(OPT_GO, struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0))
        while True:
            o, t, d = self.opt_reply()
            check(o == OPT_GO, "GO reply for option %d" % o)
            if t == REP_ACK:
                break
            check(t == REP_INFO, "GO %s: reply %#x %r" % (name, t, d))
            if struct.unpack(">H", d[:2])[0] == INFO_EXPORT:
                _, self.size, self.eflags = struct.unpack(">HQH", d)
        return self

    # transmission
    def request(self, cmd, offset, length, flags=0, payload=b"", magic=REQ_MAGIC):
        self.cookie += 1
        self.send(struct.pack(">IHHQQI", magic, flags, cmd, self.cookie, offset, length) + payload)
        return self.cookie

    def reply(self, cookie, read_len=0):
        """(error, data) of one reply; data assembled from READ chunks."""
        if not self.structured:
            magic, err, c = struct.unpack(">IIQ", self.recv(16))
            check(magic == SIMPLE_MAGIC, "bad simple reply magic %#x" % magic)
            check(c == cookie, "reply cookie %d, want %d" % (c, cookie))
            return err, (self.recv(read_len) if err == 0 and read_len else b"")
        err, data = 0, {}
        while True:
            magic, flags, t, c, length = struct.unpack(">IHHQI", self.recv(20))
            check(magic == CHUNK_MAGIC, "bad chunk magic %#x" % magic)
            check(c == cookie, "chunk cookie %d, want %d" % (c, cookie))
            p = self.recv(length)
            if t in (T_ERROR, T_ERROR_OFFSET):
                e, mlen = struct.unpack(">IH", p[:6])
                check(e != 0, "error chunk with error 0")
                check(len(p) >= 6 + mlen, "error chunk message overruns the payload")
                err = err or e
            elif t == T_DATA:
                data[struct.unpack(">Q", p[:8])[0]] = p[8:]
            elif t == T_HOLE:
                off, n = struct.unpack(">QI", p)
                data[off] = bytes(n)
            if flags & CHUNK_DONE:
                break
        return err, b"".join(data[k] for k in sorted(data))

    def expect_error(self, want, what, cmd, offset, length, flags=0, payload=b""):
        c = self.request(cmd, offset, length, flags, payload)
        err, _ = self.reply(c)
        check(err == want, "%s: error %d, want %d" % (what, err, want))

    def read(self, offset, length):
        c = self.request(CMD_READ, offset, length)
        err, d = self.reply(c, length)
        check(err == 0 and len(d) == length, "read %d+%d: error %d" % (offset, length, err))
        return d


# --- the good client -----------------------------------------------------------------------------
VOL = None  # vol's first 64 KiB, as the good client first read it
DIGEST = None  # sha256 of all of vol


def good_client(after):
    global cases
    cases += 1
    h = nbd.NBD()
    try:
        h.connect_uri("nbd+unix:///vol?socket=" + SOCK)
        got = h.pread(65536, 0)
        h.shutdown()
    except nbd.Error as e:
        raise Fail("after %s: the good client failed: %s" % (after, e))
    check(got == VOL, "after %s: the good client read different data" % after)


def nbdinfo_ok(after):
    r = subprocess.run(["nbdinfo", "--size", "nbd+unix:///vol?socket=" + SOCK],
                       capture_output=True, text=True, timeout=TIMEOUT)
    check(r.returncode == 0 and r.stdout.strip() == str(8 * MiB),
          "after %s: nbdinfo: %s %s" % (after, r.stdout, r.stderr))


def digest_of_vol():
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///vol?socket=" + SOCK)
    d = hashlib.sha256()
    for off in range(0, h.get_size(), 4 * MiB):
        d.update(h.pread(4 * MiB, off))
    h.shutdown()
    return d.hexdigest()


# --- cases ---------------------------------------------------------------------------------------
def truncated_handshakes():
    """The client side of a whole session, cut at every byte: the server closes cleanly."""
    q = b"base:allocation"
    meta = (struct.pack(">I", 7) + b"scratch" + struct.pack(">I", 1) +
            struct.pack(">I", len(q)) + q)
    go = struct.pack(">I", 7) + b"scratch" + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
    script = (struct.pack(">I", 3) +
              struct.pack(">QII", IHAVEOPT, OPT_STRUCTURED, 0) +
              struct.pack(">QII", IHAVEOPT, OPT_SET_META, len(meta)) + meta +
              struct.pack(">QII", IHAVEOPT, OPT_GO, len(go)) + go +
              struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, 1, 0, 512) +
              struct.pack(">IHHQQI", REQ_MAGIC, F_FUA, CMD_WRITE, 2, 4096, 64) + b"\x5a" * 64 +
              struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_BLOCK_STATUS, 3, 0, 65536) +
              struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_DISC, 4, 0, 0))
    for cut in range(len(script) + 1):
        r = Raw(flags=None)
        r.send(script[:cut])
        r.s.shutdown(socket.SHUT_WR)
        # Drain whatever the server answered up to the cut, then it must close.
        try:
            while r.s.recv(65536):
                pass
        except socket.timeout:
            raise Fail("handshake cut at byte %d of %d: the server did not close" %
                       (cut, len(script)))
        except ConnectionResetError:
            pass
        r.close()
        good_client("a session cut at byte %d" % cut)
    # The same, closed without reading anything back, a few at a time in parallel.
    for cut in range(0, len(script), 7):
        rs = []
        for _ in range(4):
            r = Raw(greet=False)
            r.send(script[:cut] if cut else b"")
            rs.append(r)
        for r in rs:
            r.close()
        good_client("abrupt closes at byte %d" % cut)
    nbdinfo_ok("truncated handshakes")
    print("truncated sessions: %d cut points, each closed cleanly" % (len(script) + 1))


def bad_options():
    # Unknown client flags: the server MUST drop the connection.
    for flags in (1 << 2, 1 << 31, 0xFFFFFFFF):
        r = Raw(flags=flags)
        r.expect_closed("client flags %#x" % flags)
        good_client("client flags %#x" % flags)

    # Unknown options, STARTTLS without TLS, withdrawn ones: ERR_UNSUP, then GO still works.
    for o in (0, OPT_PEEK, OPT_STARTTLS, OPT_EXTENDED_HEADERS, 12, 0x1234, 0x7FFFFFFF,
              0x80000001, 0xFFFFFFFF):
        r = Raw()
        r.opt(o, b"some data" if o & 1 else b"")
        r.expect_opt_error(o, (ERR_UNSUP, ERR_POLICY), "option %#x" % o)
        r.go("vol")
        check(r.read(0, 4096) == VOL[:4096], "read after option %#x" % o)
        r.close()
        good_client("unknown option %#x" % o)

    # Syntactically bad data for known options: ERR_INVALID, and the handshake goes on.
    name = b"vol"
    bad = [
        ("LIST with data", OPT_LIST, b"x"),
        ("STRUCTURED_REPLY with data", OPT_STRUCTURED, b"\0\0\0\0"),
        ("GO, name length past the data", OPT_GO, struct.pack(">I", 100) + name + b"\0\0"),
        ("GO, info count past the data", OPT_GO, struct.pack(">I", 3) + name + struct.pack(">HH", 5, 3)),
        ("GO, trailing garbage", OPT_GO, struct.pack(">I", 3) + name + struct.pack(">H", 0) + b"xyz"),
        ("GO, 3 bytes", OPT_GO, b"\0\0\0"),
        ("INFO, empty", OPT_INFO, b""),
        ("GO, NUL in the name", OPT_GO, struct.pack(">I", 4) + b"v\0ol" + struct.pack(">H", 0)),
        ("GO, 5000-byte name", OPT_GO, struct.pack(">I", 5000) + b"v" * 5000 + struct.pack(">H", 0)),
        ("SET_META_CONTEXT before STRUCTURED_REPLY", OPT_SET_META,
         struct.pack(">I", 3) + name + struct.pack(">I", 0)),
    ]
    for what, o, data in bad:
        r = Raw()
        r.opt(o, data)
        r.expect_opt_error(o, (ERR_INVALID, ERR_TOO_BIG), what)
        r.go("vol")
        check(r.read(0, 512) == VOL[:512], "read after " + what)
        r.close()
        good_client(what)
    for what, o, data in [
        ("SET_META_CONTEXT, query count past the data", OPT_SET_META,
         struct.pack(">I", 3) + name + struct.pack(">I", 9)),
        ("LIST_META_CONTEXT, query length past the data", OPT_LIST_META,
         struct.pack(">I", 3) + name + struct.pack(">II", 1, 400) + b"base:"),
    ]:
        r = Raw()
        r.opt(OPT_STRUCTURED)
        check(r.opt_reply()[1] == REP_ACK, "STRUCTURED_REPLY")
        r.opt(o, data)
        r.expect_opt_error(o, ERR_INVALID, what)
        r.close()
        good_client(what)

    # An unknown export: GO/INFO say ERR_UNKNOWN and the handshake goes on; EXPORT_NAME
    # cannot answer an error, so the server closes.
    r = Raw()
    for o in (OPT_INFO, OPT_GO):
        r.opt(o, struct.pack(">I", 7) + b"nothere" + struct.pack(">H", 0))
        r.expect_opt_error(o, ERR_UNKNOWN, "unknown export")
    r.go("vol")
    r.close()
    r = Raw()
    r.opt(OPT_EXPORT_NAME, b"nothere")
    r.expect_closed("EXPORT_NAME of an unknown export")
    good_client("unknown exports")

    # Oversized option lengths: up to 1 MiB the data is skipped and answered ERR_TOO_BIG;
    # beyond, and for EXPORT_NAME (which has no error reply), the server closes.
    for o, n in ((OPT_GO, 64 * 1024 + 1), (0x4242, MiB), (OPT_LIST_META, 300000)):
        r = Raw()
        r.opt(o, b"\xee" * n)
        r.expect_opt_error(o, ERR_TOO_BIG, "option %#x with %d bytes" % (o, n))
        r.go("vol")
        check(r.read(0, 512) == VOL[:512], "read after an oversized option")
        r.close()
        good_client("option %#x with %d bytes" % (o, n))
    for o, n in ((OPT_GO, 0xFFFFFFFF), (0x4242, MiB + 1), (OPT_EXPORT_NAME, 64 * 1024 + 1),
                 (OPT_EXPORT_NAME, 0xFFFFFFFF)):
        r = Raw()
        r.opt(o, b"", length=n)
        r.expect_closed("option %#x claiming %d bytes" % (o, n))
        good_client("option %#x claiming %d bytes" % (o, n))

    # Bad option magic: the stream cannot be trusted any more.
    r = Raw()
    r.send(struct.pack(">QII", 0x1122334455667788, OPT_LIST, 0))
    r.expect_closed("bad option magic")
    good_client("bad option magic")

    # A client that never stops haggling is cut off (after 4096 options here).
    r = Raw()
    n = 0
    try:
        while n < 5000:
            r.opt(0x4242)
            r.opt_reply()
            n += 1
    except (Fail, ConnectionResetError, BrokenPipeError):
        pass
    check(4000 <= n < 5000, "endless options: the server answered %d" % n)
    r.expect_closed("endless options")
    good_client("endless options")

    # NBD_OPT_ABORT: acknowledged, then closed.
    r = Raw()
    r.opt(OPT_ABORT)
    o, t, _ = r.opt_reply()
    check(o == OPT_ABORT and t == REP_ACK, "ABORT reply %d %#x" % (o, t))
    r.expect_closed("ABORT")
    good_client("ABORT")
    nbdinfo_ok("bad options")
    print("bad options: unknown, invalid, oversized, bad magic, endless: right replies")


def bad_requests(structured):
    mode = "structured" if structured else "simple"
    meta = ("base:allocation",) if structured else ()
    r = Raw().go("vol", structured, meta)
    size = r.size
    check(size == 8 * MiB, "vol size %d" % size)

    def alive(what):
        check(r.read(0, 4096) == VOL[:4096], "%s (%s): the connection lost step" % (what, mode))
        good_client("%s (%s)" % (what, mode))

    # Oversized: EOVERFLOW; a WRITE's payload (up to 64 MiB) is read and thrown away.
    r.expect_error(EOVERFLOW, "read of 32 MiB + 1", CMD_READ, 0, 32 * MiB + 1)
    alive("an oversized read")
    r.expect_error(EOVERFLOW, "read of 4 GiB - 1", CMD_READ, 0, 0xFFFFFFFF)
    alive("a 4 GiB read")
    r.expect_error(EOVERFLOW, "write of 32 MiB + 1", CMD_WRITE, 0, 32 * MiB + 1,
                   payload=b"\xbb" * (32 * MiB + 1))
    alive("an oversized write")

    # Past the end of the export, or wrapping around 2^64: EINVAL (payloads skipped).
    for what, cmd, off, n, flags in [
        ("read across the end", CMD_READ, size - 512, 1024, 0),
        ("read at the end", CMD_READ, size, 1, 0),
        ("read far past the end", CMD_READ, 1 << 62, 512, 0),
        ("read wrapping 2^64", CMD_READ, 2**64 - 512, 1024, 0),
        ("write across the end", CMD_WRITE, size - 100, 200, 0),
        ("write wrapping 2^64", CMD_WRITE, 2**64 - 1, 2, 0),
        ("trim across the end", CMD_TRIM, size - 65536, 2 * 65536, 0),
        ("write_zeroes past the end", CMD_WRITE_ZEROES, size, 65536, 0),
        ("cache past the end", CMD_CACHE, size + 4096, 4096, 0),
        ("zero-length read", CMD_READ, 0, 0, 0),
        ("zero-length write", CMD_WRITE, 0, 0, 0),
        ("zero-length trim", CMD_TRIM, 0, 0, 0),
    ] + ([("block_status past the end", CMD_BLOCK_STATUS, size, 512, 0),
          ("block_status wrapping 2^64", CMD_BLOCK_STATUS, 2**64 - 1, 2, 0)] if structured else []):
        payload = b"\xcc" * n if cmd == CMD_WRITE else b""
        r.expect_error(EINVAL, what, cmd, off, n, flags, payload)
        alive(what)

    # Flags that do not belong to the command, unknown flags, unknown commands: EINVAL.
    fast_zero_ok = r.eflags & TX_FAST_ZERO
    for what, cmd, off, n, flags in [
        ("read with an unknown flag", CMD_READ, 0, 512, 1 << 15),
        ("read with NO_HOLE", CMD_READ, 0, 512, F_NO_HOLE),
        ("read with REQ_ONE", CMD_READ, 0, 512, F_REQ_ONE),
        ("write with NO_HOLE", CMD_WRITE, 0, 512, F_NO_HOLE),
        ("write with DF", CMD_WRITE, 0, 512, F_DF),
        ("write with every flag", CMD_WRITE, 0, 512, 0xFFFF),
        ("trim with NO_HOLE", CMD_TRIM, 0, 65536, F_NO_HOLE),
        ("flush with REQ_ONE", CMD_FLUSH, 0, 0, F_REQ_ONE),
        ("flush with a length", CMD_FLUSH, 0, 512, 0),
        ("flush with an offset", CMD_FLUSH, 4096, 0, 0),
        ("cache with DF", CMD_CACHE, 0, 512, F_DF),
        ("block_status with DF", CMD_BLOCK_STATUS, 0, 512, F_DF),
        ("command 8", 8, 0, 512, 0),
        ("command 42", 42, 0, 512, 0),
        ("command 0xffff", 0xFFFF, 0, 0, 0),
    ] + ([] if structured else [
        ("read with DF (no structured replies)", CMD_READ, 0, 512, F_DF),
        ("block_status without structured replies", CMD_BLOCK_STATUS, 0, 512, 0),
    ]) + ([] if fast_zero_ok else [
        ("write_zeroes with FAST_ZERO (not advertised)", CMD_WRITE_ZEROES, 0, 512, F_FAST_ZERO),
    ]):
        payload = b"\xdd" * n if cmd == CMD_WRITE else b""
        r.expect_error(EINVAL, what, cmd, off, n, flags, payload)
        alive(what)

    # DISC ends the session cleanly; a WRITE sent after it (in the same packet) must not
    # run (vol's checksum at the end would show it).
    r.cookie += 1
    r.send(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_DISC, r.cookie, 0, 0) +
           struct.pack(">IHHQQI", REQ_MAGIC, F_FUA, CMD_WRITE, r.cookie + 1, 0, 4096) +
           b"\x66" * 4096)
    r.expect_closed("DISC (%s)" % mode)
    good_client("DISC (%s)" % mode)

    if structured:
        # BLOCK_STATUS without a meta context, and with contexts chosen for another export.
        for what, meta_for in (("no meta context", None), ("contexts chosen for snap", "snap")):
            r = Raw()
            r.opt(OPT_STRUCTURED)
            check(r.opt_reply()[1] == REP_ACK, "STRUCTURED_REPLY")
            r.structured = True
            if meta_for:
                q = b"base:allocation"
                r.opt(OPT_SET_META, struct.pack(">I", len(meta_for)) + meta_for.encode() +
                      struct.pack(">II", 1, len(q)) + q)
                while r.opt_reply()[1] != REP_ACK:
                    pass
            r.go("vol")
            r.expect_error(EINVAL, "block_status with " + what, CMD_BLOCK_STATUS, 0, 4096)
            check(r.read(0, 4096) == VOL[:4096], "read after block_status with " + what)
            r.close()
            good_client("block_status with " + what)

    # A read-only snapshot: EPERM for everything that writes; reads work.
    r = Raw().go("snap", structured)
    check(r.eflags & TX_READ_ONLY, "snap is not read-only")
    for what, cmd, n in [("write", CMD_WRITE, 4096), ("trim", CMD_TRIM, 65536),
                         ("write_zeroes", CMD_WRITE_ZEROES, 65536)]:
        r.expect_error(EPERM, what + " to a read-only export", cmd, 0, n,
                       payload=b"\xee" * n if cmd == CMD_WRITE else b"")
        check(r.read(0, 4096) == VOL[:4096], "snap after a refused " + what)
    r.close()
    good_client("writes to a read-only export (%s)" % mode)

    # Hard disconnects: a bad request magic, a WRITE too large to skip (nothing is sent
    # after its header), a WRITE whose payload never arrives.
    r = Raw().go("vol", structured)
    r.request(CMD_READ, 0, 512, magic=0x25609514)
    r.expect_closed("bad request magic (%s)" % mode)
    good_client("bad request magic (%s)" % mode)
    r = Raw().go("vol", structured)
    r.request(CMD_WRITE, 0, 64 * MiB + 1)
    r.expect_closed("write of 64 MiB + 1 (%s)" % mode)
    good_client("a write too large to skip (%s)" % mode)
    r = Raw().go("scratch", structured)
    r.request(CMD_WRITE, 0, 65536, payload=b"\x11" * 1000)
    r.s.shutdown(socket.SHUT_WR)
    r.expect_closed("a write whose payload stops short (%s)" % mode)
    good_client("a write whose payload stops short (%s)" % mode)
    nbdinfo_ok("bad requests (%s)" % mode)
    print("bad requests (%s replies): EOVERFLOW, EINVAL, EPERM as documented, the session "
          "stays in step; bad magic and unskippable writes disconnect" % mode)


def slow_reader():
    """A client that pipelines reads and never reads the replies does not stall others."""
    r = Raw().go("vol")
    # 256 MiB of reads in one send (once 64 MiB are in flight the server stops taking
    # requests from this client: that is its back-pressure, not a stall).
    r.send(b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, i + 1, (i % 8) * MiB, MiB)
                    for i in range(256)))
    for i in range(3):
        good_client("a client that does not read its replies")
    r.close()
    good_client("a client that stopped reading, closed")
    print("a client that does not read its replies does not hold up the others")


def main():
    global VOL, DIGEST
    # Clients that never finish the handshake, open for the whole run.
    stalled = [Raw(greet=False), Raw(flags=None), Raw()]
    stalled[2].send(struct.pack(">QI", IHAVEOPT, OPT_GO))  # half an option header
    t0 = time.monotonic()

    h = nbd.NBD()
    h.connect_uri("nbd+unix:///vol?socket=" + SOCK)
    VOL = h.pread(65536, 0)
    h.shutdown()
    check(VOL != bytes(65536), "vol should hold data")
    DIGEST = digest_of_vol()

    truncated_handshakes()
    bad_options()
    bad_requests(structured=False)
    bad_requests(structured=True)
    slow_reader()

    # Meanwhile the stalled clients were never served; the handshake timeout drops them.
    for i, r in enumerate(stalled):
        r.s.settimeout(max(1.0, 60 - (time.monotonic() - t0)))
        try:
            if i == 0:
                g = r.recv(18)  # the greeting was sent and waits unread
                check(struct.unpack(">Q", g[:8])[0] == NBDMAGIC, "greeting")
            r.expect_closed("a client stalled in its handshake (%d)" % i)
        except Fail as e:
            raise Fail("%s after %.0f s" % (e, time.monotonic() - t0))
    good_client("stalled handshakes")
    print("3 clients stalled in the handshake were dropped after %.0f s; others were served "
          "meanwhile" % (time.monotonic() - t0))

    # Nothing of all that reached vol.
    check(digest_of_vol() == DIGEST, "vol's content changed")
    print("%d cases, a good client succeeded after each; vol unchanged" % cases)


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print("FAIL: %s" % e, file=sys.stderr)
        sys.exit(1)
