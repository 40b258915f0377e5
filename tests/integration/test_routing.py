# Routing on the login name (USER and AUTH PLAIN), the allow-list, and the
# error replies for bad names, unknown hosts, refused and forbidden upstreams.
import base64
import re
import socket
import time

import pytest

from harness import (USERS, RawPop3, blackhole, can_connect, closed_port, crlf, message,
                     plain_ir, unstuff, via)

PW = USERS["alice"]


def check_mailbox(conn, m):
    status, raw = conn.cmd_multi("RETR 1")
    assert status.startswith(b"+OK"), status
    assert unstuff(raw) == crlf(m)


def logins(dovecot):
    """Dovecot's login lines. Its log process writes them a moment after the
    login, so wait for the first one (a test that expects none checks the
    log directly)."""
    pattern = r"Login: user=<([^>]*)>, method=(\w+), rip=([^,]+)"
    dovecot.wait_log(pattern, 1, timeout=10)
    return re.findall(pattern, dovecot.log_text())


# --------------------------------------------------------------------------
# name syntax

@pytest.mark.parametrize("sep", ["%", "@"])
def test_route_name_host_port(sep, dovecot, proxy):
    m = message("route", b"routed\n")
    dovecot.deliver("alice", m)
    with via(proxy, dovecot, sep=sep) as c:
        check_mailbox(c, m)
    assert logins(dovecot) == [("alice", "PLAIN", "127.0.0.1")]


def test_route_splits_at_last_percent(dovecot, proxy):
    """A user literally named john@example.com, reached as john@example.com%host:port."""
    m = message("john", b"for john\n")
    dovecot.deliver("john@example.com", m)
    with proxy.connect() as c:
        c.login("john@example.com%%127.0.0.1:%d" % dovecot.port, USERS["john@example.com"])
        check_mailbox(c, m)
    assert logins(dovecot)[0][0] == "john@example.com"


def test_route_splits_at_last_at(dovecot, proxy):
    m = message("john", b"for john\n")
    dovecot.deliver("john@example.com", m)
    with proxy.connect() as c:
        c.login("john@example.com@127.0.0.1:%d" % dovecot.port, USERS["john@example.com"])
        check_mailbox(c, m)
    assert logins(dovecot)[0][0] == "john@example.com"


def test_route_user_name_with_percent(dovecot_factory, proxy):
    dv = dovecot_factory(extra_conf="auth_username_chars =\n")
    dv.add_user("per%cent", "pw-percent")
    m = message("pct", b"percent user\n")
    dv.deliver("per%cent", m)
    with proxy.connect() as c:
        c.login("per%%cent%%127.0.0.1:%d" % dv.port, "pw-percent")
        check_mailbox(c, m)
    assert logins(dv)[0][0] == "per%cent"


def test_route_ipv6_literal(dovecot, proxy_factory):
    if not dovecot.v6:
        pytest.skip("Dovecot cannot listen on ::1 here")
    proxy = proxy_factory(allow=("[::1]:*",))
    m = message("v6", b"over ipv6\n")
    dovecot.deliver("alice", m)
    with via(proxy, dovecot, host="::1") as c:
        check_mailbox(c, m)
    assert logins(dovecot) == [("alice", "PLAIN", "::1")]


def test_proxy_listens_on_ipv6(dovecot, proxy_factory):
    if not dovecot.v6:
        pytest.skip("no ::1 here")
    proxy = proxy_factory(host="::1")
    m = message("v6l", b"client over ipv6\n")
    dovecot.deliver("alice", m)
    with via(proxy, dovecot) as c:
        check_mailbox(c, m)


def test_route_localhost_name_from_etc_hosts(dovecot, proxy_factory):
    proxy = proxy_factory(allow=("localhost:*",))
    m = message("lh", b"via localhost\n")
    dovecot.deliver("alice", m)
    with proxy.connect() as c:
        c.login("alice%%localhost:%d" % dovecot.port, PW)
        check_mailbox(c, m)


def test_route_default_port_is_110(proxy):
    if can_connect("127.0.0.1", 110):
        pytest.skip("something listens on 127.0.0.1:110")
    with proxy.connect() as c:
        c.cmd_multi("CAPA")
        r = c.cmd("USER alice%127.0.0.1")
        assert r.startswith(b"-ERR [SYS/TEMP] cannot connect to 127.0.0.1:110"), r


