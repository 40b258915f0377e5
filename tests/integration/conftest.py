# pytest fixtures for the integration tests: per-test log dirs, process
# clean-up, a private Dovecot, pop3proxyd instances and hostile fake upstreams.
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (LOG_ROOT, Dovecot, FakeUpstream, ProcessSet, Proxy,  # noqa: E402
                     USERS, tail, world_tmpdir)

_PROXIES = pytest.StashKey()
_DOVECOTS = pytest.StashKey()


def _safe(name):
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)[:120]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for p in item.stash.get(_PROXIES, []):
        if p.proc is not None:
            rep.sections.append(("pop3proxyd log tail: %s" % p.log, tail(p.log, 60)))
    for d in item.stash.get(_DOVECOTS, []):
        rep.sections.append(("dovecot log tail: %s" % d.log, tail(d.log, 15)))


@pytest.fixture
def logdir(request):
    mod = Path(str(request.node.fspath)).stem
    d = LOG_ROOT / _safe("%s.%s" % (mod, request.node.name))
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


@pytest.fixture
def procs(logdir):
    ps = ProcessSet(logdir)
    yield ps
    ps.close()


@pytest.fixture
def wtmp():
    """A temp dir that unprivileged users can reach (Dovecot, getmail)."""
    d = world_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _dovecot(request, wtmp, procs, name, **kw):
    d = Dovecot(wtmp / name, procs, **kw)
    for u, p in USERS.items():
        d.add_user(u, p)
    request.node.stash.setdefault(_DOVECOTS, []).append(d)
    return d


@pytest.fixture
def dovecot(request, wtmp, procs):
    """A running Dovecot with alice, bob and john@example.com (no mail yet)."""
    d = _dovecot(request, wtmp, procs, "dv")
    d.start()
    yield d
    d.stop()


@pytest.fixture
def dovecot_factory(request, wtmp, procs):
    """Start extra Dovecots (e.g. a second upstream)."""
    started = []

    def make(**kw):
        d = _dovecot(request, wtmp, procs, "dv%d" % (len(started) + 2), **kw)
        started.append(d)
        return d.start()
    yield make
    for d in started:
        d.stop()


SANITIZER_REPORT = r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|LeakSanitizer has encountered"


@pytest.fixture
def proxy_factory(request, procs):
    """start(flags=(), **Proxy kwargs) -> a running Proxy.

    Teardown sends SIGTERM to every proxy still running and fails the test
    (as an error) unless each exits with status 0 within 5 s; a proxy that
    died during the test without being signalled (a crash) fails it too.
    A test that checks the exit itself sets proxy.expect_exit = True.
    """
    started = []

    def start(flags=(), **kw):
        p = Proxy(procs, flags=flags, **kw)
        request.node.stash.setdefault(_PROXIES, []).append(p)
        started.append(p)
        return p.start()
    yield start
    problems = []
    for p in started:
        if p.proc is None:
            continue
        if p.proc.poll() is not None and not (p.expect_exit or p.signalled):
            problems.append("proxy exited during the test, unasked, with status %s"
                            % p.proc.returncode)
            continue
        rc, took = p.stop(5)
        if rc is None:
            problems.append("proxy did not exit within 5 s of SIGTERM (killed)")
        elif rc != 0 and not p.expect_exit:
            problems.append("proxy exited with status %s after SIGTERM" % rc)
    for p in started:   # the ASan+UBSan build (make test-san) reports here
        if p.proc is not None and re.search(SANITIZER_REPORT, p.log_text()):
            problems.append("sanitizer report in the proxy log %s" % p.log)
    if problems:
        pytest.fail("; ".join(problems) + "\n" + "\n".join(tail(p.log, 30) for p in started if p.proc),
                    pytrace=False)


@pytest.fixture
def proxy(proxy_factory):
    """A routing-mode proxy allowing 127.0.0.1:* upstreams."""
    return proxy_factory()


@pytest.fixture
def fake_upstream():
    """fake_upstream(script) -> a running FakeUpstream (closed at teardown)."""
    made = []

    def make(script):
        f = FakeUpstream(script)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()
