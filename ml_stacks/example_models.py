"""Example models shipped in ``examples/models/<name>/`` and their model archives.

An example model is a directory in the layout the SageMaker framework
containers expect once ``model.tar.gz`` is extracted to ``/opt/ml/model``:
model files at the root and the handler in ``code/inference.py``. Beside
them, files that stay out of the archive: ``payload.json`` (the request
``make smoke`` sends) and ``train.py`` / ``README.md`` if present.

The archive is built at synth time and is reproducible: members sorted, every
mtime 0, owner root, fixed modes, no gzip file name or timestamp. Two builds
from the same files are byte-identical on one machine. Different zlib builds
may compress differently, so :func:`archive_digest` (the CDK asset hash) is
taken over the *uncompressed* tar, which is identical everywhere: the S3 key
of the example model only changes when its files do.

``python -m ml_stacks.example_models build NAME --out model.tar.gz`` writes
the same archive, e.g. to upload it as a stand-in artifact for staging.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples" / "models"
HANDLER = "code/inference.py"
PAYLOAD = "payload.json"
# In the example's directory but not the model: what smoke sends, how it was trained.
NOT_ARCHIVED = frozenset({PAYLOAD, "train.py", "README.md"})
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SKIPPED_DIRS = frozenset({"__pycache__"})


def example_dir(name: str) -> Path:
    return EXAMPLES_DIR / name


def payload_path(name: str) -> Path:
    """The request body ``make smoke`` sends to an endpoint serving ``name``."""
    return example_dir(name) / PAYLOAD


def available() -> tuple[str, ...]:
    """Names of the example models in the repository."""
    if not EXAMPLES_DIR.is_dir():
        return ()
    return tuple(sorted(d.name for d in EXAMPLES_DIR.iterdir()
                        if NAME_RE.match(d.name) and (d / HANDLER).is_file()
                        and (d / PAYLOAD).is_file()))


def archive_members(name: str) -> list[tuple[str, Path]]:
    """(path in the archive, file) of every file of the model, sorted by archive path."""
    root = example_dir(name)
    members = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if (path.is_dir() or relative.as_posix() in NOT_ARCHIVED
                or any(part in _SKIPPED_DIRS or part.startswith(".") for part in relative.parts)
                or path.suffix == ".pyc"):
            continue
        members.append((relative.as_posix(), path))
    return sorted(members)


def _tar_info(arcname: str, *, directory: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def tar_bytes(name: str) -> bytes:
    """The uncompressed tar of the model: identical for identical files, everywhere."""
    members = archive_members(name)
    if not any(arcname == HANDLER for arcname, _ in members):
        raise FileNotFoundError(str(example_dir(name) / HANDLER))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        directories: set[str] = set()
        for arcname, path in members:
            parts = arcname.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    tar.addfile(_tar_info(directory + "/", directory=True))
            data = path.read_bytes()
            tar.addfile(_tar_info(arcname, directory=False, size=len(data)), io.BytesIO(data))
    return buffer.getvalue()


def archive_bytes(name: str) -> bytes:
    """``model.tar.gz`` of the model: gzip without file name and with mtime 0."""
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=9) as out:
        out.write(tar_bytes(name))
    return compressed.getvalue()


def archive_digest(name: str) -> str:
    """SHA-256 of the uncompressed tar: the asset hash of the model."""
    return hashlib.sha256(tar_bytes(name)).hexdigest()


def build_archive(name: str, out: Path) -> Path:
    """Write ``model.tar.gz`` of ``name`` to ``out`` (atomically) and return ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(handle, "wb") as stream:
        stream.write(archive_bytes(name))
    os.replace(temporary, out)
    return out


def staged_archive(name: str) -> Path:
    """The archive in a content-addressed temporary directory, for a CDK file asset.

    CDK copies the file into the cloud assembly when the asset is created;
    the same content always lands at the same path, so parallel and repeated
    synths share it instead of leaving a new file each time.
    """
    out = Path(tempfile.gettempdir()) / "ml-infra-example-models" / archive_digest(name) / "model.tar.gz"
    if out.is_file() and out.read_bytes() == archive_bytes(name):
        return out
    return build_archive(name, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the model.tar.gz of an example model")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write model.tar.gz of an example model")
    build.add_argument("name", choices=available())
    build.add_argument("--out", type=Path, default=Path("model.tar.gz"))
    args = parser.parse_args(argv)
    out = build_archive(args.name, args.out)
    sys.stdout.write(f"{out}: {len(archive_members(args.name))} files, "
                     f"sha256 of the tar {archive_digest(args.name)}\n")
    return 0


if __name__ == "__main__":
    from delivery.cli_errors import run

    sys.exit(run(main))