# --------------------------------------------------------------------------
# AUTH PLAIN

def test_auth_plain_initial_response(dovecot, proxy):
    m = message("ir", b"auth plain ir\n")
    dovecot.deliver("alice", m)
    with proxy.connect() as c:
        r = c.cmd("AUTH PLAIN " + plain_ir(dovecot.route("alice"), PW))
        assert r.startswith(b"+OK"), r
        check_mailbox(c, m)
    assert logins(dovecot) == [("alice", "PLAIN", "127.0.0.1")]


def test_auth_plain_continuation(dovecot, proxy):
    m = message("cont", b"auth plain continuation\n")
    dovecot.deliver("alice", m)
    with proxy.connect() as c:
        r = c.cmd("AUTH PLAIN")
        assert r.rstrip(b"\r\n") in (b"+", b"+ "), r
        r = c.cmd(plain_ir(dovecot.route("alice"), PW))
        assert r.startswith(b"+OK"), r
        check_mailbox(c, m)


def test_auth_plain_routes_on_authcid_with_at_user(dovecot, proxy):
    m = message("johnauth", b"john via auth\n")
    dovecot.deliver("john@example.com", m)
    with proxy.connect() as c:
        r = c.cmd("AUTH PLAIN " + plain_ir("john@example.com%%127.0.0.1:%d" % dovecot.port,
                                           USERS["john@example.com"]))
        assert r.startswith(b"+OK"), r
        check_mailbox(c, m)


@pytest.mark.parametrize("bad", [
    pytest.param(["*"], id="cancel"),
    pytest.param(["not base64 !!"], id="invalid-base64"),
    pytest.param(["="], id="empty"),
    pytest.param([base64.b64encode(b"no nuls at all").decode()], id="no-nul"),
    pytest.param([base64.b64encode(b"\0alice\0").decode()], id="no-route-no-password"),
])
def test_auth_plain_bad_continuation_then_login(bad, dovecot, proxy):
    m = message("afterbad", b"after a bad AUTH\n")
    dovecot.deliver("alice", m)
    with proxy.connect() as c:
        r = c.cmd("AUTH PLAIN")
        assert r.startswith(b"+"), r
        r = c.cmd(bad[0])
        assert r.startswith(b"-ERR"), r
        c.login(dovecot.route("alice"), PW)
        check_mailbox(c, m)


@pytest.mark.parametrize("line", ["AUTH PLAIN !!!", "AUTH CRAM-MD5", "AUTH LOGIN",
                                  "AUTH PLAIN " + "QUFB" * 3000],
                         ids=["invalid-base64", "cram-md5", "login", "12k-base64-over-limit"])
def test_auth_bad_initial_then_login(line, dovecot, proxy):
    m = message("afterbad2", b"after a bad AUTH line\n")
    dovecot.deliver("alice", m)
    with proxy.connect() as c:
        r = c.cmd(line)
        assert r.startswith(b"-ERR"), r
        c.login(dovecot.route("alice"), PW)
        check_mailbox(c, m)


def test_auth_without_mechanism_lists_or_refuses(dovecot, proxy):
    """Bare AUTH: either the de-facto mechanism list (+OK, PLAIN, .) or -ERR."""
    with proxy.connect() as c:
        r = c.cmd("AUTH")
        if r.startswith(b"+OK"):
            assert b"PLAIN\r\n" in c.multi()
        else:
            assert r.startswith(b"-ERR"), r
        c.login(dovecot.route("alice"), PW)


# --------------------------------------------------------------------------
# errors

BAD_NAMES = ["alice", "alice%", "alice@", "%127.0.0.1:{p}", "alice%127.0.0.1:",
             "alice%127.0.0.1:65536", "alice%127.0.0.1:12ab", "alice%[::1",
             "alice%[::1]x:{p}", "alice%127.0.0.1:-5"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[n.replace("{p}", "PORT") for n in BAD_NAMES])
