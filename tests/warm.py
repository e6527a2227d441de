"""Python processes forked from a warm interpreter instead of started afresh.

A test that runs a driver or a command in a process of its own (to SIGKILL it, to run it beside
another, to give it a cluster's environment) pays seconds of start-up for each: the interpreter, then
torch, Optuna, Ray and the package imported again. :class:`WarmPython` keeps interpreters that made
those imports once and started nothing else (no Ray, no sweep, no thread of a test), and forks each
process from one: the child takes the working directory, environment, ``sys.argv`` and output files
it is given, runs its code as ``__main__`` and exits as Python would (``sys.exit`` and atexit
handlers included), or dies of a signal. It is a process of its own like any other; only the
imports were made before it was born.

Ray reads some of its settings (``RAY_AUTH_MODE`` among them) when it is imported, so a child's
``RAY_*`` variables must be those its interpreter started with: there is one interpreter per set of
them, started when first needed. Not for tests of what a fresh interpreter does (what importing
prints or imports, signal dispositions at start-up): those start one.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `python -m search ...`, as sys.argv[0] names it then.
SEARCH_MAIN = str(REPO / "search" / "__main__.py")
CLI = "import sys\nfrom search.cli import main\nsys.exit(main())\n"

PRELOAD = """
import search.cli, search.config, search.export, search.status, search.testing, search.sweep
import search.sweep.backends.actors, search.sweep.backends.simulated
import optuna, sklearn.datasets, torch, trainers.data, yaml
from search.tables import load_table
load_table(sys.argv[1])  # cached per path: the simulated backend's table, parsed once
"""

ZYGOTE = """
import json, os, sys, traceback
exec(compile(sys.argv[2], "<preload>", "exec"))
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "wait":
        _, status = os.waitpid(req["pid"], 0)
        print(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)
        continue
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        continue
    try:  # the child: never back to the loop
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for fd, name, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            os.dup2(os.open(name, flags), fd)
        sys.argv = req["argv"]
        exec(compile(req["code"], sys.argv[0], "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)
"""


@dataclass
class Result:
    returncode: int  # negative: killed by that signal
    stdout: str
    stderr: str


class Forked:
    """One forked process (``subprocess.Popen``'s ``poll`` and ``wait``, outputs read from files)."""

    def __init__(self, zygote: "_Zygote", pid: int, stdout: Path, stderr: Path):
        self.zygote, self.pid, self.stdout, self.stderr = zygote, pid, stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """None while it runs; once it has ended, its exit status."""
        if self.returncode is None:
            try:
                state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                state = "Z"
            if state in ("Z", "X"):
                self.wait()
        return self.returncode

    def wait(self, timeout: float = 600) -> Result:
        if self.returncode is None:
            self.returncode = self.zygote.wait(self.pid, timeout)
        return Result(self.returncode, self.stdout.read_text(), self.stderr.read_text())


class _Zygote:
    def __init__(self, env: dict[str, str], folder: Path):
        from studies import NBM_TABLE

        self.folder = folder
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(NBM_TABLE), PRELOAD], cwd=folder, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready", "the warm interpreter did not start"

    def _ask(self, request: dict, timeout: float | None = None) -> str | None:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        return self.proc.stdout.readline()

    def start(self, request: dict) -> int:
        return int(self._ask({"op": "start", **request}))

    def wait(self, pid: int, timeout: float) -> int:
        answer = self._ask({"op": "wait", "pid": pid}, timeout)
        if answer is None:
            os.kill(pid, signal.SIGKILL)
            self.proc.stdout.readline()
            raise AssertionError(f"process {pid} forked for a test did not end within {timeout:g} s")
        return int(answer)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class WarmPython:
    """Forks processes from warm interpreters, one per set of ``RAY_*`` variables (see the module)."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        self.zygotes: dict[tuple, _Zygote] = {}

    def _zygote(self, env: dict[str, str]) -> _Zygote:
        key = tuple(sorted((k, v) for k, v in env.items() if k.startswith("RAY_")))
        if key not in self.zygotes:
            zygote_env = {k: v for k, v in env.items() if k != "EFFNAS_KILL_AT"}
            zygote_env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'tests'}"
            self.zygotes[key] = _Zygote(zygote_env, self.folder)
        return self.zygotes[key]

    def start(self, code: str, argv: list[str], env: dict[str, str], cwd: Path) -> Forked:
        """Like ``subprocess.Popen([python, script, *argv[1:]], env=env, cwd=cwd)`` with ``code`` as the
        script (``CLI`` and ``SEARCH_MAIN`` as ``argv[0]``: ``python -m search``)."""
        self.count += 1
        out, err = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        zygote = self._zygote(env)
        pid = zygote.start({"code": code, "argv": [str(a) for a in argv], "env": env, "cwd": str(cwd),
                            "stdout": str(out), "stderr": str(err)})
        return Forked(zygote, pid, out, err)

    def run(self, code: str, argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> Result:
        """``start`` and ``wait``: like ``subprocess.run(..., capture_output=True, text=True)``."""
        return self.start(code, argv, env, cwd).wait(timeout)

    def search(self, *args: str, env: dict[str, str], cwd: Path, timeout: float = 600) -> Result:
        """``python -m search *args``."""
        return self.run(CLI, [SEARCH_MAIN, *args], env, cwd, timeout)

    def close(self) -> None:
        for zygote in self.zygotes.values():
            zygote.close()
