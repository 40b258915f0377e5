#!/usr/bin/python3
"""mkseeds_session.py: writes the seed scripts of fuzz_session (make
fuzz-seeds): whole sessions in the script language of fuzz_session.c."""
import os
import sys

# Configuration octets (see config_for() in fuzz_session.c): the first,
FIXED, FILTER, TEMPFAIL, TLS_AUTO, MAXSIZE, BUDGET, LOOPBACK, TOP_W1 = \
    1, 2, 4, 8, 16, 32, 64, 128
# and the second, shifted by 8 here.
QUAR, CERT, FTIMEOUT2, PERIP1, NOMARK, STLS_REQ, FSIZE1000, EDITS_ONLY = \
    1 << 8, 2 << 8, 4 << 8, 8 << 8, 16 << 8, 32 << 8, 64 << 8, 128 << 8


def data(op, who, b):
    x = len(b) >> 8
    assert x < 8, "at most 2047 octets per operation"
    return bytes([op | who << 4 | x << 5, len(b) & 255]) + b


def C(b, who=0):            # the client sends
    return data(0, who, b)


def U(b, who=0):            # the upstream sends
    return data(1, who, b)


def BIG(pat, count, who=0):  # the upstream sends pat count times
    return bytes([2 | who << 4, count >> 8, count & 255, len(pat)]) + pat


def F(act, k=0, extra=b""):  # the filter answers request k
    return bytes([3, act | k << 3]) + extra


def S(s):                   # a length-prefixed string, for F
    return bytes([len(s)]) + s


def X(x, who=0):            # closes, refusals, backpressure
    return bytes([4 | who << 4 | x << 5])


def T(x):                   # time passes: 50 ms, 0.3, 1.1, 5, 31, 121, 601,
    return bytes([5 | x << 5])  # 3601 s


def OPEN1(tls=0):
    return bytes([6 | 1 << 4 | tls << 5])


# The start of a real TLS 1.2 ClientHello, then junk.
HELLO = bytes.fromhex("160301002d0100002903035f") + b"\x00" * 32 + b"\x00\x02\x13\x01\x01\x00"



SHUTDOWN = bytes([7])
STATUS = bytes([7 | 1 << 5])   # the SIGUSR1 status line

MSG = (b"From: a@example.org\r\nSubject: hi\r\n\r\n"
       b"..leading dot\r\nbody\r\n")
RETR_REPLY = b"+OK %d octets\r\n" % (len(MSG) - 1) + MSG + b".\r\n"


def login(who=0, capa=b"USER\r\nPIPELINING\r\nUIDL\r\nTOP\r\n"):
    return [C(b"USER alice%pop.example.com\r\n", who),
            U(b"+OK ready\r\n", who),
            U(b"+OK\r\n" + capa + b".\r\n", who),
            U(b"+OK\r\n", who),
            C(b"PASS Pw-s3cr3t\r\n", who),
            U(b"+OK logged in\r\n", who)]


