"""``pareto.png`` drawn in a process of its own, while `export` reads the study and writes the rest.

Importing matplotlib and drawing tens of thousands of points take as long as everything else
`export` does; on a machine with a second core they need not add to it. :func:`start` launches the
drawing process at once (it imports matplotlib while the study is read), :meth:`PngWorker.send`
gives it the points, and :meth:`PngWorker.result` returns the PNG's bytes, which `export` writes
itself, atomically, where it always did (a killed `export` leaves no picture behind). Whatever goes
wrong with the process, the picture is drawn here instead.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

__all__ = ["PngWorker", "start", "COLUMNS"]

COLUMNS = ("trial", "family", "accuracy", "macs", "params", "front")  # what _png_worker.py receives


class PngWorker:
    def __init__(self, proc: subprocess.Popen | None):
        self.proc, self.sent = proc, None

    def send(self, points: list[dict], title: str, curve: dict | None) -> None:
        """The picture's content; the process starts drawing."""
        self.sent = (points, title, curve)
        if self.proc is None:
            return
        payload = {"title": title, "curve": curve, **{c: [p[c] for p in points] for c in COLUMNS}}
        pipe, self.proc.stdin = self.proc.stdin, None  # communicate() later reads stdout alone
        try:
            with pipe:
                pipe.write(json.dumps(payload).encode())
        except OSError:  # it died: draw here
            self.stop()

    def result(self) -> bytes:
        """The PNG of what was sent (drawn here if the process could not)."""
        if self.proc is not None:
            out, _ = self.proc.communicate()
            if self.proc.returncode == 0 and out.startswith(b"\x89PNG"):
                return out
            self.proc = None
        from search.export._plots import png

        return png(*self.sent)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def start() -> PngWorker:
    """The drawing process, importing matplotlib already; a worker that draws here if it cannot start."""
    try:  # a script of its own (not a module of the package): it loads matplotlib and _plots.py alone
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_png_worker.py"))],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        proc = None
    return PngWorker(proc)
