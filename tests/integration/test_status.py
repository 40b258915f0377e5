# test_status.py: SIGUSR1 logs one status line: sessions now and since start,
# held octets against the budget, budget waiters, and each filter's state.
import re
import signal

from harness import RawPop3, message, via, wait_until
from test_filter import flags, start_filter

STATUS = r"status: (\d+) sessions \((\d+) since start\), (\d+) octets held of (\d+), " \
         r"(\d+) waiting for budget([^\n]*)"


def status(proxy, n):
    """Send SIGUSR1 and return the n-th status line's fields."""
    proxy.proc.send_signal(signal.SIGUSR1)
    proxy.wait_log(r"status: ", n)
    return re.findall(STATUS, proxy.log_text())[n - 1]


def test_status_counts_sessions_and_shows_a_filter_down(proxy_factory, wtmp):
    p = proxy_factory(["--filter", "unix:%s/nobody-here.sock" % wtmp, "--buffer-budget", "1048576"])
    now, total, held, budget, waiting, rest = status(p, 1)
    assert (now, total, held, budget, waiting) == ("0", "0", "0", "1048576", "0")
    assert re.search(r"filters: \[nobody-here\.sock: (down|connecting)", rest), rest
    c1, c2 = RawPop3(p.host, p.port), RawPop3(p.host, p.port)
    assert c1.greeting.startswith(b"+OK") and c2.greeting.startswith(b"+OK")
    now, total, _, _, _, _ = status(p, 2)
    assert (now, total) == ("2", "2")
    c1.ok("QUIT")
    c1.close()
    p.wait_log(r"session end:", 1)
    now, total, _, _, _, _ = status(p, 3)
    assert (now, total) == ("1", "2")
    c2.close()
    assert p.alive()


def test_status_shows_a_message_held_for_a_slow_filter(dovecot, proxy_factory, procs, wtmp):
    body = b"x" * 5000 + b"\n"
    dovecot.deliver("alice", message("held", body))
    f = start_filter(procs, wtmp, mode="accept", args=["--delay", "3"])
    p = proxy_factory(flags(f, timeout=20))
    c = via(p, dovecot)
    c.send(b"RETR 1\r\n")
    # The filter has the request and sleeps on it: the message is held.
    wait_until(lambda: len(f.requests()) == 1, 5, what="the request at the filter")
    now, total, held, _, waiting, rest = status(p, 1)
    assert now == "1" and int(held) >= len(body) and waiting == "0"
    assert re.search(r"f1\.sock: ready, 1 in flight, 0 queued", rest), rest
    st = c.line()
    assert st.startswith(b"+OK"), st
    c.multi()
    c.ok("QUIT")
    p.wait_log(r"session end:", 1)
    now, total, held, _, _, rest = status(p, 2)
    assert (now, total, held) == ("0", "1", "0")
    assert re.search(r"f1\.sock: ready, 0 in flight, 0 queued", rest), rest
