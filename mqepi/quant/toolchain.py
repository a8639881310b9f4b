"""The llama.cpp toolchain: built from source from a pinned registry package, cached.

No Debian package or binary wheel ships the llama.cpp tools, and no code may fetch from a
source hub, so the source comes from the ``llama-cpp-python`` sdist on PyPI, which vendors
the whole llama.cpp CMake project. :func:`ensure` downloads it (pip, no dependencies),
builds the tools mqepi needs statically, copies them to a cache folder keyed by the package
version and build flags, and records the vendored llama.cpp commit. A second call finds the
cache and returns at once.

Cache: ``$MQEPI_CACHE`` (default ``~/.cache/mqepi``) ``/llama.cpp/<version>-<flags hash>/``
holding ``bin/`` and ``toolchain.json``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from mqepi.errors import MqepiError
from mqepi.rig.executor import int_arg

#: The registry package whose sdist vendors llama.cpp, and its version.
PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
#: Tools built, by CMake target name (the RPC server is ggml-rpc-server in 2026 builds).
TARGETS = ("llama-quantize", "llama-perplexity", "llama-bench", "llama-tokenize", "ggml-rpc-server")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_RPC=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
#: The same vendored tree built as shared libraries for the scoring engine
#: (:mod:`mqepi.quality.engine`, through llama-cpp-python's ctypes bindings): libllama and
#: the ggml libraries it links, RPC backend included. Load order (dependencies first).
LIBRARIES = ("ggml-base", "ggml-cpu", "ggml-rpc", "ggml", "llama")
LIB_FLAGS = tuple(f for f in CMAKE_FLAGS if not f.startswith("-DBUILD_SHARED_LIBS")) + (
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_COMMON=OFF",
)
CACHE_ENV = "MQEPI_CACHE"
MANIFEST = "toolchain.json"


class ToolchainError(MqepiError):
    """The toolchain could not be obtained or built."""


@dataclass(frozen=True)
class Toolchain:
    """A built llama.cpp toolchain."""

    bin_dir: str
    package: str
    version: str
    llama_cpp_commit: str
    sdist_sha256: str
    cmake_flags: list[str]
    targets: list[str]
    built_at_ns: int
    build_s: float

    def tool(self, name: str) -> Path:
        """Path of one built tool; a clear error if it is not part of this toolchain."""
        path = Path(self.bin_dir) / name
        if not path.is_file():
            raise ToolchainError(f"{name} is not in the toolchain at {self.bin_dir} (built: {', '.join(self.targets)})")
        return path


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mqepi")


def toolchain_dir() -> Path:
    key = hashlib.sha256(" ".join(CMAKE_FLAGS + TARGETS).encode()).hexdigest()[:10]
    return cache_root() / "llama.cpp" / f"{VERSION}-{key}"


def cached() -> Toolchain | None:
    """The cached toolchain, if complete."""
    manifest = toolchain_dir() / MANIFEST
    if not manifest.is_file():
        return None
    toolchain = Toolchain(**json.loads(manifest.read_text()))
    if all((Path(toolchain.bin_dir) / t).is_file() for t in TARGETS):
        return toolchain
    return None


def ensure(progress: Callable[[str], None] = lambda line: None, jobs: int | None = None) -> Toolchain:
    """Return the cached toolchain, building it first if needed (minutes on 2 cores)."""
    found = cached()
    if found is not None:
        return found
    start = time.perf_counter()
    target_dir = toolchain_dir()
    with _built(CMAKE_FLAGS, TARGETS, "", progress, jobs) as (build, commit, digest):
        staging = target_dir.with_name(target_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        for target in TARGETS:
            built = next((p for p in build.rglob(target) if p.is_file() and os.access(p, os.X_OK)), None)
            if built is None:
                raise ToolchainError(f"the build finished but {target} was not produced (see the cmake output above)")
            shutil.copy2(built, staging / "bin" / target)
        toolchain = Toolchain(
            bin_dir=str(target_dir / "bin"),
            package=PACKAGE,
            version=VERSION,
            llama_cpp_commit=commit,
            sdist_sha256=digest,
            cmake_flags=list(CMAKE_FLAGS),
            targets=list(TARGETS),
            built_at_ns=time.time_ns(),
            build_s=round(time.perf_counter() - start, 1),
        )
        (staging / MANIFEST).write_text(json.dumps(asdict(toolchain), indent=2))
        shutil.rmtree(target_dir, ignore_errors=True)
        staging.rename(target_dir)
    progress(f"toolchain ready in {toolchain.bin_dir}")
    return toolchain


@contextmanager
def _built(flags: tuple[str, ...], targets: tuple[str, ...], what: str, progress: Callable[[str], None],
           jobs: int | None) -> Iterator[tuple[Path, str, str]]:
    """Download the pinned sdist, extract it, configure its vendored llama.cpp with ``flags`` and
    build ``targets`` in a temporary folder; yields (build folder, llama.cpp commit, sdist sha256)
    while the folder exists."""
    sdist = registry_download(PACKAGE, VERSION, source=True, progress=progress)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    with tempfile.TemporaryDirectory(prefix="mqepi-llama-build-") as tmp:
        progress(f"extracting {sdist.name}")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        (root,) = Path(tmp).iterdir()
        source = root / "vendor" / "llama.cpp"
        commit = vendored_commit(root / "CHANGELOG.md", VERSION)
        build = Path(tmp) / "build"
        _run(["cmake", "-S", str(source), "-B", str(build), *flags], progress, f"cmake configure{what}")
        _run(["cmake", "--build", str(build), "--config", "Release", "-j", int_arg(jobs or os.cpu_count() or 2, "jobs", 1),
              "--target", *targets], progress, f"cmake build{what}")
        yield build, commit, digest


def library_dir() -> Path:
    """Where the shared libraries of the pinned vendored tree are cached."""
    key = hashlib.sha256(" ".join(LIB_FLAGS + LIBRARIES).encode()).hexdigest()[:10]
    return cache_root() / "llama.cpp" / f"{VERSION}-lib-{key}"


def cached_library() -> Path | None:
    """The cached shared-library folder, if complete."""
    lib = library_dir() / "lib"
    if (library_dir() / MANIFEST).is_file() and all((lib / f"lib{name}.so").is_file() for name in LIBRARIES):
        return lib
    return None


def ensure_library(progress: Callable[[str], None] = lambda line: None, jobs: int | None = None) -> Path:
    """The folder holding ``libllama.so`` and its ggml libraries, built once from the same
    sdist (same llama.cpp commit) as the tools, shared, RPC backend included (minutes)."""
    found = cached_library()
    if found is not None:
        return found
    start = time.perf_counter()
    target_dir = library_dir()
    with _built(LIB_FLAGS, ("llama", "ggml-rpc"), " (shared libraries)", progress, jobs) as (build, commit, digest):
        staging = target_dir.with_name(target_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "lib").mkdir(parents=True)
        for name in LIBRARIES:
            built = next((p for p in build.rglob(f"lib{name}.so*") if p.is_file() and not p.is_symlink()), None)
            if built is None:
                raise ToolchainError(f"the build finished but lib{name}.so was not produced (see the cmake output above)")
            shutil.copy2(built, staging / "lib" / built.name)
            soname = staging / "lib" / f"lib{name}.so"
            if built.name != soname.name:
                for link in {p.name for p in build.rglob(f"lib{name}.so*") if p.is_symlink()} | {soname.name}:
                    (staging / "lib" / link).unlink(missing_ok=True)
                    (staging / "lib" / link).symlink_to(built.name)
        manifest = {"package": PACKAGE, "version": VERSION, "llama_cpp_commit": commit, "sdist_sha256": digest,
                    "cmake_flags": list(LIB_FLAGS), "libraries": list(LIBRARIES), "built_at_ns": time.time_ns(),
                    "build_s": round(time.perf_counter() - start, 1)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(target_dir, ignore_errors=True)
        staging.rename(target_dir)
    progress(f"shared libraries ready in {target_dir / 'lib'}")
    return target_dir / "lib"


def bindings_installed() -> bool:
    """True if llama-cpp-python's ctypes bindings (of :data:`VERSION`) are importable here."""
    try:
        return importlib.metadata.version(PACKAGE) == VERSION
    except importlib.metadata.PackageNotFoundError:
        return False


