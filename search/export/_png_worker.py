"""Draws ``pareto.png`` for `export` in a process of its own (see ``_png.py``): the points arrive on
stdin as JSON columns, the PNG leaves on stdout.

Run as a script, not imported: its folder is then the first entry of ``sys.path``, so ``_plots``
is loaded alone, without the ``search`` package (and Optuna, NumPy's users, the study) that
`export` has loaded already; this process only adds matplotlib."""
import json
import sys

COLUMNS = ("trial", "family", "accuracy", "macs", "params", "front")  # as _png.COLUMNS


def main() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401  (while the study is read)
    from matplotlib.figure import Figure  # noqa: F401

    from _plots import png

    payload = json.loads(sys.stdin.buffer.read() or b"null")
    if payload is None:  # export went away before sending anything
        return
    points = [dict(zip(COLUMNS, row)) for row in zip(*(payload[c] for c in COLUMNS))]
    sys.stdout.buffer.write(png(points, payload["title"], payload["curve"]))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
