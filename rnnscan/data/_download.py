"""Verified downloads of UEA/UCR archives, and clear errors when that is impossible.

The flow for a problem such as EigenWorms (:func:`fetch_problem`):

1. look for ``<Name>_TRAIN.ts`` / ``<Name>_TEST.ts`` in the data directory
   (``data_dir`` argument, else ``$RNNSCAN_DATA_DIR``, else ``<cache>/uea``),
   directly or in a ``<Name>/`` subfolder;
2. if they are missing and downloading is allowed, stream the official zip with
   :func:`download_file` (progress bar, size and SHA-256 checked while writing
   to a ``.part`` file; a file that fails the check is deleted);
3. extract just the two ``.ts`` files into ``<data dir>/<Name>/`` and delete the zip.

Any failure to obtain the files (offline, HTTP error, ``download=False``) raises
:class:`DatasetNotFoundError`, whose message says what to download, its
checksum, and where to put the files. The URL is a parameter everywhere, so
tests can serve a small archive from a ``file://`` URL.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ._paths import CACHE_DIR_ENV, DATA_DIR_ENV, find_problem_files, resolve_data_dir

__all__ = [
    "EIGENWORMS_ARCHIVE",
    "ChecksumError",
    "DatasetNotFoundError",
    "RemoteArchive",
    "download_file",
    "extract_problem",
    "fetch_problem",
    "sha256_of",
]

_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """The data files are not on disk and could not be downloaded.

    The message says what to download, its checksum and where to put the files.
    """


class ChecksumError(ValueError):
    """A downloaded file does not have the expected size or SHA-256 (it was deleted)."""


@dataclass(frozen=True)
class RemoteArchive:
    """A zip holding ``<name>_TRAIN.ts`` and ``<name>_TEST.ts``, with its checksum.

    ``size`` (bytes) and ``sha256`` (hex digest) are checked after download when
    given; ``None`` skips that check.
    """

    name: str
    url: str
    size: int | None = None
    sha256: str | None = None


#: The official UEA EigenWorms archive (aeon-toolkit mirror of timeseriesclassification.com).
EIGENWORMS_ARCHIVE = RemoteArchive(
    name="EigenWorms",
    url="https://www.timeseriesclassification.com/aeon-toolkit/EigenWorms.zip",
    size=328_347_284,
    sha256="38db21f136e9694f4d4b76f97b196029cd186a7fc476de825c09f11557874779",
)


def sha256_of(path: str | os.PathLike[str], chunk_size: int = _CHUNK) -> str:
    """Hex SHA-256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    chunk_size: int = _CHUNK,
) -> Path:
    """Stream ``url`` to ``dest``, verifying its size and SHA-256 on the fly.

    Data goes to ``dest + ".part"`` and is renamed to ``dest`` only once complete
    and verified, so an interrupted download never looks finished.

    Raises:
        ChecksumError: the size or digest differs from ``size`` / ``sha256``; the
            bad file is deleted.
        OSError: network or file-system failure (``urllib.error.URLError``,
            timeouts, ...); the partial file is deleted.
    """
    from tqdm.auto import tqdm  # tqdm is a core dependency; imported lazily for speed

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "rnnscan-data"})
    digest = hashlib.sha256()
    written = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as f:
            length = response.headers.get("Content-Length") if response.headers else None
            total = int(length) if length and length.isdigit() else size
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"Downloading {dest.name}",
                disable=not progress,
            ) as bar:
                while chunk := response.read(chunk_size):
                    f.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    problems = []
    if size is not None and written != size:
        problems.append(f"size {written:,} bytes, expected {size:,}")
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        problems.append(f"sha256 {digest.hexdigest()}, expected {sha256.lower()}")
    if problems:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"Download of {url} is corrupt ({'; '.join(problems)}); the file was deleted. "
            "Try again, or download it by hand."
        )
    os.replace(part, dest)
    return dest


