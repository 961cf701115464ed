"""Capture what C++ libraries and converters print, at the file-descriptor level.

TFLM, TensorFlow and onnx2tf write straight to fds 1 and 2, past ``sys.stdout``; the stages
must print nothing, and a failure message needs what they said.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


class Captured:
    text: str = ""


@contextlib.contextmanager
def captured_output():
    """Redirect fds 1 and 2 to a temp file for the block; the text is in ``.text`` afterwards."""
    result = Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink, \
            os.fdopen(os.dup(sink.fileno()), "w", buffering=1) as text:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            # sys.stdout may not be fd 1 (an embedding app, pytest): catch Python prints too
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield result
        finally:
            text.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            result.text = sink.read().decode("utf-8", "replace")
