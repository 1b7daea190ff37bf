"""The commands of the benchmark's contenders that are not the project: the lean loop and the peers.

- `lean`: `bench/lean_loop.py`, in this interpreter (it needs only confluent-kafka,
  rocksdict and orjson, which the project installs).
- `kstreams`: the Kafka Streams app of `bench/kstreams/`, built by Maven into
  `bench/kstreams/target/` when its jar is missing or older than its sources.
- `quix`: `bench/quix/quix_join.py` in its own virtualenv, `.venv-quix` at the repository
  root, made from the pinned `bench/quix/requirements.txt` when missing or out of date.

Both builds happen on demand (`make bench`, the bench test) and once: later runs reuse
them. A build that fails raises `PeerUnavailable` with the reason, which the benchmark
prints before it goes on without that peer. `python -m bench.peers` builds both.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEAN_LOOP = ROOT / "bench" / "lean_loop.py"
KSTREAMS = ROOT / "bench" / "kstreams"
KSTREAMS_JAR = KSTREAMS / "target" / "kstreams-join.jar"
QUIX_APP = ROOT / "bench" / "quix" / "quix_join.py"
QUIX_REQUIREMENTS = ROOT / "bench" / "quix" / "requirements.txt"
QUIX_VENV = ROOT / ".venv-quix"
BUILD_LOCK = ROOT / ".peers-build.lock"  # one build at a time (a test and `make bench`)
BUILD_TIMEOUT = 900.0
# The JVM gets a heap like the broker's smaller settings; a user would size it for the job.
JVM_OPTIONS = ["-Xms128m", "-Xmx512m", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"]


class PeerUnavailable(RuntimeError):
    """A peer could not be built or run here; the message says why."""


@contextmanager
def _build_lock() -> Iterator[None]:
    with BUILD_LOCK.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(name: str, command: list[str], cwd: Path) -> None:
    """Run one build step; raise `PeerUnavailable` with its output's tail if it fails."""
    tool = shutil.which(command[0]) or (command[0] if Path(command[0]).exists() else None)
    if tool is None:
        raise PeerUnavailable(f"{name}: `{command[0]}` is not installed")
    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        took = f"{name}: `{' '.join(command)}` took over {BUILD_TIMEOUT:.0f} s"
        raise PeerUnavailable(took) from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise PeerUnavailable(f"{name}: `{' '.join(command)}` failed ({done.returncode}):\n{tail}")


def lean_command() -> list[str]:
    """The lean reference loop, run as a script so it imports nothing from the project."""
    return [sys.executable, str(LEAN_LOOP)]


def kstreams_command() -> list[str]:
    """The Kafka Streams app's command; builds its jar first when missing or stale."""
    sources = [KSTREAMS / "pom.xml", *KSTREAMS.glob("src/**/*.java")]
    with _build_lock():
        newest = max(path.stat().st_mtime for path in sources)
        if not KSTREAMS_JAR.exists() or KSTREAMS_JAR.stat().st_mtime < newest:
            print("kstreams: building the jar with Maven (once)", file=sys.stderr, flush=True)
            _run("kstreams", ["mvn", "-q", "-B", "clean", "package"], KSTREAMS)
    if shutil.which("java") is None:
        raise PeerUnavailable("kstreams: `java` is not installed")
    classpath = f"{KSTREAMS_JAR}:{KSTREAMS_JAR.parent / 'lib'}/*"
    return ["java", *JVM_OPTIONS, "-cp", classpath, "bench.KStreamsJoin"]


def quix_command() -> list[str]:
    """The Quix Streams app's command; makes its virtualenv first when missing or stale."""
    digest = hashlib.sha256(QUIX_REQUIREMENTS.read_bytes()).hexdigest()
    stamp = QUIX_VENV / ".installed"
    python = QUIX_VENV / "bin" / "python"
    with _build_lock():
        if not python.exists() or not stamp.exists() or stamp.read_text() != digest:
            print("quix: making .venv-quix (once)", file=sys.stderr, flush=True)
            _run("quix", [sys.executable, "-m", "venv", "--clear", str(QUIX_VENV)], ROOT)
            _run("quix", [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], ROOT)
            pip = [str(python), "-m", "pip", "install", "-q", "-r", str(QUIX_REQUIREMENTS)]
            _run("quix", pip, ROOT)
            stamp.write_text(digest)
    # Quiet the warnings its dependencies print at import (authlib on httpx).
    return [str(python), "-W", "ignore", str(QUIX_APP)]


COMMANDS: dict[str, Callable[[], list[str]]] = {
    "lean": lean_command,
    "kstreams": kstreams_command,
    "quix": quix_command,
}


def main() -> int:
    """Build every peer; print each one's command or why it is unavailable."""
    failed = 0
    for name, command in COMMANDS.items():
        try:
            print(f"{name}: {' '.join(command())}")
        except PeerUnavailable as error:
            failed += 1
            print(f"{name}: unavailable: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