def test_bad_user_syntax_then_login_in_same_session(name, dovecot, proxy):
    m = message("retry", b"after a bad USER\n")
    dovecot.deliver("alice", m)
    with proxy.connect() as c:
        r = c.cmd("USER " + name.format(p=dovecot.port))
        assert r.startswith(b"-ERR [AUTH]"), r
        c.login(dovecot.route("alice"), PW)
        check_mailbox(c, m)
    assert len(logins(dovecot)) == 1


def test_pass_before_user_then_login(dovecot, proxy):
    with proxy.connect() as c:
        assert c.cmd("PASS " + PW).startswith(b"-ERR")
        c.login(dovecot.route("alice"), PW)


def test_unknown_host(proxy_factory):
    proxy = proxy_factory(allow=("127.0.0.1:*", "nosuchhost.invalid:*"))
    with proxy.connect(timeout=30) as c:
        t = time.monotonic()
        r = c.cmd("USER alice%nosuchhost.invalid:110")
        took = time.monotonic() - t
        assert r.startswith(b"-ERR [SYS/TEMP] cannot resolve nosuchhost.invalid"), r
        assert took < 20, took
    # The proxy goes on serving.
    with proxy.connect() as c:
        assert c.greeting.startswith(b"+OK")


def test_refused_connection(proxy):
    port = closed_port()
    with proxy.connect() as c:
        r = c.cmd("USER alice%%127.0.0.1:%d" % port)
        assert r.startswith(b"-ERR [SYS/TEMP] cannot connect to 127.0.0.1:%d" % port), r


@pytest.mark.parametrize("allow", [(), ("*:*",), ("127.0.0.1:110",), ("10.0.0.0/8:*",)],
                         ids=["default", "glob-never-grants-loopback", "wrong-port",
                              "other-cidr"])
def test_refused_by_allow_list(allow, dovecot, proxy_factory):
    proxy = proxy_factory(allow=allow)
    with proxy.connect() as c:
        r = c.cmd("USER " + dovecot.route("alice"))
        assert r == b"-ERR [SYS/PERM] upstream 127.0.0.1:%d is not allowed\r\n" % dovecot.port, r
    # Not even a connection reached Dovecot.
    assert "pop3-login" not in dovecot.log_text()


def test_glob_does_not_grant_localhost(dovecot, proxy_factory):
    proxy = proxy_factory(allow=("*:*", "*.localdomain:*"))
    with proxy.connect() as c:
        r = c.cmd("USER alice%%localhost:%d" % dovecot.port)
        assert r.startswith(b"-ERR [SYS/PERM]"), r


def test_refused_by_policy_never_connects(proxy_factory, fake_upstream):
    seen = []
    fake = fake_upstream(lambda conn: seen.append(conn))
    proxy = proxy_factory(allow=("127.0.0.1:110",))
    with proxy.connect() as c:
        r = c.cmd("USER x%%127.0.0.1:%d" % fake.port)
        assert r.startswith(b"-ERR [SYS/PERM]"), r
        r = c.cmd("AUTH PLAIN " + plain_ir("x%%127.0.0.1:%d" % fake.port, "pw"))
        assert r.startswith(b"-ERR [SYS/PERM]"), r
    time.sleep(0.3)
    assert fake.conns == []


def test_cidr_allow_grants_loopback(dovecot, proxy_factory):
    proxy = proxy_factory(allow=("127.0.0.0/8:*",))
    with via(proxy, dovecot) as c:
        assert c.ok("STAT")


def test_wrong_password_reply_passed_through(dovecot, proxy):
    # Dovecot delays repeated failures from one IP: the direct attempt comes
    # from 127.0.0.2 so that it doesn't slow down the proxy's attempt.
    with RawPop3("127.0.0.1", dovecot.port, source=("127.0.0.2", 0)) as d:
        d.ok("USER alice")
        want = d.cmd("PASS wrong-password")
    assert want.startswith(b"-ERR [AUTH]")
    with proxy.connect() as c:
        c.ok("USER " + dovecot.route("alice"))
        got = c.cmd("PASS wrong-password")
    assert got == want


