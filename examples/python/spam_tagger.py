#!/usr/bin/python3
# spam_tagger.py: example pop3proxyd filter in Python: prefixes the Subject of
# messages a spam scanner marked (X-Spam-Flag: YES) with "[SPAM] ".
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pop3filter as pf  # noqa: E402

PREFIX = "[SPAM] "


def on_message(req):
    flag = req.header("X-Spam-Flag", "").strip().upper()
    if flag != "YES":
        return pf.accept(pf.add_header("X-Spam-Tagger", "checked"))
    subject = req.header("Subject", "")
    if subject.startswith(PREFIX):
        return pf.accept(reason="already tagged")
    return pf.accept(pf.change_header("Subject", PREFIX + subject),
                     reason="X-Spam-Flag: YES", tags=["spam"])


if __name__ == "__main__":
    pf.main("spam_tagger.py/1.0", on_message, actions=["edit_headers"])