SEEDS = {
    "routing-accept-dele-quit": (FILTER | LOOPBACK, login() + [
        C(b"UIDL\r\nLIST\r\nRETR 1\r\n"),
        U(b"+OK\r\n1 abc\r\n.\r\n"), U(b"+OK 1 messages\r\n1 60\r\n.\r\n"),
        U(RETR_REPLY), F(0),
        C(b"DELE 1\r\nQUIT\r\n"), U(b"+OK\r\n"), U(b"+OK bye\r\n")]),
    "routing-edits-replace": (FILTER | LOOPBACK, login() + [
        C(b"RETR 1\r\nRETR 2\r\n"), U(RETR_REPLY), U(RETR_REPLY),
        F(1, 0, b"\x02" + b"\x00\x01" + S(b"X-Spam-Flag") + S(b"YES")
          + b"\x02\x00" + S(b"Subject") + S(b"")),
        F(2, 0, b"\x00\x10Subject: new\r\n\r\n")]),
    "routing-reject-tempfail-error": (FILTER | LOOPBACK | TEMPFAIL, login() + [
        C(b"RETR 1\r\nRETR 2\r\nRETR 3\r\n"),
        U(RETR_REPLY), U(RETR_REPLY), U(RETR_REPLY),
        F(3, 0, b"\x03" + S(b"virus!") + S(b"q-17")),
        F(4, 0, S(b"busy")), F(5, 0, b"\x00" + S(b"oops")),
        C(b"QUIT\r\n"), U(b"+OK\r\n")]),
    "filter-garbage-drain-close": (FILTER | LOOPBACK, login() + [
        C(b"RETR 1\r\nRETR 2\r\n"), U(RETR_REPLY), U(RETR_REPLY),
        F(6, 0, b"\x00\x07\x00\x00\x00\x03\x81\xa1x"), F(7, 0, b"\x00"),
        X(4)]),
    "fixed-apop-filter": (FIXED | FILTER, [
        U(b"+OK <1.2@host> ready\r\n"), U(b"+OK\r\nUIDL\r\n.\r\n"),
        C(b"CAPA\r\nAPOP bob 0123456789abcdef0123456789abcdef\r\n"),
        U(b"+OK\r\nUIDL\r\n.\r\n"), U(b"+OK maildrop\r\n"),
        C(b"STAT\r\nRETR 1\r\n"), U(b"+OK 1 60\r\n"), U(RETR_REPLY), F(0),
        C(b"RETR 1\r\n"), U(RETR_REPLY), X(4)]),
    "fixed-stls-offered": (FIXED | TLS_AUTO, [
        U(b"+OK ready\r\n"), U(b"+OK\r\nSTLS\r\n.\r\n"), U(b"+OK go\r\n"),
        U(b"\x16\x03\x01\x00\x05hello"), C(b"CAPA\r\n")]),
    "auth-plain-route": (LOOPBACK, [
        C(b"CAPA\r\nAUTH PLAIN\r\n"),
        C(b"AGJvYiVwb3AuZXhhbXBsZS5jb20AUHctczNjcjN0\r\n"),
        U(b"+OK hi\r\n"), U(b"+OK\r\nSASL PLAIN\r\n.\r\n"), U(b"+OK\r\n"),
        C(b"STAT\r\nQUIT\r\n"), U(b"+OK 0 0\r\n"), U(b"+OK\r\n")]),
    "budget-two-clients": (FILTER | BUDGET | LOOPBACK, login() + [OPEN1()]
        + login(1) + [C(b"RETR 1\r\n"), C(b"RETR 1\r\n", 1),
        U(b"+OK\r\n"), BIG(b"x" * 60 + b"\r\n", 900), U(b".\r\n"),
        U(b"+OK\r\n", 1), BIG(b"y" * 60 + b"\r\n", 900, 1), U(b".\r\n", 1),
        F(0), F(0)]),
    "maxsize-backpressure": (FILTER | MAXSIZE | LOOPBACK, login() + [
        C(b"RETR 1\r\n"), X(6), U(b"+OK 14200 octets\r\n"),
        BIG(b"z" * 69 + b"\r\n", 200), U(b".\r\n"), X(7), T(0)]),
    "top-window-1": (FILTER | TOP_W1 | LOOPBACK, login() + [
        C(b"TOP 1 0\r\nRETR 1\r\nTOP 2 5\r\n"),
        U(b"+OK\r\nFrom: a\r\n\r\n.\r\n"), U(RETR_REPLY), U(RETR_REPLY),
        F(0), F(1, 0, b"\x01\x00\x00" + S(b"X-A") + S(b"1")), F(0)]),
    "half-close-pending": (FILTER | LOOPBACK, login() + [
        C(b"RETR 1\r\nDELE 1\r\n"), X(0), U(RETR_REPLY), F(0),
        U(b"+OK deleted\r\n")]),
    "upstream-dies-mid-retr": (FILTER | LOOPBACK, login() + [
        C(b"RETR 1\r\n"), U(b"+OK\r\nFrom: a\r\n\r\nhalf"), X(3)]),
    "upstream-timeout": (LOOPBACK, login() + [C(b"RETR 1\r\n"), T(5)]),
    "idle-timeout": (LOOPBACK, login() + [T(6)]),
    "filter-deadline-accept": (FILTER | LOOPBACK | FTIMEOUT2, login() + [
        C(b"RETR 1\r\n"), U(RETR_REPLY), T(2), T(1), T(3)]),
    "filter-deadline-tempfail-ping": (FILTER | TEMPFAIL | LOOPBACK, login() + [
        C(b"RETR 1\r\n"), U(RETR_REPLY), STATUS, T(4), STATUS, T(4), C(b"NOOP\r\n"),
        U(b"+OK\r\n")]),
    "budget-wait-and-resume": (FILTER | BUDGET | LOOPBACK, login() + [OPEN1()]
        + login(1) + [C(b"RETR 1\r\n"), C(b"RETR 1\r\n", 1),
        U(b"+OK 36000 octets\r\n"), BIG(b"x" * 58 + b"\r\n", 600), U(b".\r\n"),
        U(b"+OK 36000 octets\r\n", 1), BIG(b"y" * 58 + b"\r\n", 600, 1),
        U(b".\r\n", 1), STATUS, X(6), F(0), STATUS, X(7), F(0)]),
    "budget-too-big": (FILTER | BUDGET | LOOPBACK, login() + [
        C(b"RETR 1\r\n"), U(b"+OK 90000 octets\r\n"),
        BIG(b"q" * 58 + b"\r\n", 1500), U(b".\r\n")]),
    "quarantine-reject": (FILTER | LOOPBACK | QUAR, login() + [
        C(b"RETR 1\r\nRETR 2\r\n"), U(RETR_REPLY), U(RETR_REPLY),
        F(3, 0, b"\x01" + S(b"we kept it")), F(3, 0, b"\x04" + S(b"spam"))]),
    "not-granted-size-skip": (FILTER | LOOPBACK | EDITS_ONLY | FSIZE1000, login() + [
        C(b"RETR 1\r\nRETR 2\r\n"), U(RETR_REPLY),
        U(b"+OK 2000 octets\r\n"), BIG(b"s" * 18 + b"\r\n", 100), U(b".\r\n"),
        F(3, 0, b"\x00"), F(2, 0, b"\x00\x05X: y\r\n")]),
    "stls-required-per-ip": (LOOPBACK | STLS_REQ | PERIP1, [
        C(b"USER alice%pop.example.com\r\n"), U(b"+OK ready\r\n"),
        U(b"+OK\r\nUSER\r\n.\r\n"), OPEN1(), C(b"CAPA\r\n", 1)]),
    "client-stls-injection": (CERT | LOOPBACK, [
        C(b"CAPA\r\nSTLS\r\nUSER evil%pop.example.com\r\n"), C(HELLO),
        C(b"USER alice%pop.example.com\r\n")]),
    "client-implicit-tls": (CERT | LOOPBACK, [OPEN1(1), C(HELLO, 1),
        C(b"QUIT\r\n", 1), STATUS]),
    "stalled-client-serving": (FILTER | LOOPBACK | NOMARK, login() + [
        C(b"RETR 1\r\n"), U(b"+OK 240000 octets\r\n"),
        BIG(b"w" * 78 + b"\r\n", 3000), U(b".\r\n"), X(6), F(0), T(0),
        X(7), C(b"QUIT\r\n"), U(b"+OK\r\n")]),
    "hostile-client": (FILTER | LOOPBACK, [
        C(b"USER a%b\x00c\r\n" + b"A" * 300 + b"\r\nPASS x\rDELE 1\r\n"),
        C(b"USER %n%s%x%p\r\n"), C(b"AUTH PLAIN !!!\r\n"),
        C(b"AUTH PLAIN\r\n*\r\n"), C(b"RETR 0\r\nLIST -1\r\nTOP 2147483648 1 2\r\n"),
        C(b"USER alice%127.0.0.1:1110\r\n"), U(b"-ERR no\r\n"), X(0), T(1)]),
    "refused-then-shutdown": (LOOPBACK, [
        X(5), C(b"USER alice%pop.example.com\r\n"), C(b"SHUTDOWN\r\n"),
        SHUTDOWN, C(b"QUIT\r\n")]),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus/fuzz_session"
    os.makedirs(out, exist_ok=True)
    for name, (conf, ops) in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes([conf & 255, conf >> 8]) + b"".join(ops))


if __name__ == "__main__":
    main()