def ensure_bindings(progress: Callable[[str], None] = lambda line: None) -> None:
    """Install llama-cpp-python's Python bindings from the cached sdist **without** its native
    build (``CMAKE_ARGS=-DLLAMA_BUILD=OFF``: seconds): they load the libraries of
    :func:`ensure_library` through ``LLAMA_CPP_LIB_PATH``, one build serving both."""
    if bindings_installed():
        return
    sdist = registry_download(PACKAGE, VERSION, source=True, progress=progress)
    progress(f"installing the {PACKAGE} {VERSION} bindings (no native build)")
    env = {**os.environ, "CMAKE_ARGS": "-DLLAMA_BUILD=OFF"}
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(sdist)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not bindings_installed():
        raise ToolchainError(f"installing the {PACKAGE} bindings failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def ensure_engine(progress: Callable[[str], None] = lambda line: None, jobs: int | None = None) -> Path:
    """What the scoring engine needs on this machine: the shared libraries (built once) and
    the bindings (installed once). Returns the library folder."""
    lib = ensure_library(progress, jobs)
    ensure_bindings(progress)
    return lib


def vendored_commit(changelog: Path, version: str) -> str:
    """The llama.cpp commit the package's changelog names for ``version``."""
    text = changelog.read_text(errors="replace")
    section = re.search(rf"^## \[{re.escape(version)}\](.*?)(?=^## \[)", text, re.S | re.M)
    match = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section.group(1)) if section else None
    if not match:
        raise ToolchainError(f"{changelog} names no llama.cpp commit for {PACKAGE} {version}")
    return match.group(1)


def registry_download(package: str, version: str, *, source: bool = False,
                      progress: Callable[[str], None] = lambda line: None) -> Path:
    """A package file from the package registry, without its dependencies, cached in
    ``$MQEPI_CACHE/downloads``: the source distribution (``source=True``) or the wheel.
    Registry packages are the only place mqepi fetches assets from."""
    downloads = cache_root() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    stem = f"{package.replace('-', '_')}-{version}"
    pattern = f"{stem}.tar.gz" if source else f"{stem}-*.whl"
    found = sorted(downloads.glob(pattern))
    if found:
        return found[0]
    progress(f"downloading {package}=={version} ({'source' if source else 'wheel'}) from the package registry, no dependencies")
    kind = ["--no-binary", ":all:"] if source else ["--only-binary=:all:"]
    _run([sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--disable-pip-version-check",
          f"{package}=={version}", "-d", str(downloads)], progress, f"pip download {package}=={version}")
    found = sorted(downloads.glob(pattern))
    if not found:
        raise ToolchainError(f"pip download {package}=={version} produced no {pattern} in {downloads}")
    return found[0]


def _run(cmd: list[str], progress: Callable[[str], None], what: str) -> None:
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        raise ToolchainError(f"{what} needs {cmd[0]!r}, which is not installed (apt-get install cmake g++)")
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-30:]
            progress(line)
    if proc.returncode != 0:
        raise ToolchainError(f"{what} failed (exit {proc.returncode}); last output:\n" + "\n".join(tail))
