# The proxy offers PIPELINING to clients even when the server does not: it
# then sends such a server one command at a time, in order.
import select

from harness import read_replies


def route(fake):
    return "alice%%127.0.0.1:%d" % fake.port


def serial_server(violations):
    """A server without PIPELINING that notes any command arriving before its
    previous one was answered (it peeks at its socket before each answer)."""
    def script(conn):
        conn.login(capa=b"USER\r\nUIDL\r\nTOP\r\n")
        n = 0
        while True:
            l = conn.line(timeout=10)
            if l is None:
                return
            # Anything already waiting is a command sent before this reply.
            r, _, _ = select.select([conn.sock], [], [], 0.05)
            if conn.buf or r:
                violations.append(l)
            verb = l.split(b" ")[0].strip().upper()
            if verb == b"QUIT":
                conn.send(b"+OK bye\r\n")
                return
            n += 1
            if verb == b"RETR":
                conn.send(b"+OK 12 octets\r\nline %d\r\n..\r\n.\r\n" % n)
            else:
                conn.send(b"+OK %d\r\n" % n)
    return script


def test_server_without_pipelining_gets_one_command_at_a_time(proxy_factory, fake_upstream):
    violations = []
    fake = fake_upstream(serial_server(violations))
    proxy = proxy_factory()
    with proxy.connect() as c:
        c.ok("USER " + route(fake))
        c.ok("PASS pw")
        cmds = ["NOOP", "RETR 1", "NOOP", "RETR 2"] * 10 + ["QUIT"]
        c.send("".join(x + "\r\n" for x in cmds).encode())
        replies = read_replies(c, cmds)
    assert violations == []
    # Replies in order, numbered by the server as it saw the commands.
    for i, (cmd, (status, body)) in enumerate(zip(cmds[:-1], replies)):
        if cmd.startswith("RETR"):
            assert status == b"+OK 12 octets\r\n"
            assert body == b"line %d\r\n..\r\n.\r\n" % (i + 1)
        else:
            assert status == b"+OK %d\r\n" % (i + 1)
    assert replies[-1][0].startswith(b"+OK bye")
    fake.check()


def test_pipelined_commands_reach_a_pipelining_server_together(proxy_factory, fake_upstream):
    """With PIPELINING offered, the proxy does not hold commands back."""
    seen = []

    def script(conn):
        conn.login()
        conn.sock.settimeout(5)
        data = b""
        while data.count(b"\n") < 3:
            d = conn.sock.recv(4096)
            if not d:
                return
            data += d
        seen.append(data)
        conn.send(b"+OK 1\r\n+OK 2\r\n+OK bye\r\n")
    fake = fake_upstream(script)
    proxy = proxy_factory()
    with proxy.connect() as c:
        c.ok("USER " + route(fake))
        c.ok("PASS pw")
        c.send(b"NOOP\r\nNOOP\r\nQUIT\r\n")
        assert [r[0] for r in read_replies(c, ["NOOP", "NOOP", "QUIT"])] == [
            b"+OK 1\r\n", b"+OK 2\r\n", b"+OK bye\r\n"]
    # All three were sent before the first reply existed.
    assert seen == [b"NOOP\r\nNOOP\r\nQUIT\r\n"]
    fake.check()
