"""The TBX11K folder conventions (docs/dataset.md §1.3) — the only place that parses paths into labels.

Labels come from path *components* relative to ``imgs/`` (never from a substring search over the
whole path, which is what mislabels data roots containing "tb" or "sick" in the official code).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from tbx.errors import TbxError

IMGS = "imgs"
ANN_JSON = "annotations/json"
ANN_XML = "annotations/xml"
LISTS = "lists"
# the source manifest of `tbx dataset build` (one row per image) and its optional boxes.csv
MANIFEST_COLUMNS = ("file", "patient_id", "label", "tb_type", "source")
BOXES_COLUMNS = ("file", "xmin", "ymin", "xmax", "ymax", "label")
# official annotation / list file names: prefix, split, only-TB suffix
JSON_NAME = re.compile(r"^(TBX11K|all)_(train|val|trainval|test)(_only_tb)?\.json$")
LIST_NAME = re.compile(r"^(TBX11K|all)_(train|val|trainval|test)\.txt$")

CLASS_FOLDERS = {"health": "healthy", "sick": "sick", "tb": "tb"}
FOLDER_OF_LABEL = {v: k for k, v in CLASS_FOLDERS.items()}
_DRIVE = re.compile(r"^[A-Za-z]:")
EXTRA_GROUPS = {"da": "da+db", "db": "da+db", "montgomery": "mc+shenzhen", "shenzhen": "mc+shenzhen"}


def check_relpath(rel: str, at: str | Path | None = None, root_name: str = "imgs/") -> PurePosixPath:
    """A path read from an annotation file, list or manifest, checked lexically: not empty, not
    absolute (no drive letter), no ``..`` — else :class:`TbxError` naming ``at``."""
    return PurePosixPath(check_relpath_text(rel, at, root_name))


def check_relpath_text(rel: str, at: str | Path | None = None, root_name: str = "imgs/") -> str:
    """:func:`check_relpath` without building the path (a COCO file checks thousands): the
    stripped path with ``/`` separators.  Same rules: ``PurePosixPath(p).is_absolute()`` ⇔ ``p``
    starts with ``/``, and ``..`` is one of its parts ⇔ one of ``p.split("/")``."""
    text = (rel if isinstance(rel, str) else "").strip()
    if not text:
        raise TbxError("empty file path", at, "fill in the file name")
    posix = text.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise TbxError(f"absolute path '{text}' is not allowed", at, f"give paths relative to {root_name}")
    if ".." in posix.split("/"):
        raise TbxError(
            f"path '{text}' escapes {root_name}", at, f"give paths relative to {root_name}, without '..'"
        )
    return posix


def resolve_inside(
    root: str | Path, rel: str, at: str | Path | None = None, root_name: str | None = None
) -> Path:
    """The file ``rel`` (from an annotation file, list or manifest) under ``root``, resolved; it must
    stay inside ``root`` — no ``..``, no absolute path, no symbolic link leading out (the one
    containment rule of build, validate, the dataset loader, study and report overlays).  ``root``
    itself may be a link (e.g. ``imgs/`` on another disk).  Existence is not checked."""
    root = Path(root)
    name = root_name or f"{root.name}/"
    p = check_relpath(rel, at, name)
    real_root = root.resolve()
    real = real_root.joinpath(*p.parts).resolve()
    if not real.is_relative_to(real_root):
        raise TbxError(
            f"'{rel}' is a link pointing outside {name}",
            at,
            f"copy the file into {name} instead of linking to it",
        )
    return real


def tbx_json_name(split: str, only_tb: bool = False) -> str:
    """``TBX11K_{train,val,trainval,test}[_only_tb].json``"""
    return f"TBX11K_{split}{'_only_tb' if only_tb else ''}.json"


def all_json_name(split: str) -> str:
    """``all_{train,val,trainval,test}.json`` (TBX11K + extra datasets)."""
    return f"all_{split}.json"


def list_name(split: str, prefix: str = "TBX11K") -> str:
    return f"{prefix}_{split}.txt"


def extra_source(stem: str, group: str) -> str:
    """Which public dataset an image under ``extra/<group>/`` comes from (docs/dataset.md §1.4)."""
    low = stem.lower()
    if group == "da+db":
        return "db" if low.startswith(("px", "nx")) else "da"
    if group == "mc+shenzhen":
        if low.startswith("mcucxr"):
            return "montgomery"
        if low.startswith("chncxr"):
            return "shenzhen"
        return "mc+shenzhen"
    return group


def label_from_path(file_name: str) -> tuple[str, str]:
    """``(label, source)`` of an image from its path relative to ``imgs/`` (docs/dataset.md §1.3).

    ``health/…`` → healthy, ``sick/…`` → sick, ``tb/…`` → tb; ``extra/da+db/<split>/NAME``: TB when
    NAME starts with ``p``/``px``, else healthy; ``extra/mc+shenzhen/<split>/NAME``: TB when the
    stem ends with ``_1``, else healthy; other ``extra/<group>/`` folders use the ``_1`` rule.
    Raises :class:`TbxError` for paths whose label cannot be derived (e.g. ``test/``).
    """
    posix = file_name.replace("\\", "/")
    # plain relative paths split directly (PurePosixPath is ~20x slower: 3,302 calls per `tbx bench`)
    plain = not posix.startswith(("/", "./")) and "//" not in posix and "/./" not in posix
    parts = (
        tuple(posix.split("/"))
        if plain and not posix.endswith(("/", "/.")) and posix not in ("", ".")
        else PurePosixPath(posix).parts
    )
    if parts and parts[0] == IMGS:
        parts = parts[1:]
    if not parts:
        raise TbxError("empty image path")
    head = parts[0]
    if head in CLASS_FOLDERS and len(parts) >= 2:
        return CLASS_FOLDERS[head], "tbx11k"
    if head == "extra" and len(parts) >= 3:
        group = parts[1]
        name = parts[-1]
        dot = name.rfind(".")
        stem = name[:dot] if 0 < dot < len(name) - 1 else name  # PurePosixPath(name).stem
        source = extra_source(stem, group)
        if group == "da+db":
            is_tb = stem.lower().startswith("p")
        else:
            is_tb = stem.endswith("_1")
        return ("tb" if is_tb else "healthy"), source
    raise TbxError(
        f"cannot derive the image label from path '{file_name}'",
        fix="images must live under imgs/{health,sick,tb}/ or imgs/extra/<group>/<split>/",
    )
