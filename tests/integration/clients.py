# Real POP3 clients driven from tests: fetchmail, mpop, getmail6, curl.
# Each writes a temp config, runs once, and returns the delivered messages.
"""Every runner returns (exit status, [message bytes in retrieval order], output).

Clients change messages on delivery (fetchmail and mpop hand LF text to the
MDA, getmail adds Return-Path), so tests compare a client's delivery through
the proxy with the same client's delivery straight from Dovecot.
"""

import os
import pwd
import re
import urllib.parse
from pathlib import Path

from harness import MAIL_USER

# An MDA that stores each message in the next numbered file of its folder:
# fetchmail and mpop deliver one message at a time, so the numbers give the
# order of retrieval.
_MDA = """#!/bin/sh
set -e
dir="$1"
n=$(ls "$dir" | wc -l)
cat > "$dir/tmp.$$"
mv "$dir/tmp.$$" "$dir/$(printf %06d $((n + 1)))"
"""


def _mda(work):
    """(work dir, MDA command, folder it fills) for one client run."""
    work = Path(work)
    out = work / "delivered"
    out.mkdir(parents=True, exist_ok=True)
    script = work / "mda.sh"
    script.write_text(_MDA)
    script.chmod(0o755)
    return work, "%s %s" % (script, out), out


def _numbered(out):
    return [f.read_bytes() for f in sorted(out.iterdir()) if f.name.isdigit()]


def _rcquote(s):
    # fetchmail rc strings: backslash escapes inside double quotes.
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def fetchmail(procs, work, host, port, user, password, keep=True, timeout=120):
    work, mda, out = _mda(work)
    rc = work / "fetchmailrc"
    # sslproto '' keeps fetchmail from trying STLS on its own.
    rc.write_text("poll %s port %d proto pop3 auth password\n"
                  "  user %s password %s\n"
                  "  sslproto '' %s\n"
                  "  mda %s\n" % (host, port, _rcquote(user), _rcquote(password),
                                  "keep" if keep else "nokeep",
                                  _rcquote(mda)))
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(work), HOME=str(work))
    # root's default lock is /var/run/fetchmail.pid, shared by every run on
    # the machine: a private --pidfile keeps parallel runs apart.
    status, text = procs.run(["fetchmail", "-f", rc, "--pidfile", work / "fetchmail.pid",
                              "--nosyslog", "--invisible", "-v",
                              "--nodetach", "--all", "-k" if keep else "--nokeep"],
                             "fetchmail", timeout=timeout, env=env)
    return status, _numbered(out), text


def mpop(procs, work, host, port, user, password, keep=True, timeout=120):
    work, mda, out = _mda(work)
    rc = work / "mpoprc"
    rc.write_text("account default\n"
                  "host %s\nport %d\nuser %s\npassword %s\n"
                  "auth user\ntls off\nreceived_header off\n"
                  "keep %s\nonly_new off\nuidls_file %s\n"
                  "delivery mda %s\n" % (host, port, _rcquote(user), _rcquote(password),
                                          "on" if keep else "off", work / "uidls",
                                          _rcquote(mda)))
    rc.chmod(0o600)
    status, text = procs.run(["mpop", "-C", rc, "--debug", "-a"], "mpop", timeout=timeout,
                             env=dict(os.environ, HOME=str(work)))
    return status, _numbered(out), text


def getmail(procs, work, host, port, user, password, keep=True, timeout=120):
    work = Path(work)
    md = work / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    state = work / "getmail-state"
    state.mkdir(exist_ok=True)
    # getmail refuses to deliver as root; it delivers as the mail user.
    pw = pwd.getpwnam(MAIL_USER)
    for p in (md, md / "new", md / "cur", md / "tmp"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    # getmail reads its rc file without %-interpolation: names go in as is.
    rc = work / "getmailrc"
    rc.write_text("[retriever]\ntype = SimplePOP3Retriever\n"
                  "server = %s\nport = %d\nusername = %s\npassword = %s\n\n"
                  "[destination]\ntype = Maildir\npath = %s/\nuser = %s\n\n"
                  "[options]\ndelete = %s\nread_all = true\ndelivered_to = false\n"
                  "received = false\nverbose = 2\n" % (
                      host, port, user, password,
                      md, MAIL_USER, "false" if keep else "true"))
    status, text = procs.run(["getmail", "--getmaildir", state, "--rcfile", rc], "getmail",
                             timeout=timeout, env=dict(os.environ, HOME=str(work)))
    # Maildir names carry a per-run delivery counter Q<n> in retrieval order.
    files = sorted((md / "new").iterdir(),
                   key=lambda f: int(re.search(r"Q(\d+)", f.name).group(1)))
    return status, [f.read_bytes() for f in files], text


def curl(procs, work, host, port, user, password, msgno, sasl_ir=False, timeout=60):
    """(status, retrieved bytes, verbose log) for RETR msgno.

    Credentials go in the URL, percent-encoded: curl's -u cannot carry a ':'
    in the user name.  curl logs in with AUTH PLAIN (continuation, or an
    initial response with sasl_ir) since the proxy offers SASL PLAIN."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / ("curl-%s.out" % msgno)
    cred = urllib.parse.quote(user, safe="") + ":" + urllib.parse.quote(password, safe="")
    url = "pop3://%s@%s:%d/%s" % (cred, host, port, msgno)
    argv = ["curl", "-sS", "-v", "--max-time", str(timeout)]
    if sasl_ir:
        argv.append("--sasl-ir")
    argv += ["-o", out, url]
    status, text = procs.run(argv, "curl", timeout=timeout + 10)
    data = out.read_bytes() if out.exists() else None
    return status, data, text