def test_wrong_password_auth_plain_passed_through(dovecot, proxy):
    with RawPop3("127.0.0.1", dovecot.port, source=("127.0.0.2", 0)) as d:
        want = d.cmd("AUTH PLAIN " + plain_ir("alice", "wrong-password"))
    with proxy.connect() as c:
        got = c.cmd("AUTH PLAIN " + plain_ir(dovecot.route("alice"), "wrong-password"))
    assert want.startswith(b"-ERR [AUTH]")
    assert got == want


def test_routing_loop_to_the_proxy_itself(dovecot, proxy):
    me = "127.0.0.1:%d" % proxy.port
    name = "alice" + ("%" + me) * 8
    with proxy.connect(timeout=20) as c:
        t = time.monotonic()
        c.cmd_multi("CAPA")
        r = c.cmd("USER " + name)
        assert r.startswith(b"-ERR"), r
        assert time.monotonic() - t < 15
    with via(proxy, dovecot) as c:
        assert c.ok("STAT")


def test_commands_are_case_insensitive(dovecot, proxy):
    m = message("case", b"lower case client\n")
    dovecot.deliver("alice", m)
    with proxy.connect() as c:
        status, body = c.cmd_multi("capa")
        assert status.startswith(b"+OK") and b"PIPELINING" in body
        c.ok("user " + dovecot.route("alice"))
        c.ok("Pass " + PW)
        status, raw = c.cmd_multi("retr 1")
        assert unstuff(raw) == crlf(m)
    with proxy.connect() as c:
        assert c.cmd("auth plain " + plain_ir(dovecot.route("alice"), PW)).startswith(b"+OK")


def test_quit_before_login(proxy):
    with proxy.connect() as c:
        assert c.cmd("QUIT").startswith(b"+OK")
        assert c.is_closed(5)


def test_connect_timeout(proxy_factory):
    """A server whose accept queue is full drops our SYNs: --connect-timeout
    must end the wait with -ERR [SYS/TEMP]."""
    with blackhole() as port:
        proxy = proxy_factory(["--connect-timeout", "1"])
        with proxy.connect(timeout=10) as c:
            t = time.monotonic()
            r = c.cmd("USER alice%%127.0.0.1:%d" % port)
            took = time.monotonic() - t
        assert r.startswith(b"-ERR [SYS/TEMP] cannot connect to 127.0.0.1:%d" % port), r
        assert 0.8 < took < 5, took


# --------------------------------------------------------------------------
# a client that leaves while its upstream is still being found

def silent_dns():
    """A UDP 'DNS server' on loopback that never answers."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    return u


def test_silent_dns_server(proxy_factory):
    u = silent_dns()
    try:
        proxy = proxy_factory(["--connect-timeout", "2"], allow=("silent.example:*",),
                              dns="127.0.0.1:%d" % u.getsockname()[1])
        with proxy.connect(timeout=30) as c:
            t = time.monotonic()
            r = c.cmd("USER alice%silent.example:110")
            took = time.monotonic() - t
        assert r.startswith(b"-ERR [SYS/TEMP] cannot resolve silent.example"), r
        assert took < 20, took
        u.settimeout(1)
        assert u.recv(512), "the proxy never asked the configured DNS server"
    finally:
        u.close()


def test_client_leaves_while_resolving(dovecot, proxy_factory):
    u = silent_dns()
    try:
        proxy = proxy_factory(["--connect-timeout", "1"],
                              allow=("silent.example:*", "127.0.0.1:*"),
                              dns="127.0.0.1:%d" % u.getsockname()[1])
        for _ in range(5):
            c = proxy.connect()
            c.send(b"USER alice%silent.example:110\r\n")
            time.sleep(0.05)
            c.close()
        time.sleep(2)            # the lookups' deadlines pass with nobody waiting
        assert proxy.alive()
        with via(proxy, dovecot) as c:
            assert c.ok("STAT")
    finally:
        u.close()


def test_client_leaves_while_connecting(dovecot, proxy_factory):
    with blackhole() as port:
        proxy = proxy_factory(["--connect-timeout", "1"])
        for _ in range(5):
            c = proxy.connect()
            c.send(b"USER alice%%127.0.0.1:%d\r\n" % port)
            time.sleep(0.05)
            c.close()
        time.sleep(1.5)          # the connects time out with nobody waiting
        assert proxy.alive()
        with via(proxy, dovecot) as c:
            assert c.ok("STAT")
