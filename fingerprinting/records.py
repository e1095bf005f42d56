"""Files that are the record of a job: written atomically, appended line by
line so that a killed run loses nothing finished, merged from torchrun parts."""

import glob
import json
import os
import tempfile

from fingerprinting.bits import format_bits, parse_bits
from fingerprinting.errors import UserError

TEMP_PREFIX = ".tmp-"


def atomic_write(path, write, unique_name=False):
    """Create `path` via `write(temp_path)` then rename, so readers never see half a file.

    With `unique_name` (the caller guarantees no other writer of `path`)
    the temp file is `.tmp-<name>` beside it instead of a random name:
    half the cost per file where many small files are written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if unique_name:
        temp_path = os.path.join(directory, TEMP_PREFIX + os.path.basename(path))
    else:
        handle, temp_path = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1])
        os.close(handle)
    try:
        write(temp_path)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def write_json(obj, path):
    def write(temp_path):
        with open(temp_path, "w", encoding="utf-8") as file:
            json.dump(obj, file, indent=2, sort_keys=True)
            file.write("\n")
    atomic_write(path, write)


def fingerprint_line(name, bits):
    """One line of embedded/detected_fingerprints.txt: '<name> <bits>'."""
    return f"{name} {format_bits(bits)}\n"


def read_fingerprint_file(path):
    """Parse a fingerprints file into {name: bits tensor}, in file order.

    Names may contain spaces (the bits are the last field).
    """
    records = {}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            name, _, text = line.rstrip("\n").rpartition(" ")
            try:
                records[name] = parse_bits(text)
            except ValueError as error:
                raise UserError(f"{path}:{number}: {error}") from None
    return records


def open_record(path, resume):
    """Open a fingerprints file for appending; returns (names already done, file).

    With `resume`, keeps the complete lines (a killed run may leave half a
    line at the end) and reports their names; otherwise starts empty.
    """
    done = []
    if resume and os.path.exists(path):
        with open(path, "rb") as file:
            content = file.read()
        complete = content[: content.rfind(b"\n") + 1]
        with open(path, "wb") as file:
            file.write(complete)
        done = [line.rpartition(" ")[0] for line in complete.decode("utf-8").splitlines() if line.strip()]
    elif not resume:
        open(path, "w", encoding="utf-8").close()
    return done, open(path, "a", encoding="utf-8")


def append_lines(file, lines):
    """Append and flush to disk: a line on disk means its work is finished."""
    file.write("".join(lines))
    file.flush()
    os.fsync(file.fileno())


def shard_path(record_path, context):
    """Each torchrun rank appends to its own part file; merged at the end."""
    return record_path if context.world_size == 1 else f"{record_path}.rank{context.rank}"


def complete_lines(path):
    """{name: line} of the complete lines of a record file (read-only)."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as file:
        content = file.read()
    lines = content[: content.rfind("\n") + 1].splitlines(keepends=True)
    return {line.rpartition(" ")[0]: line for line in lines if line.strip()}


def merge_shards(record_path, names, resume):
    """Rank 0: write the record in listing order from all part files (and the
    record itself when resuming), then delete the parts."""
    parts = sorted(glob.glob(glob.escape(record_path) + ".rank*"))
    lines = complete_lines(record_path) if resume else {}
    for part in parts:
        lines.update(complete_lines(part))

    def write(temp_path):
        with open(temp_path, "w", encoding="utf-8") as file:
            file.writelines(lines[name] for name in names if name in lines)
    atomic_write(record_path, write)
    for part in parts:
        os.remove(part)