def extract_problem(
    archive_path: str | os.PathLike[str], name: str, dest_dir: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Extract ``<name>_TRAIN.ts`` and ``<name>_TEST.ts`` from a zip into ``dest_dir``.

    The two members are found by file name wherever they sit in the archive and
    written flat into ``dest_dir`` (other members are skipped), so member paths
    can never escape ``dest_dir``.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    wanted = {f"{name}_TRAIN.ts", f"{name}_TEST.ts"}
    out: dict[str, Path] = {}
    with zipfile.ZipFile(archive_path) as zf:
        for info in zf.infolist():
            base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
            if base in wanted and base not in out and not info.is_dir():
                target = dest_dir / base
                tmp = target.with_name(target.name + ".part")
                with zf.open(info) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                os.replace(tmp, target)
                out[base] = target
    missing = sorted(wanted - out.keys())
    if missing:
        raise DatasetNotFoundError(f"{archive_path} does not contain {', '.join(missing)}.")
    return out[f"{name}_TRAIN.ts"], out[f"{name}_TEST.ts"]


def _instructions(archive: RemoteArchive, root: Path, origin: str) -> str:
    size = f"{archive.size:,} bytes, " if archive.size is not None else ""
    sha = f"sha256 {archive.sha256}" if archive.sha256 else "no published checksum"
    files = f"{archive.name}_TRAIN.ts and {archive.name}_TEST.ts"
    if origin == "cache":
        default = (
            f"Or put the two files in {root} (the default location, under the cache "
            f"directory set by cache_dir= or {CACHE_DIR_ENV})."
        )
    else:
        source = "data_dir" if origin == "argument" else f"${DATA_DIR_ENV}"
        default = f"Or put the two files in {root} (the data directory given by {source})."
    return (
        f"To install it by hand:\n"
        f"  1. download {archive.url} ({size}{sha});\n"
        f"  2. extract {files} from it into a directory DIR (either DIR/ or "
        f"DIR/{archive.name}/);\n"
        f"  3. pass data_dir=DIR, or set the environment variable {DATA_DIR_ENV}=DIR.\n"
        f"{default}"
    )


def fetch_problem(
    archive: RemoteArchive,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    progress: bool = True,
    timeout: float = 60.0,
    keep_archive: bool = False,
) -> tuple[Path, Path]:
    """Paths of ``<name>_TRAIN.ts`` and ``<name>_TEST.ts``, downloading them if needed.

    The data directory is ``data_dir``, else ``$RNNSCAN_DATA_DIR``, else
    ``<cache_dir>/uea`` (see :func:`rnnscan.data._paths.resolve_data_dir`). Files
    are accepted there or in its ``<name>/`` subfolder; a download is extracted
    into the subfolder.

    Raises:
        DatasetNotFoundError: the files are absent and ``download`` is false, or
            the download failed (offline, HTTP error, ...). The message names the
            URL, the checksum, the file names and the environment variable.
        ChecksumError: the downloaded archive is corrupt (it was deleted).
    """
    root, origin = resolve_data_dir(data_dir, cache_dir)
    found = find_problem_files(archive.name, root)
    if found is not None:
        return found
    where = {"argument": "data_dir", "environment": f"${DATA_DIR_ENV}", "cache": "the cache"}
    missing = (
        f"{archive.name} data not found: no {archive.name}_TRAIN.ts and {archive.name}_TEST.ts "
        f"in {root} or {root / archive.name} (from {where[origin]})."
    )
    if not download:
        raise DatasetNotFoundError(
            f"{missing} Downloading is disabled.\n{_instructions(archive, root, origin)}"
        )

    target = root / archive.name
    zip_path = target / f"{archive.name}.zip"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetNotFoundError(
            f"{missing} Cannot create {target} for the download: {err}.\n"
            f"{_instructions(archive, root, origin)}"
        ) from err
    try:
        download_file(
            archive.url,
            zip_path,
            size=archive.size,
            sha256=archive.sha256,
            progress=progress,
            timeout=timeout,
        )
    except ChecksumError as err:
        raise ChecksumError(f"{err}\n{_instructions(archive, root, origin)}") from err
    except (OSError, http.client.HTTPException, ValueError) as err:
        # URLError / HTTPError / timeouts are OSErrors; ValueError: malformed URL.
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        raise DatasetNotFoundError(
            f"{missing} Automatic download from {archive.url} failed ({reason}); "
            f"are you offline?\n{_instructions(archive, root, origin)}"
        ) from err
    try:
        return extract_problem(zip_path, archive.name, target)
    except (zipfile.BadZipFile, DatasetNotFoundError) as err:
        zip_path.unlink(missing_ok=True)
        raise DatasetNotFoundError(
            f"{missing} The downloaded archive is unusable ({err}); it was deleted.\n"
            f"{_instructions(archive, root, origin)}"
        ) from err
    finally:
        if not keep_archive:
            zip_path.unlink(missing_ok=True)
